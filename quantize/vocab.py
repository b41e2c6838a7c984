"""tokenizer.json + tokenizer_config.json -> the GGUF tokenizer keys.

Byte-level BPE only (what every R1 model uses). The token list is padded to the model's
vocab_size with [PAD<i>] entries of type UNUSED, as llama.cpp expects; added tokens are
CONTROL when special, USER_DEFINED otherwise. The pre-tokenizer name is detected by running
the tokenizer itself (see pretok.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantize.errors import ConvertError
from quantize.formats import ARRAY, BOOL, INT32, STRING, UINT32
from quantize.pretok import PRE_TOKENIZERS, PROBE_TEXTS, QWEN2_WITH_BOS
from quantize.writer import KV

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# tokenizer_config.json key -> GGUF special-id key suffix
SPECIAL_TOKENS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id",
                  "pad_token": "padding_token_id", "unk_token": "unknown_token_id"}


@dataclass
class Vocab:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    special_ids: dict[str, int]  # GGUF key suffix -> id
    add_bos: bool
    add_eos: bool
    chat_template: str | None
    pre: str

    def metadata(self) -> list[KV]:
        kvs = [
            KV("tokenizer.ggml.model", "gpt2", STRING),
            KV("tokenizer.ggml.pre", self.pre, STRING),
            KV("tokenizer.ggml.tokens", self.tokens, ARRAY, STRING),
            KV("tokenizer.ggml.token_type", self.types, ARRAY, INT32),
            KV("tokenizer.ggml.merges", self.merges, ARRAY, STRING),
        ]
        kvs += [KV(f"tokenizer.ggml.{k}", v, UINT32) for k, v in self.special_ids.items()]
        kvs += [KV("tokenizer.ggml.add_bos_token", self.add_bos, BOOL),
                KV("tokenizer.ggml.add_eos_token", self.add_eos, BOOL)]
        if self.chat_template:
            kvs.append(KV("tokenizer.chat_template", self.chat_template, STRING))
        return kvs


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConvertError(f"{path} is not valid JSON ({err}): re-download the tokenizer") from None


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def read_vocab(folder: Path, vocab_size: int | None) -> Vocab:
    tok_path = folder / "tokenizer.json"
    if not tok_path.is_file():
        raise ConvertError(f"{folder} has no tokenizer.json: download the tokenizer files with the "
                           "weights (tokenizer.json, tokenizer_config.json)")
    tok = _load_json(tok_path)
    cfg_path = folder / "tokenizer_config.json"
    cfg = _load_json(cfg_path) if cfg_path.is_file() else {}
    model = tok.get("model") or {}
    if model.get("type") != "BPE":
        raise ConvertError(f"tokenizer.json uses a {model.get('type')} model: only byte-level BPE "
                           "tokenizers (all DeepSeek-R1 models) are supported")
    vocab: dict[str, int] = model.get("vocab") or {}
    added = {a["id"]: a for a in tok.get("added_tokens") or []}
    by_id: dict[int, str] = {i: t for t, i in vocab.items()}
    for i, a in added.items():
        by_id[i] = a["content"]
    size = max(vocab_size or 0, max(by_id) + 1)
    tokens, types = [], []
    for i in range(size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            tokens.append(added[i]["content"])
            types.append(CONTROL if added[i].get("special") else USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]

    ids = {t: i for i, t in enumerate(tokens) if types[i] != UNUSED}
    special: dict[str, int] = {}
    for cfg_key, gguf_key in SPECIAL_TOKENS.items():
        text = _token_text(cfg.get(cfg_key))
        if text is not None and text in ids:
            special[gguf_key] = ids[text]
    add_bos = cfg.get("add_bos_token")
    add_eos = cfg.get("add_eos_token")
    if add_bos is None or add_eos is None:
        bos_post, eos_post = _post_processor_adds(tok.get("post_processor"))
        add_bos = bos_post if add_bos is None else add_bos
        add_eos = eos_post if add_eos is None else add_eos
    return Vocab(tokens, types, merges, special, bool(add_bos), bool(add_eos),
                 _chat_template(folder, cfg), detect_pre_tokenizer(tok_path, special.get("bos_token_id")))


def _post_processor_adds(post: dict | None) -> tuple[bool, bool]:
    """(adds a token before, adds one after) a single sequence, per a TemplateProcessing."""
    if not post:
        return False, False
    procs = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
    for p in procs:
        if p.get("type") == "TemplateProcessing":
            single = p.get("single") or []
            return (bool(single) and "SpecialToken" in single[0],
                    bool(single) and "SpecialToken" in single[-1])
    return False, False


def _chat_template(folder: Path, cfg: dict) -> str | None:
    jinja = folder / "chat_template.jinja"  # transformers >= 4.49 saves it apart
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    tpl = cfg.get("chat_template")
    if isinstance(tpl, list):  # named templates: the default one
        named = {t.get("name"): t.get("template") for t in tpl if isinstance(t, dict)}
        tpl = named.get("default") or next(iter(named.values()), None)
    return tpl if isinstance(tpl, str) else None


def detect_pre_tokenizer(tokenizer_json: Path, bos_id: int | None) -> str:
    """The llama.cpp pre-tokenizer whose splits equal this tokenizer's on the probe texts."""
    try:
        from tokenizers import Regex, Tokenizer, pre_tokenizers
    except ImportError:
        raise ConvertError("detecting the pre-tokenizer needs the `tokenizers` package: "
                           "pip install tokenizers") from None
    try:
        tok = Tokenizer.from_file(str(tokenizer_json))
    except Exception as err:  # the library raises plain Exception on bad files
        raise ConvertError(f"tokenizer.json cannot be loaded ({err}): re-download it") from None

    def split(pre, text: str) -> list[tuple[int, int]]:
        return [span for _, span in pre.pre_tokenize_str(text)]

    texts = [tok.normalizer.normalize_str(t) if tok.normalizer else t for t in PROBE_TEXTS]
    if tok.pre_tokenizer is None:
        raise ConvertError("tokenizer.json has no pre-tokenizer: unknown to llama.cpp, cannot convert")
    actual = [split(tok.pre_tokenizer, t) for t in texts]
    for name, regexes in PRE_TOKENIZERS.items():
        candidate = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes])
        if all(split(candidate, t) == a for t, a in zip(texts, actual)):
            if name == "qwen2" and bos_id is not None and _adds_bos(tok, bos_id):
                return QWEN2_WITH_BOS
            return name
    raise ConvertError("the tokenizer's pre-tokenizer splits text like none of the llama.cpp "
                       f"pre-tokenizers this converter knows ({', '.join(PRE_TOKENIZERS)}): "
                       "llama.cpp would tokenize it wrongly, so it is not converted")


def _adds_bos(tok, bos_id: int) -> bool:
    ids = tok.encode("Hello", add_special_tokens=True).ids
    return bool(ids) and ids[0] == bos_id
