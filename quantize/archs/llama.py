"""Llama (DeepSeek-R1-Distill-Llama 8B/70B): Llama 3.1 "llama3" rope scaling as a rope_freqs
tensor, and q/k rows permuted from Hugging Face's half-split rotary layout to llama.cpp's
interleaved one."""

from __future__ import annotations

import math

import numpy as np

from quantize.archs.base import ATTENTION_BIASES, Arch, TensorJob
from quantize.formats import UINT32
from quantize.writer import KV

LLAMA3_DEFAULTS = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192}


def unpermute_rows(rows: np.ndarray, head_dim: int) -> np.ndarray:
    """Per head, rows [x0..x(d/2-1), y0..] -> [x0, y0, x1, y1, ...] (whole heads per block)."""
    n = rows.shape[0] // head_dim
    return (rows.reshape(n, 2, head_dim // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape))


def llama3_rope_factors(head_dim: int, theta: float, params: dict) -> np.ndarray:
    p = {**LLAMA3_DEFAULTS, **{k: v for k, v in params.items() if v is not None}}
    factor, low, high = float(p["factor"]), float(p["low_freq_factor"]), float(p["high_freq_factor"])
    old_ctx = float(p["original_max_position_embeddings"])
    freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / float(freq)
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


class Llama(Arch):
    hf_classes = ("LlamaForCausalLM",)
    gguf_arch = "llama"
    extra_tensors = ATTENTION_BIASES

    def metadata(self) -> list[KV]:
        return super().metadata() + [
            KV(self.key("rope.dimension_count"), self.head_dim, UINT32),
            KV(self.key("vocab_size"), self.whole("vocab_size"), UINT32),
        ]

    def adjust(self, job: TensorJob) -> None:
        if ".attn_q." in job.gguf_name or ".attn_k." in job.gguf_name:
            d = self.head_dim
            job.transform = lambda rows, d=d: unpermute_rows(rows, d)
            job.row_multiple = d

    def generated(self) -> list[TensorJob]:
        params = self.rope_parameters
        if str(params.get("rope_type", "")).lower() != "llama3":
            return []
        factors = llama3_rope_factors(self.head_dim, self.rope_theta, params)
        return [TensorJob("rope_freqs.weight", factors.shape, data=factors, keep_f32=True)]
