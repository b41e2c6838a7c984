"""The memory planner: (model facts or a GGUF header) x machine -> Plan. Pure: no I/O.

The memory model follows what llama.cpp allocates (see bench/fit_accuracy.py for how it
was checked against real loads):

- weights: per block, plus the token embedding (always in RAM), plus the output matrix
  (on the GPU only when every block is). On the CPU the file is memory-mapped and
  prefetched, so all of its CPU-side pages are resident.
- CPU repack: on x86 with AVX2 (and ARM) llama.cpp copies Q4_0/Q4_K/IQ4_NL matrices of
  CPU-resident blocks into an interleaved layout, in anonymous memory, while the mapped
  original stays resident too: those tensors count twice.
- KV cache: n_ctx (padded to 256) x layers x (K + V width) x bytes per element of the
  cache type; DeepSeek-V3/R1 (MLA) caches one compressed latent instead.
- compute buffers: the intermediate tensors of one micro-batch (the KQ matrix unless
  flash attention is on); logits are computed for the last token of a batch only.
- overhead: the process's vocabulary tables and llama-cpp-python's per-vocab arrays.

Layers go to the GPU from the last block backwards (as llama.cpp assigns them) until the
VRAM budget, less a safety margin, is used; the rest stay in RAM.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Iterable, Sequence

if TYPE_CHECKING:
    from r1local.catalog import Architecture, Catalog, Variant
    from r1local.ggufinfo import GGUFHeader
    from r1local.hardware import Machine

MiB = 1 << 20
GiB = 1 << 30

# ---------------------------------------------------------------------------
# Tables

# Bits per weight of each llama.cpp file type as it comes out on a real model (the mix of
# tensor types a ftype uses), for quants whose file size the catalog does not list.
QUANT_BPW: dict[str, float] = {
    "F32": 32.0, "F16": 16.0, "BF16": 16.0, "Q8_0": 8.5, "Q6_K": 6.59, "Q5_K_M": 5.70,
    "Q5_K_S": 5.54, "Q5_0": 5.54, "Q4_K_M": 4.89, "Q4_K_S": 4.58, "Q4_0": 4.55,
    "Q4_1": 5.0, "IQ4_NL": 4.50, "IQ4_XS": 4.32, "Q3_K_L": 4.27, "Q3_K_M": 3.91,
    "Q3_K_S": 3.50, "IQ3_M": 3.70, "IQ3_XXS": 3.21, "Q2_K": 3.35, "Q2_K_L": 3.5,
    "IQ2_M": 2.93, "IQ2_XXS": 2.38, "IQ1_M": 1.95, "IQ1_S": 1.78,
    "UD-Q2_K_XL": 2.71, "UD-IQ2_XXS": 2.22, "UD-IQ1_M": 1.85, "UD-IQ1_S": 1.58,
}

# Quality order, best first: the planner tries quants in this order.
QUANT_PREFERENCE: tuple[str, ...] = (
    "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S", "IQ4_XS",
    "Q4_0", "Q3_K_L", "Q3_K_M", "IQ3_M", "Q3_K_S", "IQ3_XXS", "UD-Q2_K_XL", "Q2_K_L",
    "Q2_K", "IQ2_M", "UD-IQ2_XXS", "IQ2_XXS", "UD-IQ1_M", "IQ1_M", "UD-IQ1_S", "IQ1_S",
)
# Below this a dense distill loses too much: recommended only when nothing better fits.
# (The 671B MoE is published in dynamic 1.58-2.7 bit quants made to stay usable.)
DENSE_QUALITY_FLOOR = "Q3_K_M"

# ggml types llama.cpp's CPU backend repacks into interleaved copies (AVX2/AVX512/NEON).
REPACKED_TYPES = frozenset({"Q4_0", "Q4_K", "IQ4_NL"})
REPACK_GROWTH = 1.0  # the interleaved copy is the same size as the original blocks

KV_BYTES = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}

CTX_PAD = 256                 # llama.cpp pads n_ctx to a multiple of this
USEFUL_CTX = 8192             # R1 reasons at length: aim for at least this
MIN_CTX = 2048                # below this a reasoning model is of little use
CTX_STEPS = (131072, 65536, 32768, 16384, 8192, 4096, 2048)
MAX_AUTO_CTX = 32768          # R1's own generation limit; longer costs memory for nothing
N_BATCH = 512
N_UBATCH = 512

# Memory the planner leaves alone.
RAM_RESERVE_FRACTION = 0.08   # the OS, other programs, the page cache's working set
RAM_RESERVE_MIN = 1 * GiB
VRAM_RESERVE_FRACTION = 0.05  # fragmentation
VRAM_RESERVE_MIN = 400 * MiB  # the CUDA/ROCm context and cuBLAS workspace
GPU_COMPUTE_EXTRA = 64 * MiB  # per-GPU graph buffers beyond the activations

# Process overhead: llama.cpp's vocabulary tables and llama-cpp-python's per-vocab arrays
# (calibrated by bench/fit_accuracy.py), plus a fixed part.
OVERHEAD_FIXED = 24 * MiB
OVERHEAD_PER_VOCAB = 240      # bytes per vocabulary entry

# Speed: a CPU rarely reaches its peak bandwidth on matmuls; a GPU gets close to it.
CPU_EFFICIENCY = (0.55, 0.85)
GPU_EFFICIENCY = (0.6, 0.85)
# Besides its bytes, every layer a CPU runs costs a little time per token (thread barriers,
# norms, rope, attention, small matmuls that never reach the bus's rate): 0.14-0.26 ms
# measured on 2 cores. Nothing next to 8B's 5 GB, but most of a 135M model's token.
CPU_LAYER_SECONDS = (0.3e-3, 0.1e-3)  # (slow, fast)
MIN_TOK_S = 2.0               # recommend() skips variants slower than this when it can


# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    model: str
    quant: str
    arch: str
    n_layers: int
    n_gpu_layers: int  # passed to llama.cpp as is: n_layers + 1 also offloads the output
    n_ctx: int
    n_threads: int
    n_batch: int
    n_ubatch: int
    flash_attn: bool
    kv_type: str  # "f16" | "q8_0" | "q4_0"
    use_mmap: bool
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    overhead_bytes: int
    ram_bytes: int
    vram_bytes: int
    verdict: str  # "gpu" | "partial" | "cpu" | "no-fit"
    tok_s_low: float
    tok_s_high: float
    reason: str
    repack_bytes: int = 0
    rss_bytes: int = 0      # predicted resident set: ram_bytes + reclaimable mapped pages
    ram_budget: int = 0
    vram_budget: int = 0

    @property
    def fits(self) -> bool:
        return self.verdict != "no-fit"

    @property
    def layers_on_gpu(self) -> int:
        return min(self.n_gpu_layers, self.n_layers)

    @property
    def total_bytes(self) -> int:
        return self.ram_bytes + self.vram_bytes

    @property
    def tok_s_typical(self) -> float:
        """The middle of the speed range (geometric): what the recommendation judges by,
        since the range's top needs a machine good at everything at once."""
        return (self.tok_s_low * self.tok_s_high) ** 0.5

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["fits"] = self.fits
        d["tok_s_low"] = round(self.tok_s_low, 2)
        d["tok_s_high"] = round(self.tok_s_high, 2)
        return d


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

    @property
    def weights_bytes(self) -> int:
        return sum(self.block_bytes) + self.embd_bytes + self.out_bytes


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
        k = a.kv_lora_rank + a.qk_rope_head_dim
        # K holds the latent and the rope part, V the latent again (not assumed shared)
        return k + a.kv_lora_rank, k + a.kv_lora_rank
    w = 2 * a.n_kv_heads * a.head_dim
    return w, w


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
                                hint=f"known: {', '.join(QUANT_PREFERENCE)}")
    per_param = total / params
    dense, dense_active = _block_params(a, True)
    moe, moe_active = _block_params(a, False)
    n_dense = a.n_dense_layers if a.is_moe else a.n_layers
    blocks = tuple(int((dense if i < n_dense else moe) * per_param) for i in range(a.n_layers))
    active = tuple(int((dense_active if i < n_dense else moe_active) * per_param)
                   for i in range(a.n_layers))
    emb = int(a.vocab_size * a.hidden_size * per_param)
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
        tied=a.tied_embeddings,
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


def _ftype_name(h: "GGUFHeader") -> str:
    ft = h.get("general.file_type")
    try:
        from gguf.constants import LlamaFileType

        return LlamaFileType(ft).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except (ImportError, ValueError, TypeError):
        return "?"


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
    if isinstance(kv_lora, int) and kv_lora > 0:
        rope = h.arch_value("rope.dimension_count") or 64
        kv_width = kv_width_fa = kv_lora + rope + kv_lora
    else:
        kv_width = kv_width_fa = max(n_kv) * (head_k + head_v)
        if any(k == 0 for k in n_kv):  # hybrid models: some layers have no KV
            kv_width = kv_width_fa = int(sum(n_kv) / n_layers * (head_k + head_v))

    blocks = [0] * n_layers
    active = [0] * n_layers
    repack = [0] * n_layers
    embd = out = out_repack = 0
    tied = True
    for t in h.tensors:
        m = _BLOCK_RE.match(t.name)
        if m:
            i = int(m.group(1))
            if i >= n_layers:  # e.g. a multi-token-prediction block llama.cpp skips
                continue
            blocks[i] += t.nbytes
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
        model=name, quant=_ftype_name(h), arch=arch, n_layers=n_layers, n_embd=n_embd,
        n_head=n_head, n_vocab=n_vocab or 32000, n_ff=int(n_ff), ctx_train=int(ctx_train),
        kv_width=int(kv_width), kv_width_fa=int(kv_width_fa),
        block_bytes=tuple(blocks), block_active=tuple(active), block_repack=tuple(repack),
        embd_bytes=embd, out_bytes=out, tied=tied, out_repack=out_repack,
    )


# ---------------------------------------------------------------------------
# The memory model

def pad_ctx(n_ctx: int) -> int:
    return max(CTX_PAD, -(-n_ctx // CTX_PAD) * CTX_PAD)


def kv_cache_bytes(shape: ModelShape, n_ctx: int, kv_type: str, flash_attn: bool,
                   n_layers: int | None = None) -> int:
    width = shape.kv_width_fa if flash_attn else shape.kv_width
    layers = shape.n_layers if n_layers is None else n_layers
    return int(pad_ctx(n_ctx) * layers * width * KV_BYTES[kv_type])


def compute_bytes(shape: ModelShape, n_ctx: int, flash_attn: bool, n_ubatch: int = N_UBATCH,
                  *, with_logits: bool = False) -> int:
    """The activations of one micro-batch at their peak (what a full prompt batch touches).

    Intermediates: the residual stream and its normed copy, Q/K/V/attention output, the
    FFN's gate/up/activation; and without flash attention the KQ scores of every head."""
    ub = n_ubatch
    hidden = ub * shape.n_embd * 4 * 6
    ffn = ub * shape.n_ff * 4 * 3
    kq = 0 if flash_attn else ub * pad_ctx(n_ctx) * shape.n_head * 4 * 2
    logits = shape.n_vocab * 4 * (ub if with_logits else 1)
    return hidden + max(ffn, kq) + logits


def overhead_bytes(shape: ModelShape) -> int:
    return OVERHEAD_FIXED + shape.n_vocab * OVERHEAD_PER_VOCAB


@dataclass(frozen=True)
class _Split:
    ram: int
    vram: int
    weights_ram: int
    weights_vram: int
    repack: int
    kv_ram: int
    kv_vram: int
    compute_ram: int
    compute_vram: int
    rss: int


def _split(shape: ModelShape, n_gpu: int, n_ctx: int, kv_type: str, flash: bool,
           n_gpus: int, unified: bool) -> _Split:
    """Memory on each side with the last ``n_gpu`` blocks on the GPU(s);
    n_gpu > n_layers also puts the output matrix there."""
    L = shape.n_layers
    g = max(0, min(n_gpu, L + 1))
    gpu_blocks = min(g, L)
    cpu_idx = range(0, L - gpu_blocks)
    w_cpu = sum(shape.block_bytes[i] for i in cpu_idx)
    w_gpu = sum(shape.block_bytes[i] for i in range(L - gpu_blocks, L))
    repack = sum(shape.block_repack[i] for i in cpu_idx)
    out_on_gpu = g > L
    # the output matrix: the embedding itself when tied (then fully touched on the CPU)
    out = shape.embd_bytes if shape.tied else shape.out_bytes
    # llama.cpp maps the file with MAP_POPULATE: every page the CPU side keeps mapped is
    # resident, the input embedding included (measured: bench/fit_accuracy.py)
    w_cpu += shape.embd_bytes
    if out_on_gpu:
        w_gpu += out
    else:
        w_cpu += 0 if shape.tied else shape.out_bytes
        repack += shape.out_repack
    kv_gpu = kv_cache_bytes(shape, n_ctx, kv_type, flash, gpu_blocks)
    kv_cpu = kv_cache_bytes(shape, n_ctx, kv_type, flash, L - gpu_blocks)
    act = compute_bytes(shape, n_ctx, flash)
    if g > 0:
        # each GPU reserves a full micro-batch graph (logits included when the output is
        # there); the CPU keeps a small buffer for the layers it runs
        c_gpu = n_gpus * (compute_bytes(shape, n_ctx, flash, with_logits=out_on_gpu)
                          + GPU_COMPUTE_EXTRA)
        c_cpu = act if gpu_blocks < L else N_UBATCH * shape.n_embd * 4 * 2
    else:
        c_gpu, c_cpu = 0, act
    # the repacked copy replaces its mapped original, whose clean file pages stay resident
    # but are the first the kernel drops: they count in RSS, not in what the model needs
    ram = w_cpu + kv_cpu + c_cpu + overhead_bytes(shape)
    rss = ram + int(repack * REPACK_GROWTH)
    vram = w_gpu + kv_gpu + c_gpu
    return _Split(ram, vram, w_cpu, w_gpu, repack, kv_cpu, kv_gpu, c_cpu, c_gpu, rss)


def ram_budget(machine: "Machine") -> int:
    reserve = max(RAM_RESERVE_MIN, int(machine.ram_total * RAM_RESERVE_FRACTION))
    budget = machine.ram_total - reserve
    if not machine.hypothetical:
        budget = min(budget, machine.ram_available)
    return max(0, budget)


def vram_budget(machine: "Machine") -> int:
    total = 0
    for gpu in machine.usable_gpus:
        size = gpu.total_bytes if machine.hypothetical else gpu.free_bytes
        if gpu.unified:  # the working-set limit is already a limit, not a raw size
            total += max(0, size - VRAM_RESERVE_MIN // 2)
        else:
            total += max(0, size - max(VRAM_RESERVE_MIN, int(size * VRAM_RESERVE_FRACTION)))
    return total


def _fits(s: _Split, ram_b: int, vram_b: int, unified: bool) -> bool:
    if unified:
        return s.vram <= vram_b and s.ram + s.vram <= ram_b
    return s.ram <= ram_b and s.vram <= vram_b


def _speed(shape: ModelShape, machine: "Machine", n_gpu: int, n_ctx: int, kv_type: str,
           flash: bool) -> tuple[float, float]:
    """Decode tokens/s as a range: each token reads the active weights once, and the KV
    cache filled so far (none at the start, half the context on average later), plus a
    fixed cost per layer run on the CPU."""
    L = shape.n_layers
    gpu_blocks = min(max(n_gpu, 0), L)
    out = shape.embd_bytes if shape.tied else shape.out_bytes
    cpu_w = sum(shape.block_active[: L - gpu_blocks]) + (0 if n_gpu > L else out)
    gpu_w = sum(shape.block_active[L - gpu_blocks:]) + (out if n_gpu > L else 0)
    kv_half_cpu = kv_cache_bytes(shape, n_ctx // 2, kv_type, flash, L - gpu_blocks)
    kv_half_gpu = kv_cache_bytes(shape, n_ctx // 2, kv_type, flash, gpu_blocks)
    cpu_bw = machine.ram_bandwidth
    gpu_bw = machine.gpu_bandwidth if machine.gpu_bandwidth[1] > 0 else cpu_bw

    def seconds(bw: tuple[float, float], eff: tuple[float, float], which: int,
                nbytes: int) -> float:
        rate = bw[which] * eff[which]
        return nbytes / rate if rate > 0 and nbytes > 0 else 0.0

    cpu_layers = L - gpu_blocks
    slow = (seconds(cpu_bw, CPU_EFFICIENCY, 0, cpu_w + kv_half_cpu)
            + seconds(gpu_bw, GPU_EFFICIENCY, 0, gpu_w + kv_half_gpu)
            + cpu_layers * CPU_LAYER_SECONDS[0])
    fast = (seconds(cpu_bw, CPU_EFFICIENCY, 1, cpu_w)
            + seconds(gpu_bw, GPU_EFFICIENCY, 1, gpu_w)
            + cpu_layers * CPU_LAYER_SECONDS[1])
    low = 1.0 / slow if slow > 0 else 0.0
    high = 1.0 / fast if fast > 0 else 0.0
    return round(low, 2), round(high, 2)


def _fmt(n: int) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"


def plan_shape(shape: ModelShape, machine: "Machine", *, n_ctx: int | None = None,
               n_gpu_layers: int | None = None, kv_type: str = "f16") -> Plan:
    """Plan one model file: context (given, or the longest useful that fits), layers on
    the GPU (given, or as many as fit), and the memory and speed that follow."""
    from r1local.errors import UsageError

    kv_type = kv_type.lower()
    if kv_type not in KV_BYTES:
        raise UsageError(f"unknown KV cache type '{kv_type}' (use f16, q8_0 or q4_0)")
    if n_ctx is not None and n_ctx < 16:
        raise UsageError(f"a context of {n_ctx} tokens is too small (use >= 2048)")
    # flash attention: no KQ score matrix (its size grows with the context), and llama.cpp
    # needs it for a quantized V cache; every backend r1local builds supports it
    flash = True
    unified = machine.unified and machine.gpu_offload
    ram_b, vram_b = ram_budget(machine), vram_budget(machine)
    n_gpus = max(1, len(machine.usable_gpus))
    L = shape.n_layers

    def gpu_layers(ctx: int) -> tuple[int, _Split]:
        """The layers for the GPU at this context, RAM aside: the ones asked for, else as
        many as the VRAM takes. A plan that does not fit keeps them too, so that `run
        --force` on a GPU machine does not land the whole model in RAM."""
        if not machine.usable_gpus:
            g = 0
        elif n_gpu_layers is not None:
            g = max(0, min(n_gpu_layers, L + 1))
        else:
            for g in range(L + 1, 0, -1):  # few dozen layers: a linear scan is cheap
                s = _split(shape, g, ctx, kv_type, flash, n_gpus, unified)
                if s.vram <= vram_b:
                    return g, s
            g = 0
        return g, _split(shape, g, ctx, kv_type, flash, n_gpus, unified)

    def best_layers(ctx: int) -> tuple[int, _Split] | None:
        """The most layers on the GPU that fit at this context (None: nothing fits)."""
        g, s = gpu_layers(ctx)
        return (g, s) if _fits(s, ram_b, vram_b, unified) else None

    ctx_cap = min(shape.ctx_train or MAX_AUTO_CTX, MAX_AUTO_CTX)
    chosen: tuple[int, int, _Split] | None = None
    if n_ctx is not None:
        got = best_layers(n_ctx)
        ctx = n_ctx
        if got:
            chosen = (ctx, *got)
    else:
        steps = sorted({c for c in CTX_STEPS if c <= ctx_cap} | {min(USEFUL_CTX, ctx_cap)})
        useful = min(USEFUL_CTX, ctx_cap)
        got = best_layers(useful)
        if got is not None:
            chosen = (useful, *got)
            for c in (c for c in steps if c > useful):  # grow while it costs no GPU layer
                bigger = best_layers(c)
                if bigger is None or bigger[0] < chosen[1]:
                    break
                chosen = (c, *bigger)
        else:  # not even the useful context fits: the largest smaller one that does
            for c in reversed([c for c in steps if c < useful]):
                got = best_layers(c)
                if got is not None:
                    chosen = (c, *got)
                    break
        ctx = chosen[0] if chosen else min(USEFUL_CTX, ctx_cap)

    n_threads = machine.physical_cores
    if chosen is None:
        s = _split(shape, 0 if not machine.usable_gpus else (
            n_gpu_layers if n_gpu_layers is not None else L + 1), ctx, kv_type, flash, n_gpus,
            unified)
        need = s.ram + s.vram
        reason = (f"needs {_fmt(need)} at context {ctx}, more than the "
                  f"{_fmt(ram_b)} RAM" + (f" + {_fmt(vram_b)} VRAM" if vram_b and not unified
                                            else "") + " it may use")
        if n_gpu_layers is not None and s.vram > vram_b:
            reason = (f"{n_gpu_layers} layers need {_fmt(s.vram)} of VRAM, more than the "
                      f"{_fmt(vram_b)} it may use")
        return Plan(
            model=shape.model, quant=shape.quant, arch=shape.arch, n_layers=L,
            n_gpu_layers=gpu_layers(ctx)[0], n_ctx=ctx, n_threads=n_threads, n_batch=N_BATCH,
            n_ubatch=N_UBATCH, flash_attn=flash, kv_type=kv_type, use_mmap=True,
            weights_bytes=shape.weights_bytes, kv_bytes=s.kv_ram + s.kv_vram,
            compute_bytes=s.compute_ram + s.compute_vram, overhead_bytes=overhead_bytes(shape),
            ram_bytes=s.ram, vram_bytes=s.vram, verdict="no-fit", tok_s_low=0.0,
            tok_s_high=0.0, reason=reason, repack_bytes=s.repack, rss_bytes=s.rss, ram_budget=ram_b,
            vram_budget=vram_b)

    ctx, g, s = chosen
    if g == 0:
        verdict = "cpu"
        why = "no usable GPU" if not machine.usable_gpus else "no layer fits in VRAM"
        reason = f"CPU only ({why}); {_fmt(s.ram)} of {_fmt(ram_b)} RAM"
    elif g > L:
        verdict = "gpu"
        reason = f"all {L} layers on GPU; {_fmt(s.vram)} of {_fmt(vram_b)} VRAM"
    else:
        verdict = "partial"
        reason = (f"{g} of {L} layers on GPU ({_fmt(s.vram)} of {_fmt(vram_b)} VRAM), "
                  f"the rest in RAM ({_fmt(s.ram)})")
    low, high = _speed(shape, machine, g, ctx, kv_type, flash)
    return Plan(
        model=shape.model, quant=shape.quant, arch=shape.arch, n_layers=L, n_gpu_layers=g,
        n_ctx=ctx, n_threads=n_threads, n_batch=N_BATCH, n_ubatch=N_UBATCH, flash_attn=flash,
        kv_type=kv_type, use_mmap=True, weights_bytes=shape.weights_bytes,
        kv_bytes=s.kv_ram + s.kv_vram, compute_bytes=s.compute_ram + s.compute_vram,
        overhead_bytes=overhead_bytes(shape), ram_bytes=s.ram, vram_bytes=s.vram,
        verdict=verdict, tok_s_low=low, tok_s_high=high, reason=reason, repack_bytes=s.repack,
        rss_bytes=s.rss, ram_budget=ram_b, vram_budget=vram_b)


# ---------------------------------------------------------------------------
# The public entry points

def plan_variant(variant: "Variant", quant: str, machine: "Machine", *,
                 n_ctx: int | None = None, n_gpu_layers: int | None = None,
                 kv_type: str = "f16") -> Plan:
    return plan_shape(shape_from_variant(variant, quant), machine, n_ctx=n_ctx,
                      n_gpu_layers=n_gpu_layers, kv_type=kv_type)


def plan_gguf(header: "GGUFHeader", machine: "Machine", *, n_ctx: int | None = None,
              n_gpu_layers: int | None = None, kv_type: str = "f16") -> Plan:
    return plan_shape(shape_from_gguf(header), machine, n_ctx=n_ctx,
                      n_gpu_layers=n_gpu_layers, kv_type=kv_type)


def quant_rank(quant: str) -> int:
    q = quant.upper()
    return QUANT_PREFERENCE.index(q) if q in QUANT_PREFERENCE else len(QUANT_PREFERENCE)


def candidate_quants(variant: "Variant") -> list[str]:
    """The variant's published quants, best first."""
    return sorted(variant.quants, key=quant_rank)


def acceptable(variant: "Variant", quant: str) -> bool:
    """Good enough to recommend: dense models at Q3_K_M or better; the MoE at anything
    published (its low-bit dynamic quants are built to stay usable)."""
    return variant.arch.is_moe or quant_rank(quant) <= quant_rank(DENSE_QUALITY_FLOOR)


def _better(a: Plan, b: Plan) -> bool:
    """Is plan ``a`` a better way to run the same quant than ``b``?"""
    order = {"gpu": 3, "partial": 2, "cpu": 1, "no-fit": 0}
    return (order[a.verdict], a.n_ctx >= USEFUL_CTX) > (order[b.verdict], b.n_ctx >= USEFUL_CTX)


def choose_quant(variant: "Variant", machine: "Machine", *, min_tok_s: float = 0.0) -> Plan:
    """The best quant of one variant that fits with a useful context.

    Best = highest quality that still runs at least as well (all-GPU beats partial beats
    CPU) as the next quant down would, with a context of at least 8192 where possible.
    Where that would decode slower than ``min_tok_s`` (the middle of its range), the best
    of the smaller ones that does not, if any."""
    plans = [plan_variant(variant, q, machine) for q in candidate_quants(variant)]
    fitting = [p for p in plans if p.fits and p.n_ctx >= min(USEFUL_CTX, variant.arch.context_length)]
    fitting = fitting or [p for p in plans if p.fits]
    if not fitting:
        return min(plans, key=lambda p: p.ram_bytes + p.vram_bytes)  # the smallest, no-fit
    good = [p for p in fitting if acceptable(variant, p.quant)] or fitting
    # take the best quality unless a smaller quant gets the whole model on the GPU
    best = good[0]
    for p in good[1:]:
        if best.verdict == "partial" and p.verdict == "gpu" and quant_rank(p.quant) <= quant_rank("Q4_K_M"):
            best = p
            break
    if best.tok_s_typical < min_tok_s:
        below = good[good.index(best) + 1:]
        quicker = next((p for p in below if p.tok_s_typical >= min_tok_s), None)
        if quicker is not None:
            return replace(quicker, reason=(
                f"{quicker.reason}; {best.quant} would fit too but decode at only "
                f"~{best.tok_s_low:.1f}-{best.tok_s_high:.1f} tok/s"))
    return best


def _sizes(catalog: "Catalog") -> list["Variant"]:
    return sorted(catalog, key=lambda v: v.params_b)


def recommend(catalog: "Catalog", machine: "Machine", *, min_tok_s: float = MIN_TOK_S) -> Plan:
    """The largest variant that fits (at a recommendable quant and a useful context), then
    its best quant, then the longest useful context. Where that quant would decode slower
    than ``min_tok_s`` (judged by the middle of its range) a smaller recommendable quant of
    the same variant is taken (choose_quant), and failing that the next smaller variant."""
    picks: list[tuple["Variant", Plan]] = []
    for v in _sizes(catalog):
        p = choose_quant(v, machine, min_tok_s=min_tok_s)
        if p.fits and acceptable(v, p.quant) and p.n_ctx >= min(USEFUL_CTX, v.arch.context_length):
            picks.append((v, p))
    if not picks:  # nothing at a useful context: the smallest that fits at all
        for v in _sizes(catalog):
            p = choose_quant(v, machine)
            if p.fits:
                return replace(p, reason=p.reason + "; context below 8192: expect cut-off reasoning")
        smallest = _sizes(catalog)[0]
        p = choose_quant(smallest, machine)
        return replace(p, reason=f"nothing fits: even {smallest.tag} {p.reason}")
    largest_v, largest = picks[-1]
    for v, p in reversed(picks):
        if p.tok_s_typical >= min_tok_s:
            if v is not largest_v:
                return replace(p, reason=(
                    f"{p.reason}; {largest_v.tag} would fit too but decode at only "
                    f"~{largest.tok_s_low:.1f}-{largest.tok_s_high:.1f} tok/s"))
            return p
    return largest


def common_quants(variant: "Variant") -> list[str]:
    """The quants `r1local hw` shows for a variant: the published ones, best first."""
    return candidate_quants(variant)
