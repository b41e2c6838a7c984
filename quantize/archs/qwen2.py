"""Qwen2 (DeepSeek-R1-Distill-Qwen 1.5B/7B/14B/32B): Llama-like with q/k/v biases, NeoX rope."""

from __future__ import annotations

from quantize.archs.base import ATTENTION_BIASES, Arch


class Qwen2(Arch):
    hf_classes = ("Qwen2ForCausalLM",)
    gguf_arch = "qwen2"
    extra_tensors = ATTENTION_BIASES
