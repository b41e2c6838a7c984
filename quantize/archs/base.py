"""What every decoder-only architecture shares: the tensor-name table and the GGUF keys.

An architecture module subclasses :class:`Arch`, names the Hugging Face class(es) it
reads, adds its own rows to the name table and its own keys, and may transform a tensor
(row blocks) or add generated tensors. Nothing here knows about files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import numpy as np

from quantize import hparams
from quantize.errors import ConvertError
from quantize.formats import FLOAT32, UINT32
from quantize.writer import KV

# Hugging Face tensor name -> GGUF tensor name ("{i}" is the layer number)
COMMON_TENSORS: dict[str, str] = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{i}.input_layernorm.weight": "blk.{i}.attn_norm.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "blk.{i}.attn_q.weight",
    "model.layers.{i}.self_attn.k_proj.weight": "blk.{i}.attn_k.weight",
    "model.layers.{i}.self_attn.v_proj.weight": "blk.{i}.attn_v.weight",
    "model.layers.{i}.self_attn.o_proj.weight": "blk.{i}.attn_output.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "blk.{i}.ffn_norm.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "blk.{i}.ffn_gate.weight",
    "model.layers.{i}.mlp.up_proj.weight": "blk.{i}.ffn_up.weight",
    "model.layers.{i}.mlp.down_proj.weight": "blk.{i}.ffn_down.weight",
}

ATTENTION_BIASES: dict[str, str] = {
    "model.layers.{i}.self_attn.q_proj.bias": "blk.{i}.attn_q.bias",
    "model.layers.{i}.self_attn.k_proj.bias": "blk.{i}.attn_k.bias",
    "model.layers.{i}.self_attn.v_proj.bias": "blk.{i}.attn_v.bias",
}

# never converted: recomputed by llama.cpp, or consumed while decoding another tensor
IGNORED = re.compile(r"(rotary_emb\.inv_freq|weight_scale_inv|\.scale_inv)$")

RowTransform = Callable[[np.ndarray], np.ndarray]


@dataclass
class TensorJob:
    """One output tensor: where its rows come from and what happens to them on the way."""

    gguf_name: str
    shape: tuple[int, ...]
    source: str | None = None  # HF tensor name, or None for a generated tensor
    parts: tuple[str, ...] = ()  # a stacked tensor's HF tensors, in order (MoE experts)
    transform: RowTransform | None = None  # moves rows only: it sees them as stored (any dtype)
    row_multiple: int = 1  # blocks must hold whole groups of this many rows (e.g. heads)
    data: np.ndarray | None = None  # a generated tensor's values
    keep_f32: bool = False


@dataclass
class Arch:
    """Base of every architecture module."""

    config: dict
    hf_classes: ClassVar[tuple[str, ...]] = ()
    gguf_arch: ClassVar[str] = ""
    extra_tensors: ClassVar[dict[str, str]] = {}
    _table: dict[str, str] = field(default_factory=dict, init=False)

    # --- hyper-parameters ---------------------------------------------------------------
    def hp(self, *names: str, default=None):
        """The first of ``names`` present in config.json (or in its text_config)."""
        nested = self.config.get("text_config")
        for source in (self.config, nested if isinstance(nested, dict) else {}):
            for n in names:
                if n in source and source[n] is not None:
                    return source[n]
        if default is not None:
            return default
        raise ConvertError(f"config.json has no {names[0]}: the checkpoint's config is incomplete")

    def whole(self, *names: str, default=None) -> int:
        """hp() for a count or a width: a whole number, or one line saying which is not."""
        value = self.hp(*names, default=default)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConvertError(f"config.json's {names[0]} is {value!r}, not a whole number: "
                               "the checkpoint's config is damaged")
        return value

    @property
    def n_layers(self) -> int:
        return self.whole("num_hidden_layers", "n_layer")

    @property
    def n_head(self) -> int:
        return self.whole("num_attention_heads")

    @property
    def n_head_kv(self) -> int:
        return self.whole("num_key_value_heads", default=self.n_head)

    @property
    def n_embd(self) -> int:
        return self.whole("hidden_size")

    @property
    def head_dim(self) -> int:
        split = self.n_embd // self.n_head if self.n_head > 0 else 0  # 0: check() names it
        return self.whole("head_dim", default=split) if "head_dim" in self.config else split

    @property
    def rope_parameters(self) -> dict:
        """rope settings across config generations (rope_theta + rope_scaling, or rope_parameters)."""
        params: dict = {}
        for key in ("rope_scaling", "rope_parameters"):
            part = self.config.get(key)
            if part is not None and not isinstance(part, dict):
                raise ConvertError(f"config.json's {key} is {part!r}, not a table of settings")
            params.update(part or {})
        if "rope_theta" not in params and "rope_theta" in self.config:
            params["rope_theta"] = self.config["rope_theta"]
        if "type" in params and "rope_type" not in params:
            params["rope_type"] = params["type"]
        return params

    @property
    def rope_theta(self) -> float:
        return self.rope_parameters.get("rope_theta", 10000.0)  # check() refuses a non-number

    def key(self, suffix: str) -> str:
        return f"{self.gguf_arch}.{suffix}"

    def metadata(self) -> list[KV]:
        kvs = [
            KV(self.key("block_count"), self.n_layers, UINT32),
            KV(self.key("context_length"), self.whole("max_position_embeddings", default=4096),
               UINT32),
            KV(self.key("embedding_length"), self.n_embd, UINT32),
            KV(self.key("feed_forward_length"), self.whole("intermediate_size"), UINT32),
            KV(self.key("attention.head_count"), self.n_head, UINT32),
            KV(self.key("attention.head_count_kv"), self.n_head_kv, UINT32),
            KV(self.key("rope.freq_base"), self.rope_theta, FLOAT32),
            KV(self.key("attention.layer_norm_rms_epsilon"), self.hp("rms_norm_eps", default=1e-6),
               FLOAT32),
        ]
        if "head_dim" in self.config and self.head_dim != self.n_embd // self.n_head:
            kvs += [KV(self.key("attention.key_length"), self.head_dim, UINT32),
                    KV(self.key("attention.value_length"), self.head_dim, UINT32)]
        return kvs

    def check(self, shape_of: Callable[[str], tuple[int, ...]], names: set[str]) -> None:
        """Refuse a config llama.cpp could not load (quantize/hparams.py's rules, the same
        r1local applies to a header), before anything is sized by its numbers."""
        prefix = self.gguf_arch + "."
        values = {kv.key[len(prefix):]: kv.value for kv in self.metadata()}
        shapes = {gg: tuple(reversed(shape_of(hf))) for hf, gg in (
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight"),
            ("model.layers.0.self_attn.k_proj.weight", "blk.0.attn_k.weight")) if hf in names}
        vocab = self.config.get("vocab_size")
        try:
            hparams.check(values, n_vocab=None if vocab is None else vocab, shapes=shapes)
        except hparams.Invalid as err:
            raise ConvertError(f"config.json cannot make a usable GGUF: {self.gguf_arch}'s {err} "
                               "(fix the checkpoint's config.json)") from None

    # --- tensors ------------------------------------------------------------------------
    def name_table(self) -> dict[str, str]:
        return {**COMMON_TENSORS, **self.extra_tensors}

    def _expanded(self) -> dict[str, str]:
        if not self._table:
            for hf, gg in self.name_table().items():
                if "{i}" in hf:
                    for i in range(self.n_layers):
                        self._table[hf.format(i=i)] = gg.format(i=i)
                else:
                    self._table[hf] = gg
        return self._table

    def jobs(self, names: list[str], shape_of: Callable[[str], tuple[int, ...]]) -> list[TensorJob]:
        """Output tensors in GGUF order, from the checkpoint's tensor names."""
        table = self._expanded()
        tied = bool(self.config.get("tie_word_embeddings", False))
        unknown = [n for n in names if n not in table and not IGNORED.search(n)]
        if unknown:
            raise ConvertError(f"{len(unknown)} tensor(s) this converter does not know for "
                               f"{self.gguf_arch} (first: {unknown[0]}): the checkpoint is not a "
                               f"plain {self.hf_classes[0]}")
        present = set(names)
        jobs: list[TensorJob] = []
        for hf, gg in table.items():  # table order: embeddings, blocks, norm, output
            if hf not in present or (hf == "lm_head.weight" and tied):
                continue
            job = TensorJob(gg, tuple(shape_of(hf)), source=hf)
            job.keep_f32 = len(job.shape) < 2
            self.adjust(job)
            jobs.append(job)
        missing = [hf for hf in table if hf not in present and hf != "lm_head.weight"
                   and hf in self.required()]
        if missing:
            raise ConvertError(f"the checkpoint lacks {len(missing)} tensor(s) {self.gguf_arch} needs "
                               f"(first: {missing[0]}): download the whole checkpoint")
        jobs.extend(self.generated())
        return _gguf_order(jobs)

    def required(self) -> set[str]:
        return {hf.format(i=i) if "{i}" in hf else hf for hf in COMMON_TENSORS
                for i in range(self.n_layers)} - {"lm_head.weight"}

    def adjust(self, job: TensorJob) -> None:
        """Hook: set a row transform on a tensor (e.g. Llama's q/k permutation)."""

    def generated(self) -> list[TensorJob]:
        """Hook: tensors computed from the config (e.g. rope_freqs)."""
        return []


def _gguf_order(jobs: list[TensorJob]) -> list[TensorJob]:
    """token_embd, then generated globals, then blocks in layer order, then output_norm/output."""
    def rank(job: TensorJob) -> tuple:
        name = job.gguf_name
        if name.startswith("blk."):
            return (2, int(name.split(".")[1]))
        order = {"token_embd.weight": 0, "output_norm.weight": 3, "output.weight": 4}
        return (order.get(name, 1), 0)
    return sorted(jobs, key=rank)  # stable: table order within a layer
