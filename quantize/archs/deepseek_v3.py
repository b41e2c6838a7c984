"""DeepSeek-V3 and R1 (671B; also V2): multi-head latent attention (MLA) and a mixture of
experts, written as llama.cpp's ``deepseek2`` architecture.

MLA is written the way the vendored llama.cpp computes it with the absorption trick: the
key/value up-projection ``kv_b_proj`` is split per head into ``attn_k_b`` (the no-rope key
part, transposed) and ``attn_v_b``, and the model counts as one key/value head whose key is
the compressed latent plus the rope part. Experts are stacked into 3-D ``ffn_*_exps`` tensors
one expert after another as they stream, so no layer's experts are ever held at once.
Rope is llama.cpp's normal (pairwise) rope on DeepSeek's original weight layout: no row moves.
The multi-token-prediction layers (``num_nextn_predict_layers``, stored as layers past
``num_hidden_layers``) are left out: the vendored llama.cpp does not read them for deepseek2.
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np

from quantize.archs.base import IGNORED, Arch, TensorJob, _gguf_order
from quantize.errors import ConvertError
from quantize.formats import BOOL, FLOAT32, STRING, UINT32
from quantize.writer import KV

# per layer, HF suffix -> GGUF suffix (after "model.layers.{i}." / "blk.{i}.")
ATTENTION = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",  # when q_lora_rank is null (V2-Lite)
    "self_attn.q_a_proj.weight": "attn_q_a.weight",
    "self_attn.q_a_layernorm.weight": "attn_q_a_norm.weight",
    "self_attn.q_b_proj.weight": "attn_q_b.weight",
    "self_attn.kv_a_proj_with_mqa.weight": "attn_kv_a_mqa.weight",
    "self_attn.kv_a_layernorm.weight": "attn_kv_a_norm.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
KV_B = "self_attn.kv_b_proj.weight"  # split into attn_k_b / attn_v_b
DENSE_FFN = {
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
MOE_FFN = {
    "mlp.gate.weight": "ffn_gate_inp.weight",
    "mlp.gate.e_score_correction_bias": "exp_probs_b.bias",
    "mlp.shared_experts.gate_proj.weight": "ffn_gate_shexp.weight",
    "mlp.shared_experts.up_proj.weight": "ffn_up_shexp.weight",
    "mlp.shared_experts.down_proj.weight": "ffn_down_shexp.weight",
}
EXPERTS = {"gate_proj": "ffn_gate_exps.weight", "up_proj": "ffn_up_exps.weight",
           "down_proj": "ffn_down_exps.weight"}
GLOBAL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
          "lm_head.weight": "output.weight"}
# llama.cpp's expert gating functions
GATING = {"softmax": 1, "sigmoid": 2}
LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def expert_names(prefix: str, weight: str, n_expert: int) -> tuple[str, ...]:
    """A layer's per-expert tensors of one projection, in the order llama.cpp stacks them."""
    return tuple(f"{prefix}mlp.experts.{j}.{weight}.weight" for j in range(n_expert))


def split_kv_b(rows: np.ndarray, n_head: int, nope: int, v_dim: int, part: str) -> np.ndarray:
    """kv_b_proj's rows, head by head [nope key rows | value rows] x kv_lora_rank, -> the
    key part transposed per head (n_head, rank, nope) or the value part (n_head, v_dim, rank)."""
    heads = rows.reshape(n_head, nope + v_dim, rows.shape[-1])
    if part == "k":
        return np.ascontiguousarray(heads[:, :nope, :].transpose(0, 2, 1))
    return np.ascontiguousarray(heads[:, nope:, :])


class DeepseekV3(Arch):
    hf_classes = ("DeepseekV3ForCausalLM", "DeepseekV2ForCausalLM")
    gguf_arch = "deepseek2"

    @property
    def n_head_kv(self) -> int:
        return 1  # MLA counts as one key/value head (the shared latent)

    @property
    def dense_layers(self) -> int:
        moe = self.config.get("n_routed_experts") is not None
        return self.whole("first_k_dense_replace", default=0 if moe else self.n_layers)

    def metadata(self) -> list[KV]:
        rank = self.whole("kv_lora_rank")
        rope_dim, nope, v_dim = (self.whole("qk_rope_head_dim"), self.whole("qk_nope_head_dim"),
                                 self.whole("v_head_dim"))
        kvs = [kv for kv in super().metadata() if not kv.key.endswith(("key_length", "value_length"))]
        kvs += [
            KV(self.key("leading_dense_block_count"), self.dense_layers, UINT32),
            KV(self.key("vocab_size"), self.whole("vocab_size"), UINT32),
            KV(self.key("attention.kv_lora_rank"), rank, UINT32),
            # the absorbed form's head: the latent plus the rope part; the unabsorbed (MLA) one
            KV(self.key("attention.key_length"), rank + rope_dim, UINT32),
            KV(self.key("attention.value_length"), rank, UINT32),
            KV(self.key("attention.key_length_mla"), nope + rope_dim, UINT32),
            KV(self.key("attention.value_length_mla"), v_dim, UINT32),
            KV(self.key("rope.dimension_count"), rope_dim, UINT32),
            KV(self.key("expert_feed_forward_length"),
               self.whole("moe_intermediate_size", "intermediate_size"), UINT32),
            KV(self.key("expert_shared_count"), self.whole("n_shared_experts", default=0), UINT32),
        ]
        if self.config.get("q_lora_rank") is not None:
            kvs.append(KV(self.key("attention.q_lora_rank"), self.whole("q_lora_rank"), UINT32))
        if self.config.get("n_routed_experts") is not None:
            kvs += [KV(self.key("expert_count"), self.whole("n_routed_experts"), UINT32),
                    KV(self.key("expert_used_count"), self.whole("num_experts_per_tok"), UINT32)]
        for hf, key in (("n_group", "expert_group_count"), ("topk_group", "expert_group_used_count")):
            if self.config.get(hf) is not None:
                kvs.append(KV(self.key(key), self.whole(hf), UINT32))
        if self.config.get("routed_scaling_factor") is not None:
            kvs.append(KV(self.key("expert_weights_scale"), float(self.hp("routed_scaling_factor")),
                          FLOAT32))
        if self.config.get("norm_topk_prob"):
            kvs.append(KV(self.key("expert_weights_norm"), True, BOOL))
        # V3 and R1 score experts with a sigmoid (transformers' DeepseekV3 always does, and its
        # config.json may not say so); V2 with a softmax, llama.cpp's default when unset
        v3 = "DeepseekV3ForCausalLM" in (self.config.get("architectures") or [])
        scoring = self.config.get("scoring_func", "sigmoid" if v3 else None)
        if scoring is not None:
            if scoring not in GATING:
                raise ConvertError(f"config.json's scoring_func {scoring!r} is not one llama.cpp has "
                                   f"({', '.join(GATING)})")
            kvs.append(KV(self.key("expert_gating_func"), GATING[scoring], UINT32))
        return kvs + self._yarn()

    def _yarn(self) -> list[KV]:
        p = self.rope_parameters
        if str(p.get("rope_type", "")).lower() != "yarn":
            return []
        kvs = [KV(self.key("rope.scaling.type"), "yarn", STRING),
               KV(self.key("rope.scaling.factor"), float(p.get("factor", 1.0)), FLOAT32),
               KV(self.key("rope.scaling.original_context_length"),
                  int(p.get("original_max_position_embeddings", 4096)), UINT32)]
        for hf, key in (("beta_fast", "yarn_beta_fast"), ("beta_slow", "yarn_beta_slow")):
            if p.get(hf) is not None:
                kvs.append(KV(self.key(f"rope.scaling.{key}"), float(p[hf]), FLOAT32))
        if p.get("mscale_all_dim") is not None:
            # llama.cpp's deepseek2 reads 0.1 x mscale_all_dim here (its own convention)
            kvs.append(KV(self.key("rope.scaling.yarn_log_multiplier"),
                          0.1 * float(p["mscale_all_dim"]), FLOAT32))
        return kvs

    def check(self, shape_of: Callable[[str], tuple[int, ...]], names: set[str]) -> None:
        n_expert = self.config.get("n_routed_experts")
        groups = self.config.get("n_group")
        # llama.cpp asserts these (it aborts on a file that breaks them)
        if n_expert and groups is not None and self.whole("n_group") > 1 and (
                self.whole("n_routed_experts") % self.whole("n_group")
                or self.whole("n_group") >= self.whole("n_routed_experts")
                or not 0 < self.whole("topk_group", default=0) < self.whole("n_group")):
            raise ConvertError(f"config.json's n_group ({groups}) must divide n_routed_experts "
                               f"({n_expert}), be fewer than them, and be more than topk_group "
                               f"({self.config.get('topk_group')}, at least 1): fix the config")
        super().check(shape_of, names)  # after: its message names GGUF keys, not config.json's

    def jobs(self, names: list[str], shape_of: Callable[[str], tuple[int, ...]]) -> list[TensorJob]:
        present = set(names)
        n_layers = self.n_layers
        used: set[str] = set()
        jobs: list[TensorJob] = []

        def take(hf: str, gg: str, required: bool = True) -> None:
            if hf not in present:
                if required:
                    raise ConvertError(f"the checkpoint lacks {hf}, which {self.gguf_arch} needs: "
                                       "download the whole checkpoint")
                return
            job = TensorJob(gg, tuple(shape_of(hf)), source=hf)
            job.keep_f32 = len(job.shape) < 2 or gg.endswith(".bias")
            jobs.append(job)
            used.add(hf)

        tied = bool(self.config.get("tie_word_embeddings", False))
        for hf, gg in GLOBAL.items():
            if not (hf == "lm_head.weight" and tied):
                take(hf, gg, required=hf != "lm_head.weight")
        n_expert = self.whole("n_routed_experts", default=0)
        lora = self.config.get("q_lora_rank") is not None
        for i in range(n_layers):
            pre, blk = f"model.layers.{i}.", f"blk.{i}."
            for hf, gg in ATTENTION.items():
                # q_proj without a query LoRA, q_a/q_b with one
                needed = not hf.startswith("self_attn.q") or (("q_proj" in hf) != lora)
                take(pre + hf, blk + gg, required=needed)
            jobs.extend(self._kv_b(pre + KV_B, blk, shape_of, present))
            used.add(pre + KV_B)
            if i < self.dense_layers:
                for hf, gg in DENSE_FFN.items():
                    take(pre + hf, blk + gg)
                continue
            for hf, gg in MOE_FFN.items():
                take(pre + hf, blk + gg, required="shared" not in hf and "bias" not in hf)
            for w, gg in EXPERTS.items():
                parts = expert_names(pre, w, n_expert)
                missing = [p for p in parts if p not in present]
                if missing:
                    raise ConvertError(f"the checkpoint lacks {missing[0]} ({len(missing)} expert "
                                       "tensor(s) in all): download the whole checkpoint")
                first = tuple(shape_of(parts[0]))
                if any(tuple(shape_of(p)) != first for p in parts):
                    raise ConvertError(f"the experts of layer {i} ({w}) differ in shape: the "
                                       "checkpoint is damaged")
                jobs.append(TensorJob(blk + gg, (n_expert, *first), source=parts[0], parts=parts))
                used.update(parts)
        extra = [n for n in names if n not in used and not IGNORED.search(n)
                 and not ((m := LAYER.match(n)) and int(m[1]) >= n_layers)]  # MTP layers: left out
        if extra:
            raise ConvertError(f"{len(extra)} tensor(s) this converter does not know for "
                               f"{self.gguf_arch} (first: {extra[0]}): the checkpoint is not a "
                               f"plain {self.hf_classes[0]}")
        return _gguf_order(jobs)

    def _kv_b(self, hf: str, blk: str, shape_of, present: set[str]) -> list[TensorJob]:
        if hf not in present:
            raise ConvertError(f"the checkpoint lacks {hf}, which {self.gguf_arch} needs: "
                               "download the whole checkpoint")
        n_head, rank = self.n_head, self.whole("kv_lora_rank")
        nope, v_dim = self.whole("qk_nope_head_dim"), self.whole("v_head_dim")
        rows, cols = shape_of(hf)
        if (rows, cols) != (n_head * (nope + v_dim), rank):
            raise ConvertError(f"{hf} is {rows}x{cols}, not num_attention_heads x (qk_nope_head_dim "
                               f"+ v_head_dim) by kv_lora_rank = {n_head * (nope + v_dim)}x{rank}: "
                               "the config does not match the weights")
        # read whole (every head at once): the split moves rows across the tensor
        return [TensorJob(blk + "attn_k_b.weight", (n_head, rank, nope), source=hf, row_multiple=rows,
                          transform=lambda r: split_kv_b(r, n_head, nope, v_dim, "k")),
                TensorJob(blk + "attn_v_b.weight", (n_head, v_dim, rank), source=hf, row_multiple=rows,
                          transform=lambda r: split_kv_b(r, n_head, nope, v_dim, "v"))]
