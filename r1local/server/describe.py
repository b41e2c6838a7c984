"""What the listing endpoints say about a model: Ollama's `details`, `model_info`, capabilities.

Everything comes from the GGUF header (read once per file version, never the tensors) and
the store's manifest where the model came from the store.
"""

from __future__ import annotations

import functools
import hashlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from r1local.reasoning import THINK_OPEN, is_reasoning_model


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _size_label(n: int) -> str:
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.1f}{unit}".replace(".0", "")
    return str(n)


@functools.lru_cache(maxsize=64)
def _header_facts(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    from r1local.ggufinfo import read_header, read_model_header

    h = read_model_header(path, max_array=0, check_architecture=False)
    arch = h.architecture
    template = h.get("tokenizer.chat_template")
    template = template if isinstance(template, str) else ""
    n_params = sum(t.n_elements for t in h.tensors)
    info = {k: v for k, v in h.metadata.items()
            if isinstance(v, (str, int, float, bool)) and not k.startswith("tokenizer.")}
    info["general.parameter_count"] = n_params
    return {
        "arch": arch,
        "template": template,
        "name": str(h.get("general.name") or Path(path).stem),
        "quant": h.quant,
        "parameter_size": _size_label(n_params),
        "context_length": h.arch_value("context_length"),
        # the engine's rule; the vocabulary (150k strings) is read only if the template is silent
        "reasoning": is_reasoning_model(template, lambda: THINK_OPEN in (
            read_header(path).get("tokenizer.ggml.tokens") or ())),
        "model_info": info,
        # a cheap identity (Ollama shows sha256 digests; hashing GBs per listing is not cheap)
        "digest": hashlib.sha256(f"{path}:{size}:{mtime_ns}".encode()).hexdigest(),
    }


def facts(path: Path) -> dict[str, Any]:
    st = path.stat()
    return _header_facts(str(path.resolve()), st.st_mtime_ns, st.st_size)


def details(path: Path, stored: Any = None) -> dict[str, Any]:
    f = facts(path)
    quant = getattr(stored, "quant", None) or f["quant"]
    return {"parent_model": "", "format": "gguf", "family": f["arch"], "families": [f["arch"]],
            "parameter_size": f["parameter_size"], "quantization_level": quant}


def digest(path: Path, stored: Any = None) -> str:
    sha = getattr(stored, "sha256", None)
    if sha and sha[0]:
        return sha[0]
    return facts(path)["digest"]


def _encoder(f: dict[str, Any]) -> bool:
    from r1local.ggufinfo import ENCODER_ARCHITECTURES

    return f["arch"] in ENCODER_ARCHITECTURES  # BERT and kin: they cannot complete text


def _embeds(f: dict[str, Any]) -> bool:
    """A model built to embed (its header declares a pooling, or it is an encoder); chat
    models embed too, by the mean, but are not listed as embedding models, as Ollama does
    not list them."""
    from r1local.embeddings import embeds_by_design

    return _encoder(f) or embeds_by_design(f["arch"], f["model_info"])


# Ollama's capability names -> the rule over a model's header facts (facts()), in the order
# /api/show lists them. Add a capability here, and only once the server really serves it.
CAPABILITIES: dict[str, Callable[[dict[str, Any]], bool]] = {
    "completion": lambda f: not _encoder(f),
    "thinking": lambda f: not _encoder(f) and bool(f["reasoning"]),
    "embedding": _embeds,
    # a chat template in a tool-call format r1local parses (r1local.tool_calls.FAMILIES)
    "tools": lambda f: not _encoder(f) and _tool_family(f["template"]) is not None,
}


def _tool_family(template: str) -> Any:
    from r1local.tool_calls import family_of

    return family_of(template)


def capabilities(path: Path) -> list[str]:
    """The one place capabilities are computed: the CAPABILITIES rules that hold."""
    f = facts(path)
    return [name for name, holds in CAPABILITIES.items() if holds(f)]


def modified_at(path: Path, stored: Any = None) -> str:
    added = getattr(stored, "added_at", None)
    return added if added else iso(path.stat().st_mtime)
