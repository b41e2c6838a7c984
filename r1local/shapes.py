"""What a model is, in the numbers the planner works with (ModelShape): from the catalog's
config numbers and published file sizes, or from the real tensors of a GGUF header.

Pure, like the planner: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quantize.quants import SUPPORTED_QUANTS, bits_per_weight

if TYPE_CHECKING:
    from r1local.catalog import Architecture, Variant
    from r1local.ggufinfo import GGUFHeader

MiB = 1 << 20

# Bits per weight of each file type on a real model, for quants whose file size the
# catalog does not list: quantize's table for what llama.cpp makes, plus the publishers' own
# mixes (unsloth's dynamic "UD-" quants, Q2_K_L)
QUANT_BPW: dict[str, float] = {
    **{q: bits_per_weight(q) for q in SUPPORTED_QUANTS},
    "Q2_K_L": 3.5, "UD-Q2_K_XL": 2.71, "UD-IQ2_XXS": 2.22, "UD-IQ1_M": 1.85, "UD-IQ1_S": 1.58,
}

# ggml types llama.cpp's CPU backend repacks into interleaved copies (AVX2/AVX512/NEON).
REPACKED_TYPES = frozenset({"Q4_0", "Q4_K", "IQ4_NL"})

# A MoE block's routed experts, as llama.cpp's own --cpu-moe matches them (common.h's
# LLM_FFN_EXPS_REGEX): the tensors a buffer-type override keeps in host RAM. The shared
# expert (ffn_*_shexp) and the router are not among them.
EXPERT_TENSORS = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps"
_EXPERT_RE = re.compile(EXPERT_TENSORS)


def experts_of_blocks(blocks: range) -> str:
    """EXPERT_TENSORS for these blocks only (as --n-cpu-moe N keeps blocks 0..N-1's)."""
    return r"^blk\.(" + "|".join(str(i) for i in blocks) + r")" + EXPERT_TENSORS

# Bits per weight of what a publisher's dynamic MoE quant keeps outside the routed experts
# (attention, shared expert, the dense layers, embeddings): unsloth's "UD-" quants of R1
# leave those "in 4 or 6bit" (unsloth.ai/blog/deepseekr1-dynamic) and take the routed
# experts to 1.58-2.5 bits. What the published size leaves is the experts' share. It sizes
# what a GPU holds when the experts stay in RAM.
DENSE_PART_BPW = 5.5

@dataclass(frozen=True)
class ModelShape:
    """What the planner needs to know about one model file (real or predicted)."""

    model: str
    quant: str
    arch: str
    n_layers: int
    n_embd: int
    n_head: int
    n_vocab: int
    n_ff: int
    ctx_train: int
    kv_width: int                   # K + V elements per token per layer (f16 cache)
    kv_width_fa: int                # the same with flash attention (MLA shares K and V)
    block_bytes: tuple[int, ...]    # weights of each block
    block_active: tuple[int, ...]   # bytes of each block read per token (MoE: active experts)
    block_repack: tuple[int, ...]   # bytes of each block llama.cpp repacks on the CPU
    embd_bytes: int                 # token_embd
    out_bytes: int                  # output.weight + output_norm (0 extra when tied)
    tied: bool
    out_repack: int = 0
    block_experts: tuple[int, ...] = ()  # of block_bytes: the routed experts (MoE), else 0
    experts_used: float = 0.0  # the share of a block's routed experts one token reads

    @property
    def weights_bytes(self) -> int:
        return sum(self.block_bytes) + self.embd_bytes + self.out_bytes

    @property
    def is_moe(self) -> bool:
        return any(self.block_experts)

    def experts(self, i: int) -> int:
        return self.block_experts[i] if self.block_experts else 0


# ---------------------------------------------------------------------------
# Shapes from the catalog

def _block_params(a: "Architecture", dense: bool) -> tuple[int, int]:
    """(parameters of one block, parameters read per token) from config numbers."""
    h = a.hidden_size
    if a.kv_lora_rank:  # MLA (DeepSeek-V3/R1)
        qk = a.qk_nope_head_dim + a.qk_rope_head_dim
        q = (h * a.q_lora_rank + a.q_lora_rank * a.n_heads * qk) if a.q_lora_rank \
            else h * a.n_heads * qk
        attn = (q + h * (a.kv_lora_rank + a.qk_rope_head_dim)
                + a.kv_lora_rank * a.n_heads * (a.qk_nope_head_dim + a.v_head_dim)
                + a.n_heads * a.v_head_dim * h + a.q_lora_rank + a.kv_lora_rank)
    else:
        q_out = a.n_heads * a.head_dim
        kv_out = a.n_kv_heads * a.head_dim
        attn = h * q_out + 2 * h * kv_out + q_out * h
        if a.type == "qwen2":
            attn += q_out + 2 * kv_out  # q/k/v biases
        if a.type == "qwen3":
            attn += 2 * a.head_dim      # q/k norms
    norms = 2 * h
    if dense or not a.is_moe:
        ffn = 3 * h * a.ffn_size
        return attn + ffn + norms, attn + ffn + norms
    expert = 3 * h * a.expert_ffn_size
    router = h * a.n_experts + a.n_experts  # gate and its bias
    total = attn + norms + router + expert * (a.n_experts + a.n_shared_experts)
    active = attn + norms + router + expert * (a.n_experts_used + a.n_shared_experts)
    return total, active


def arch_params(a: "Architecture") -> int:
    """Parameters as the GGUF holds them (DeepSeek's multi-token-prediction layer excluded)."""
    dense, _ = _block_params(a, True)
    moe, _ = _block_params(a, False)
    n_dense = a.n_dense_layers if a.is_moe else a.n_layers
    emb = a.vocab_size * a.hidden_size
    return (dense * n_dense + moe * (a.n_layers - n_dense) + emb * (1 if a.tied_embeddings else 2)
            + a.hidden_size)


def _kv_widths(a: "Architecture") -> tuple[int, int]:
    if a.kv_lora_rank:
        # MLA: llama.cpp caches one row per token, the latent and the rope part, and reads V
        # out of it (llama-kv-cache.cpp makes no V tensor when hparams.is_mla())
        k = a.kv_lora_rank + a.qk_rope_head_dim
        return k, k
    w = 2 * a.n_kv_heads * a.head_dim
    return w, w


def _routed_params(a: "Architecture") -> int:
    """Parameters of one MoE block's routed experts (the ffn_*_exps tensors)."""
    return 3 * a.hidden_size * a.expert_ffn_size * a.n_experts if a.is_moe else 0


def shape_from_variant(variant: "Variant", quant: str) -> ModelShape:
    """A model's shape from catalog numbers. Bytes come from the published file size when
    the catalog lists the quant, else from the quant's bits per weight."""
    a = variant.arch
    q = quant.upper()
    params = arch_params(a)
    if q in variant.quants:
        # the GGUF header (tokenizer) is a few MB of the file: not weights
        header = min(16 * MiB, variant.quants[q].total_size // 100)
        total = variant.quants[q].total_size - header
    elif q in QUANT_BPW:
        total = int(params * QUANT_BPW[q] / 8)
    else:
        from r1local.errors import UnknownModelError

        raise UnknownModelError(f"unknown quant '{quant}'",
                                hint=f"known: {', '.join(QUANT_BPW)}")
    dense, dense_active = _block_params(a, True)
    moe, moe_active = _block_params(a, False)
    n_dense = a.n_dense_layers if a.is_moe else a.n_layers
    routed = _routed_params(a)
    routed_all = routed * (a.n_layers - n_dense)
    # bytes per parameter: one rate for all, except a dynamic MoE quant, whose routed
    # experts take what the rest (at DENSE_PART_BPW) leaves of the file
    per_param = rest_rate = total / params
    if routed_all and q.startswith("UD-"):
        rest_rate = DENSE_PART_BPW / 8
        per_param = (total - (params - routed_all) * rest_rate) / routed_all
        if per_param <= 0:
            per_param = rest_rate = total / params
    routed_active = 3 * a.hidden_size * a.expert_ffn_size * a.n_experts_used if a.is_moe else 0

    def size(i: int, active: bool) -> int:
        if i < n_dense:
            return int((dense_active if active else dense) * rest_rate)
        experts = routed_active if active else routed
        rest = (moe_active if active else moe) - experts
        return int(rest * rest_rate + experts * per_param)

    blocks = tuple(size(i, False) for i in range(a.n_layers))
    active = tuple(size(i, True) for i in range(a.n_layers))
    experts = tuple(0 if i < n_dense else int(routed * per_param) for i in range(a.n_layers))
    emb = int(a.vocab_size * a.hidden_size * rest_rate)
    # which of a quant's tensors the CPU repacks: the Q4_K / Q4_0 / IQ4_NL ones
    share = _repack_share(q)
    kv, kv_fa = _kv_widths(a)
    return ModelShape(
        model=variant.tag, quant=q, arch=a.type, n_layers=a.n_layers, n_embd=a.hidden_size,
        n_head=a.n_heads, n_vocab=a.vocab_size,
        n_ff=a.expert_ffn_size * (a.n_experts_used + a.n_shared_experts) if a.is_moe else a.ffn_size,
        ctx_train=a.context_length, kv_width=kv, kv_width_fa=kv_fa,
        block_bytes=blocks, block_active=active,
        block_repack=tuple(int(b * share) for b in blocks),
        embd_bytes=emb, out_bytes=0 if a.tied_embeddings else emb,
        tied=a.tied_embeddings, block_experts=experts,
        experts_used=a.n_experts_used / a.n_experts if a.is_moe else 0.0,
    )


def _repack_share(quant: str) -> float:
    """Fraction of a block's bytes in repacked types, for each llama.cpp file type mix."""
    q = quant.upper().removeprefix("UD-")
    if q in ("Q4_0", "IQ4_NL"):
        return 1.0
    if q in ("Q4_K_S",):
        return 0.9
    if q == "Q4_K_M":
        return 0.7   # attn_v and half of ffn_down are Q6_K
    if q in ("Q3_K_L", "Q3_K_M", "Q5_K_M", "Q2_K", "Q2_K_XL", "Q2_K_L"):
        return 0.1   # a few Q4_K tensors in the mix
    return 0.0


# ---------------------------------------------------------------------------
# Shapes from a GGUF header

_BLOCK_RE = re.compile(r"^blk\.(\d+)\.")


def _per_layer(value: Any, n: int, default: int) -> list[int]:
    if isinstance(value, list):
        vals = [int(v) for v in value[:n]]
        return vals + [default] * (n - len(vals))
    if isinstance(value, int):
        return [value] * n
    return [default] * n


def shape_from_gguf(h: "GGUFHeader") -> ModelShape:
    """A model's shape from the real tensor sizes and hyper-parameters in its header."""
    from r1local.errors import ModelFileError

    arch = h.architecture
    n_layers = h.arch_value("block_count")
    n_embd = h.arch_value("embedding_length")
    if not isinstance(n_layers, int) or not isinstance(n_embd, int):
        raise ModelFileError(f"{h.path}: lacks {arch}.block_count or {arch}.embedding_length")
    n_head_raw = h.arch_value("attention.head_count", 1)
    n_head = max(_per_layer(n_head_raw, n_layers, 1)) or 1
    n_kv = _per_layer(h.arch_value("attention.head_count_kv"), n_layers, n_head)
    head_k = h.arch_value("attention.key_length") or n_embd // n_head
    head_v = h.arch_value("attention.value_length") or n_embd // n_head
    kv_lora = h.arch_value("attention.kv_lora_rank")
    n_expert = h.arch_value("expert_count") or 0
    n_used = h.arch_value("expert_used_count") or 0
    if isinstance(kv_lora, int) and kv_lora > 0 and h.arch_value("attention.key_length_mla"):
        # MLA as llama.cpp runs it: K only, key_length (latent + rope) wide, one KV head
        kv_width = kv_width_fa = int(head_k) * max(n_kv)
    else:
        kv_width = kv_width_fa = max(n_kv) * (head_k + head_v)
        if any(k == 0 for k in n_kv):  # hybrid models: some layers have no KV
            kv_width = kv_width_fa = int(sum(n_kv) / n_layers * (head_k + head_v))

    blocks = [0] * n_layers
    active = [0] * n_layers
    repack = [0] * n_layers
    experts = [0] * n_layers
    embd = out = out_repack = 0
    tied = True
    for t in h.tensors:
        m = _BLOCK_RE.match(t.name)
        if m:
            i = int(m.group(1))
            if i >= n_layers:  # e.g. a multi-token-prediction block llama.cpp skips
                continue
            blocks[i] += t.nbytes
            if _EXPERT_RE.search(t.name):
                experts[i] += t.nbytes
            if "_exps." in t.name and n_expert:
                active[i] += t.nbytes * n_used // n_expert
            else:
                active[i] += t.nbytes
            if t.type_name in REPACKED_TYPES and len(t.shape) == 2:
                repack[i] += t.nbytes
        elif t.name == "token_embd.weight":
            embd += t.nbytes
        elif t.name.startswith("output"):
            out += t.nbytes
            if t.name == "output.weight":
                tied = False
                if t.type_name in REPACKED_TYPES:
                    out_repack += t.nbytes
        else:
            out += t.nbytes  # rope factors and other small globals
    vocab = h.get("tokenizer.ggml.tokens")
    n_vocab = (vocab.count if hasattr(vocab, "count") and not isinstance(vocab, list)
               else len(vocab) if isinstance(vocab, list) else 0)
    emb_t = h.tensor("token_embd.weight")
    if emb_t is not None and len(emb_t.shape) == 2:
        n_vocab = emb_t.shape[1]
    n_ff = h.arch_value("feed_forward_length") or 4 * n_embd
    if isinstance(n_ff, list):
        n_ff = max(n_ff)
    if n_expert:
        eff = h.arch_value("expert_feed_forward_length") or n_ff
        n_ff = eff * (n_used + (h.arch_value("expert_shared_count") or 0))
    ctx_train = h.arch_value("context_length") or 4096
    name = str(h.get("general.name") or h.path.rsplit("/", 1)[-1])
    return ModelShape(
        model=name, quant=h.quant, arch=arch, n_layers=n_layers, n_embd=n_embd,
        n_head=n_head, n_vocab=n_vocab or 32000, n_ff=int(n_ff), ctx_train=int(ctx_train),
        kv_width=int(kv_width), kv_width_fa=int(kv_width_fa),
        block_bytes=tuple(blocks), block_active=tuple(active), block_repack=tuple(repack),
        embd_bytes=embd, out_bytes=out, tied=tied, out_repack=out_repack,
        block_experts=tuple(experts),
        experts_used=n_used / n_expert if n_expert and any(experts) else 0.0,
    )


