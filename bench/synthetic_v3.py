"""A synthetic FP8 checkpoint shaped like DeepSeek-R1 (671B), for bench/convert.py.

Every layer has R1's real shapes and storage: hidden 7168, MLA with q_lora_rank 1536,
kv_lora_rank 512, 128 heads of 128 (no-rope) + 64 (rope) key and 128 value dims, dense FFN
18432, experts of 2048, one shared expert; projections in FP8 e4m3 with float32
``weight_scale_inv`` per 128x128 block, norms and the router in BF16, the router's
correction bias in F32, as DeepSeek ships them. Only the counts are smaller: 1 dense layer,
2 MoE layers, as many routed experts as reach the size (n_group 8 divides them, topk_group
4, 8 per token, as R1). The vocabulary is a small trained one (512 tokens): R1's 129280
would add 3.7 GB of BF16 embedding and head, which is not the FP8 path being measured.
Weights are one random tile repeated; the file layout is R1's (~1 GB shards, an index).
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
HIDDEN, Q_RANK, KV_RANK, HEADS, NOPE, ROPE, V_DIM = 7168, 1536, 512, 128, 128, 64, 128
FFN, MOE_FFN, VOCAB, GROUPS = 18432, 2048, 512, 8
BLOCK = 128  # FP8 scale tile
SHARD_BYTES = 1 << 30
# safetensors dtype -> bytes per element
SIZE = {"F8_E4M3": 1, "BF16": 2, "F32": 4}


def _linear(name: str, rows: int, cols: int) -> list[tuple[str, str, tuple[int, ...]]]:
    """An FP8 projection and its block scales."""
    return [(name, "F8_E4M3", (rows, cols)),
            (name + "_scale_inv", "F32", (-(-rows // BLOCK), -(-cols // BLOCK)))]


def layer_tensors(i: int, n_expert: int, dense: bool) -> list[tuple[str, str, tuple[int, ...]]]:
    p = f"model.layers.{i}."
    t = [(p + "input_layernorm.weight", "BF16", (HIDDEN,)),
         *_linear(p + "self_attn.q_a_proj.weight", Q_RANK, HIDDEN),
         (p + "self_attn.q_a_layernorm.weight", "BF16", (Q_RANK,)),
         *_linear(p + "self_attn.q_b_proj.weight", HEADS * (NOPE + ROPE), Q_RANK),
         *_linear(p + "self_attn.kv_a_proj_with_mqa.weight", KV_RANK + ROPE, HIDDEN),
         (p + "self_attn.kv_a_layernorm.weight", "BF16", (KV_RANK,)),
         *_linear(p + "self_attn.kv_b_proj.weight", HEADS * (NOPE + V_DIM), KV_RANK),
         *_linear(p + "self_attn.o_proj.weight", HIDDEN, HEADS * V_DIM),
         (p + "post_attention_layernorm.weight", "BF16", (HIDDEN,))]

    def ffn(prefix: str, width: int) -> list:
        return [*_linear(prefix + "gate_proj.weight", width, HIDDEN),
                *_linear(prefix + "up_proj.weight", width, HIDDEN),
                *_linear(prefix + "down_proj.weight", HIDDEN, width)]

    if dense:
        return t + ffn(p + "mlp.", FFN)
    t += [(p + "mlp.gate.weight", "BF16", (n_expert, HIDDEN)),
          (p + "mlp.gate.e_score_correction_bias", "F32", (n_expert,))]
    for j in range(n_expert):
        t += ffn(f"{p}mlp.experts.{j}.", MOE_FFN)
    return t + ffn(p + "mlp.shared_experts.", MOE_FFN)


def _nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    return int(np.prod(shape)) * SIZE[dtype]


def plan(target_bytes: int, moe_layers: int = 2) -> tuple[int, list]:
    """(routed experts, tensors): the fewest experts (a multiple of n_group, more than the
    groups, as llama.cpp requires) that pass the size."""
    outer = [("model.embed_tokens.weight", "BF16", (VOCAB, HIDDEN)),
             ("model.norm.weight", "BF16", (HIDDEN,)), ("lm_head.weight", "BF16", (VOCAB, HIDDEN))]
    n_expert = 2 * GROUPS
    while True:
        layers = [layer_tensors(0, n_expert, True)] + [layer_tensors(1 + k, n_expert, False)
                                                       for k in range(moe_layers)]
        tensors = outer[:1] + [t for layer in layers for t in layer] + outer[1:]
        if sum(_nbytes(d, s) for _, d, s in tensors) >= target_bytes:
            return n_expert, tensors
        n_expert += GROUPS


def _tiles() -> dict[str, np.ndarray]:
    """A random block of each dtype as raw bytes: FP8 values of a normal spread (never NaN),
    block scales near R1's (about 1e-4), small BF16 norms and router weights."""
    import torch

    g = torch.Generator().manual_seed(0)
    fp8 = (torch.randn(8 << 20, generator=g) * 64).clamp(-448, 448).to(torch.float8_e4m3fn)
    scales = (torch.rand(1 << 16, generator=g) + 0.5) * 2e-4
    bf16 = (torch.randn(1 << 20, generator=g) * 0.02 + 1).to(torch.bfloat16)
    return {"F8_E4M3": fp8.view(torch.uint8).numpy(), "F32": scales.numpy().view(np.uint8),
            "BF16": bf16.view(torch.int16).numpy().view(np.uint8)}


def make_fp8_v3(folder: Path, target_bytes: int) -> tuple[int, str]:
    """Write the checkpoint into ``folder``: (bytes of weights, a one-line description)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import hf_checkpoints

    n_expert, tensors = plan(target_bytes)
    tiles = _tiles()
    shards: list[list] = [[]]
    size = 0
    for t in tensors:
        if size and size + _nbytes(t[1], t[2]) > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += _nbytes(t[1], t[2])
    weight_map, total = {}, 0
    for k, shard in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        header, off = {}, 0
        for name, dtype, shape in shard:
            n = _nbytes(dtype, shape)
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
            weight_map[name] = fname
        blob = json.dumps(header).encode()
        blob += b" " * (-len(blob) % 8)
        with open(folder / fname, "wb") as f:
            f.write(struct.pack("<Q", len(blob)) + blob)
            for name, dtype, shape in shard:
                left, tile = _nbytes(dtype, shape), tiles[dtype]
                while left:
                    n = min(left, tile.size)
                    f.write(tile[:n].tobytes())
                    left -= n
        total += off
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}))
    special = hf_checkpoints.write_small_tokenizer(folder, "qwen")
    config = {
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
        "vocab_size": VOCAB, "hidden_size": HIDDEN, "intermediate_size": FFN,
        "moe_intermediate_size": MOE_FFN, "num_hidden_layers": 3, "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS, "n_shared_experts": 1, "n_routed_experts": n_expert,
        "routed_scaling_factor": 2.5, "kv_lora_rank": KV_RANK, "q_lora_rank": Q_RANK,
        "qk_rope_head_dim": ROPE, "v_head_dim": V_DIM, "qk_nope_head_dim": NOPE,
        "topk_method": "noaux_tc", "n_group": GROUPS, "topk_group": 4, "num_experts_per_tok": 8,
        "moe_layer_freq": 1, "first_k_dense_replace": 1, "norm_topk_prob": True,
        "scoring_func": "sigmoid", "hidden_act": "silu", "max_position_embeddings": 163840,
        "rms_norm_eps": 1e-6, "rope_theta": 10000,
        "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                         "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
                         "type": "yarn"},
        "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "bos_token_id": special["bos_id"], "eos_token_id": special["eos_id"],
        "num_nextn_predict_layers": 0,
        "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3",
                                "quant_method": "fp8", "weight_block_size": [BLOCK, BLOCK]},
    }
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    fp8 = sum(_nbytes(d, s) for _, d, s in tensors if d == "F8_E4M3")
    what = (f"DeepSeek-R1 layer shapes, FP8 e4m3 with 128x128 block scales ({fp8 / total:.0%} of "
            f"the bytes), 1 dense + 2 MoE layers of {n_expert} routed experts + 1 shared, "
            f"{len(shards)} shards")
    return total, what
