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

from r1local.reasoning import THINK_CLOSE, THINK_OPEN

# general.file_type ids (llama.cpp's LLAMA_FTYPE_*) for the names listings show
_FTYPE_NAMES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
}


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
    from r1local.ggufinfo import read_header

    h = read_header(path, max_array=0)
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
        "quant": _FTYPE_NAMES.get(h.get("general.file_type"), "unknown"),
        "parameter_size": _size_label(n_params),
        "context_length": h.arch_value("context_length"),
        # the R1 template only names `</think>` (it strips earlier reasoning)
        "reasoning": THINK_OPEN in template or THINK_CLOSE in template,
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
