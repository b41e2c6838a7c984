"""Embeddings from llama.cpp: a context of its own per model (embeddings on, a pooling type),
batched inputs, truncation to the context, normalisation and shortened vectors.

An embedding context is not the chat engine's: llama.cpp pools the hidden states of each
sequence (mean, CLS or last token) instead of computing logits, and every token of a batch
is an output. An embedding model (a BERT-family GGUF) says in its header how it pools; a
chat model says nothing, and is pooled by the mean of its tokens.

Like engine.py, this imports llama_cpp only inside Embedder.load. Not thread-safe: callers
serialize use of one Embedder.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from r1local import compute
from r1local.errors import ContextFullError, ModelFileError, R1LocalError, UsageError

if TYPE_CHECKING:
    from r1local.ggufinfo import GGUFHeader
    from r1local.planner import Plan

# llama.cpp's enum llama_pooling_type, as GGUF headers store it in {arch}.pooling_type
POOLING_NONE, POOLING_MEAN, POOLING_CLS, POOLING_LAST, POOLING_RANK = 0, 1, 2, 3, 4
POOLING_NAMES = {POOLING_NONE: "none", POOLING_MEAN: "mean", POOLING_CLS: "cls",
                 POOLING_LAST: "last", POOLING_RANK: "rank"}
# the context of an embedding load when the request does not ask (Ollama's num_ctx default
# era); an input longer than this, or than the model was trained on, is truncated or refused
DEFAULT_EMBED_CTX = 2048
MAX_INPUTS = 2048  # per request, as OpenAI allows


def declared_pooling(arch: str, metadata: Mapping[str, Any]) -> int | None:
    """The pooling the model's header declares, if any (embedding models declare one)."""
    value = metadata.get(f"{arch}.pooling_type")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def embeds_by_design(arch: str, metadata: Mapping[str, Any]) -> bool:
    """An embedding model: its header declares a pooling that yields a vector (not a
    reranker's score), the rule Ollama lists the `embedding` capability by."""
    return declared_pooling(arch, metadata) in (POOLING_MEAN, POOLING_CLS, POOLING_LAST)


def pooling_for(header: "GGUFHeader") -> int:
    """How to pool this model: what it declares, else the mean of its tokens."""
    name = Path(header.path).name
    declared = declared_pooling(header.architecture, header.metadata)
    if declared == POOLING_RANK:
        raise UsageError(f"{name} is a reranker (rank pooling): it scores pairs of texts and "
                         "gives no embedding vectors", hint="use an embedding or a chat model")
    if declared in (POOLING_MEAN, POOLING_CLS, POOLING_LAST):
        return declared
    return POOLING_MEAN


def embedding_ctx(header: "GGUFHeader", want: int | None) -> int:
    """The context of an embedding load: what was asked (or DEFAULT_EMBED_CTX), never more
    than the model was trained on, rounded up as llama.cpp allocates it."""
    from r1local.planner import check_ctx, pad_ctx

    check_ctx(want, "num_ctx")
    train = header.arch_value("context_length")
    n = want or DEFAULT_EMBED_CTX
    if isinstance(train, int) and train > 0:
        n = min(n, train)
    return pad_ctx(n)


def normalized(vector: np.ndarray) -> np.ndarray:
    """Unit length (Ollama returns unit vectors); an all-zero vector stays as it is."""
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def shortened(vector: np.ndarray, dimensions: int) -> np.ndarray:
    """The first ``dimensions`` values made unit length again: how OpenAI's `dimensions`
    shortens a vector (Matryoshka-style models keep most of their meaning in the first)."""
    return normalized(vector[:dimensions])


@dataclass(frozen=True)
class Embedded:
    """One batch's result: a raw pooled vector (float64) and its token count per input."""

    vectors: list[np.ndarray]
    token_counts: list[int]
    seconds: float

    @property
    def total_tokens(self) -> int:
        return sum(self.token_counts)


class Embedder:
    """A model loaded for embeddings (use Embedder.load)."""

    path: Path
    name: str
    n_ctx: int  # the context llama.cpp allocated: one decode holds at most this many tokens
    max_tokens: int  # one input's limit: the context, or the trained length if shorter
    n_embd: int
    n_vocab: int
    n_seq_max: int  # inputs one decode can hold
    pooling: int
    load_seconds: float

    def __init__(self) -> None:
        self._llm: Any = None
        self._batch: Any = None
        self.decodes = 0  # llama_decode calls so far (how well inputs were packed)

    @classmethod
    def load(cls, path: Path | str, plan: "Plan | None" = None, *, header: "GGUFHeader",
             n_ctx: int, pooling: int | None = None, verbose: bool | None = None) -> "Embedder":
        """Load ``path`` for embeddings with the plan's threads and GPU layers, a context of
        ``n_ctx`` tokens (embedding_ctx) and one micro-batch as large: a non-causal model must
        see a whole input in one."""
        import llama_cpp

        self = cls()
        self.path = Path(path)
        self.name = str(header.get("general.name") or self.path.stem)
        self.pooling = pooling_for(header) if pooling is None else pooling
        threads = int(plan.n_threads) if plan is not None and plan.n_threads else os.cpu_count() or 1
        gpu_layers = int(plan.n_gpu_layers) if plan is not None else 0
        if verbose is None:
            verbose = bool(os.environ.get("R1LOCAL_VERBOSE"))
        t0 = time.perf_counter()
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(self.path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                n_gpu_layers=gpu_layers, n_threads=threads, n_threads_batch=threads,
                embedding=True, pooling_type=self.pooling,
                use_mmap=bool(plan.use_mmap) if plan is not None else True, verbose=verbose)
        except (ValueError, RuntimeError) as err:
            raise ModelFileError(f"llama.cpp could not load {self.path.name} for embeddings: "
                                 f"{err}") from None
        self.load_seconds = time.perf_counter() - t0
        llm = self._llm
        self.n_ctx = int(llm.n_ctx())
        train = header.arch_value("context_length")
        self.max_tokens = min(self.n_ctx, train) if isinstance(train, int) and train > 0 else self.n_ctx
        self.n_embd = int(llm.n_embd())
        self.n_vocab = int(llm.n_vocab())
        self.n_seq_max = int(llama_cpp.llama_n_seq_max(llm._ctx.ctx))
        self._batch = llama_cpp.llama_batch_init(self.n_ctx, 0, 1)
        return self

    def close(self) -> None:
        if self._batch is not None:
            import llama_cpp

            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    def __enter__(self) -> "Embedder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pooling_name(self) -> str:
        return POOLING_NAMES.get(self.pooling, str(self.pooling))

    # ---- inputs -> tokens ------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        """As llama-cpp-python's own embed() does: the model's special tokens added (BERT's
        [CLS] ... [SEP]), special-token text in the input left as text."""
        return self._live().tokenize(text.encode("utf-8"), add_bos=True, special=False)

    def tokens_for(self, inputs: Sequence["str | Sequence[int]"], *,
                   truncate: bool) -> list[list[int]]:
        """Each input as the tokens to embed: a text is tokenized, a list of token ids is
        taken as it is. One longer than max_tokens is cut to it (``truncate``) or refused."""
        if len(inputs) > MAX_INPUTS:
            raise UsageError(f"{len(inputs)} inputs in one request; at most {MAX_INPUTS}",
                             hint="send them in several requests")
        out = []
        for i, item in enumerate(inputs):
            where = f"input[{i}]" if len(inputs) > 1 else "the input"
            if isinstance(item, str):
                tokens = self.tokenize(item)
            else:
                tokens = list(item)
                bad = next((t for t in tokens if not 0 <= t < self.n_vocab), None)
                if bad is not None:
                    raise UsageError(f"{where} has token id {bad}, outside this model's "
                                     f"vocabulary (0-{self.n_vocab - 1})")
            if not tokens:
                raise UsageError(f"{where} is empty: there is nothing to embed")
            if len(tokens) > self.max_tokens:
                if not truncate:
                    raise ContextFullError(
                        f"{where} is {len(tokens)} tokens, but {self.path.name} embeds at most "
                        f"{self.max_tokens} here", hint="shorten it, or let the server cut it "
                        "(\"truncate\": true)")
                tokens = tokens[:self.max_tokens]
            out.append(tokens)
        return out

    # ---- tokens -> vectors -----------------------------------------------------------

    def embed(self, sequences: Sequence[Sequence[int]]) -> Embedded:
        """The pooled vector of each token sequence (raw, not normalized), packing as many
        sequences into each llama.cpp decode as its batch and sequence slots hold."""
        self._live()
        t0 = time.perf_counter()
        vectors: list[np.ndarray] = []
        group: list[Sequence[int]] = []
        used = 0
        for seq in sequences:
            if len(seq) > self.max_tokens or not seq:
                raise ValueError(f"a sequence of {len(seq)} tokens (1-{self.max_tokens} allowed)")
            if group and (used + len(seq) > self.n_ctx or len(group) >= self.n_seq_max):
                vectors += self._decode(group)
                group, used = [], 0
            group.append(seq)
            used += len(seq)
        if group:
            vectors += self._decode(group)
        return Embedded(vectors, [len(s) for s in sequences], time.perf_counter() - t0)

    def _decode(self, group: list[Sequence[int]]) -> list[np.ndarray]:
        """One llama_decode of several sequences (ids 0..n-1): each attends only to its own
        tokens, and llama.cpp pools each apart."""
        import llama_cpp

        llm, b = self._llm, self._batch
        n = 0
        for sid, seq in enumerate(group):
            for pos, token in enumerate(seq):
                b.token[n] = token
                b.pos[n] = pos
                b.n_seq_id[n] = 1
                b.seq_id[n][0] = sid
                b.logits[n] = True  # in embedding mode every token is an output
                n += 1
        b.n_tokens = n
        llm._ctx.kv_cache_clear()  # no sequence may see an earlier batch's
        rc = compute.run(llama_cpp.llama_decode, llm._ctx.ctx, b)
        self.decodes += 1
        if rc != 0:
            raise R1LocalError(f"llama.cpp failed to embed a batch of {n} tokens "
                               f"(llama_decode returned {rc})")
        out = []
        for sid in range(len(group)):
            ptr = llama_cpp.llama_get_embeddings_seq(llm._ctx.ctx, sid)
            if not ptr:
                raise R1LocalError(f"llama.cpp returned no pooled embedding for "
                                   f"{self.path.name} (pooling {self.pooling_name})")
            out.append(np.ctypeslib.as_array(ptr, shape=(self.n_embd,)).astype(np.float64))
        return out

    def _live(self) -> Any:
        if self._llm is None:
            raise R1LocalError("the embedding model was closed")
        return self._llm
