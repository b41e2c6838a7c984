"""HF safetensors -> GGUF converter. A library of its own: it never imports r1local.

    from quantize import convert
    convert("path/to/checkpoint", "model-Q4_K_M.gguf", "Q4_K_M")
"""

from __future__ import annotations

__version__ = "0.1.0"

from quantize.quants import SUPPORTED_QUANTS  # noqa: E402


def convert(src, out, quant: str = "F16", **kwargs):
    """See :func:`quantize.converter.convert` (imported lazily: numpy stays unloaded until used)."""
    from quantize.converter import convert as _convert

    return _convert(src, out, quant, **kwargs)


__all__ = ["SUPPORTED_QUANTS", "__version__", "convert"]
