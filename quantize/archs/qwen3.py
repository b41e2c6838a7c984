"""Qwen3 (DeepSeek-R1-0528-Qwen3-8B): no q/k/v biases, RMS norms on q and k per head."""

from __future__ import annotations

from quantize.archs.base import ATTENTION_BIASES, Arch
from quantize.formats import UINT32
from quantize.writer import KV


class Qwen3(Arch):
    hf_classes = ("Qwen3ForCausalLM",)
    gguf_arch = "qwen3"
    extra_tensors = {
        **ATTENTION_BIASES,  # attention_bias=true variants
        "model.layers.{i}.self_attn.q_norm.weight": "blk.{i}.attn_q_norm.weight",
        "model.layers.{i}.self_attn.k_norm.weight": "blk.{i}.attn_k_norm.weight",
    }

    def metadata(self) -> list[KV]:
        kvs = [kv for kv in super().metadata() if "attention.key_length" not in kv.key
               and "attention.value_length" not in kv.key]
        # Qwen3's head_dim is its own setting, not hidden/heads: always state it
        return kvs + [KV(self.key("attention.key_length"), self.head_dim, UINT32),
                      KV(self.key("attention.value_length"), self.head_dim, UINT32)]
