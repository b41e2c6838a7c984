"""Bounds on what one request may ask for, so that none can hold a model or the machine
for long: settings ranges, and a prompt too long for the context refused before it is
tokenized.

The prompt bound must never refuse a prompt that fits. A token stands for at most as many
bytes of text as the longest entry of the vocabulary, so a prompt of more than
``n_ctx * longest`` bytes is certainly more than n_ctx tokens. A fixed guess such as 8
bytes per token is not safe: runs of spaces or of "=" take 64 to 128 bytes per token in the
R1 (Qwen2) vocabulary, whose longest entry is 128 spaces.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from r1local.server.errors import ApiError

MAX_NUM_CTX = 1 << 20  # past every trained context of the models we serve
MAX_TOP_K = 1 << 20  # past every vocabulary: more is the same as the whole vocabulary
MAX_SEED = 0xFFFFFFFF  # llama.cpp's seeds are uint32


_NORMAL = 1  # llama.cpp's token type of a vocabulary entry (others: control, user-defined...)


@functools.lru_cache(maxsize=64)
def _longest_token(path: str, mtime_ns: int, size: int) -> int:
    from r1local.ggufinfo import read_header

    h = read_header(path)
    tokens = h.get("tokenizer.ggml.tokens") or ()
    types = h.get("tokenizer.ggml.token_type") or ()
    byte_level = h.get("tokenizer.ggml.model") == "gpt2" and len(types) == len(tokens)

    def text_bytes(i: int, token: str) -> int:
        if byte_level and types[i] == _NORMAL:
            return len(token)  # byte-level BPE writes each byte of text as one character
        # added tokens are the text itself; SentencePiece's "▁" (3 bytes) and "<0x41>"
        # stand for one byte: the UTF-8 length is never less than the text
        return len(token.encode("utf-8", "surrogatepass"))

    return max((text_bytes(i, t) for i, t in enumerate(tokens)), default=0)


def longest_token_bytes(path: Any) -> int | None:
    """The most bytes of text one token of this model stands for (None: unknown)."""
    try:
        st = os.stat(path)
        return _longest_token(os.path.realpath(path), st.st_mtime_ns, st.st_size) or None
    except Exception:  # an unreadable vocabulary only costs the early refusal
        return None


def refuse_huge_prompt(engine: Any, prompt: str) -> None:
    """400 context_length_exceeded for a prompt that cannot fit, without tokenizing it."""
    n_ctx = engine.n_ctx
    longest = longest_token_bytes(getattr(engine, "path", None) or "")
    size = len(prompt.encode("utf-8", "surrogatepass"))
    if longest and size > n_ctx * longest:
        raise ApiError(400, f"the prompt is {size} bytes, more than {n_ctx} tokens of this "
                       f"model could hold ({longest} bytes at most each), but the context "
                       f"holds {n_ctx}", code="context_length_exceeded")
