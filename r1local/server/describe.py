"""What the listing endpoints say about a model: Ollama's `details`, `model_info`, capabilities.

Everything comes from the GGUF header (read once per file version, never the tensors) and
the store's manifest where the model came from the store.
"""

from __future__ import annotations

import functools
import hashlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

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


def capabilities(path: Path) -> list[str]:
    return ["completion", "thinking"] if facts(path)["reasoning"] else ["completion"]


def modified_at(path: Path, stored: Any = None) -> str:
    added = getattr(stored, "added_at", None)
    return added if added else iso(path.stat().st_mtime)
