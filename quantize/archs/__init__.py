"""One module per architecture; this registry maps Hugging Face class names to them."""

from __future__ import annotations

from quantize.archs.base import Arch, TensorJob
from quantize.archs.deepseek_v3 import DeepseekV3
from quantize.archs.llama import Llama
from quantize.archs.qwen2 import Qwen2
from quantize.archs.qwen3 import Qwen3
from quantize.errors import ConvertError

ARCHITECTURES: tuple[type[Arch], ...] = (Qwen2, Llama, Qwen3, DeepseekV3)
SUPPORTED = {cls: arch for arch in ARCHITECTURES for cls in arch.hf_classes}


def for_config(config: dict) -> Arch:
    names = config.get("architectures") or []
    if not isinstance(names, list) or not names:
        raise ConvertError("config.json has no \"architectures\" list: the checkpoint's config is "
                           f"incomplete (supported: {', '.join(SUPPORTED)})")
    for name in names:
        if name in SUPPORTED:
            return SUPPORTED[name](config)
    raise ConvertError(f"unsupported architecture {names[0]}: supported are {', '.join(SUPPORTED)}")


__all__ = ["ARCHITECTURES", "SUPPORTED", "Arch", "TensorJob", "for_config"]
