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
VRAM budget, less a safety margin, is used; the rest stay in RAM. llama.cpp's count
n_gpu_layers = g puts the output matrix and the last g - 1 blocks there
(llama-model.cpp: i_gpu_start = n_layer + 1 - g).

A MoE model may keep its routed experts (ffn_*_exps) in RAM whatever the layer's device
(llama.cpp's tensor buffer-type overrides, as its --cpu-moe does): the GPU then holds only
the attention, shared expert, norms and KV cache of its layers, so far more layers fit,
and the CPU reads only the few experts each token routes to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from r1local.shapes import (EXPERT_TENSORS, ModelShape, experts_of_blocks, shape_from_gguf,
                            shape_from_variant)
from r1local.units import fmt_bytes

if TYPE_CHECKING:
    from r1local.catalog import Variant
    from r1local.ggufinfo import GGUFHeader
    from r1local.hardware import Machine

MiB = 1 << 20
GiB = 1 << 30

# ---------------------------------------------------------------------------
# Tables

REPACK_GROWTH = 1.0  # the interleaved copy is the same size as the original blocks

KV_BYTES = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}

CTX_PAD = 256                 # llama.cpp pads n_ctx to a multiple of this
USEFUL_CTX = 8192             # R1 reasons at length: aim for at least this
MIN_CTX = 16                  # fewer tokens cannot hold a chat template's frame and a reply
# What "how long will it take" is judged by: R1's replies reason for hundreds to thousands
# of tokens, so a speed is also shown as the time of a reply this long
TYPICAL_REPLY_TOKENS = 1000
# Room kept for the answer after R1's reasoning: an eighth of the context, 64..2048 tokens
# (R1's answers after reasoning run to a few hundred tokens; a proof or code to more)
ANSWER_RESERVE = (1 / 8, 64, 2048)
CTX_STEPS = (131072, 65536, 32768, 16384, 8192, 4096, 2048)
MAX_AUTO_CTX = 32768          # R1's own generation limit; longer costs memory for nothing
N_BATCH = 512
N_UBATCH = 512
# where a MoE model's routed experts go (`--experts-on`): the planner decides, always RAM,
# or with their layer (llama.cpp's default)
EXPERTS_ON = ("auto", "cpu", "gpu")
EXPERTS_ON_HELP = ("MoE models (671b): where the routed experts go: cpu keeps them in RAM so "
                   "the GPU or RPC workers hold every layer's attention and KV cache, gpu "
                   "leaves them with their layers, auto (default) picks what fits and runs "
                   "faster")

# Memory the planner leaves alone.
RAM_RESERVE_FRACTION = 0.08   # the OS, other programs, the page cache's working set
RAM_RESERVE_MIN = 1 * GiB
VRAM_RESERVE_FRACTION = 0.05  # fragmentation
VRAM_RESERVE_MIN = 400 * MiB  # the CUDA/ROCm context and cuBLAS workspace
GPU_COMPUTE_EXTRA = 64 * MiB  # per-GPU graph buffers beyond the activations

# An RPC worker (llama.cpp's RPC backend) running some of the layers: each keeps its own
# graph buffers, and the planner leaves it the same margin as the local side.
RPC_COMPUTE_EXTRA = 64 * MiB

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
    # MoE: where the routed experts are ("cpu": in RAM, "gpu": with their layer); "" for a
    # dense model. experts_in_ram: with "cpu", the blocks 0..n-1 whose experts are in RAM
    # (all of them, or fewer where the VRAM the rest leaves takes the last blocks' too).
    # cpu_tensors: the tensor-name patterns llama.cpp is told to keep in host RAM
    # (tensor_buft_overrides)
    experts_on: str = ""
    experts_in_ram: int = 0
    experts_bytes: int = 0
    vram_weights_bytes: int = 0
    cpu_tensors: tuple[str, ...] = ()
    # with RPC workers (plan_cluster): where each layer goes; ram_bytes is then this
    # machine's part only
    rpc: "RpcSplit | None" = None

    @property
    def fits(self) -> bool:
        return self.verdict != "no-fit"

    @property
    def layers_on_gpu(self) -> int:
        """Blocks on the GPU: llama.cpp's first offloaded "layer" is the output matrix."""
        return max(0, min(self.n_gpu_layers, self.n_layers + 1) - 1)

    @property
    def total_bytes(self) -> int:
        return self.ram_bytes + self.vram_bytes

    @property
    def reply_seconds(self) -> float:
        """The time of a typical reasoning reply (TYPICAL_REPLY_TOKENS) at the typical speed."""
        speed = self.tok_s_typical
        return TYPICAL_REPLY_TOKENS / speed if speed > 0 else float("inf")

    @property
    def answer_reserve(self) -> int:
        return answer_reserve(self.n_ctx)

    @property
    def placement(self) -> str:
        """The fit verdict in words, as every command shows it."""
        experts = ""
        if self.experts_on == "cpu" and self.n_gpu_layers:
            n = self.experts_in_ram
            experts = (", experts in RAM" if n >= self.n_layers else
                       f", experts of layer{'s 0-' + str(n - 1) if n > 1 else ' 0'} in RAM")
        if self.rpc is not None and self.fits:
            n = sum(1 for p in self.rpc.parts if p.n_blocks or p.output)
            return f"split over {n} device{'s' if n > 1 else ''}" + (
                ", experts here" if self.rpc.cpu_tensors else "")
        if self.verdict == "gpu":
            return "all on GPU" + experts
        if self.verdict == "partial":
            return f"{self.layers_on_gpu} of {self.n_layers} layers on GPU{experts}"
        return "CPU only" if self.verdict == "cpu" else "does not fit"

    @property
    def tok_s_typical(self) -> float:
        """The middle of the speed range (geometric): what the recommendation judges by,
        since the range's top needs a machine good at everything at once."""
        return (self.tok_s_low * self.tok_s_high) ** 0.5

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["fits"] = self.fits
        d["placement"] = self.placement
        d["answer_reserve"] = self.answer_reserve
        d["reply_seconds"] = round(self.reply_seconds, 1) if self.fits else None
        d["tok_s_low"] = round(self.tok_s_low, 2)
        d["tok_s_high"] = round(self.tok_s_high, 2)
        if self.rpc is not None:
            d["rpc"] = {"line": self.rpc.line(), "fits": self.rpc.fits,
                        "n_gpu_layers": self.rpc.n_gpu_layers,
                        "parts": [{k: getattr(p, k) for k in p.__dataclass_fields__}
                                  for p in self.rpc.parts]}
        return d


# ---------------------------------------------------------------------------
# The memory model

def pad_ctx(n_ctx: int) -> int:
    """The context llama.cpp really allocates for a request of ``n_ctx`` tokens."""
    return max(CTX_PAD, -(-n_ctx // CTX_PAD) * CTX_PAD)


def answer_reserve(n_ctx: int) -> int:
    """Tokens of ``n_ctx`` a reasoning reply keeps for its answer: the engine closes the
    reasoning (`</think>`) when only this much room is left."""
    share, low, high = ANSWER_RESERVE
    return max(low, min(high, int(n_ctx * share)))


def check_ctx(n_ctx: int | None, what: str = "a context") -> None:
    """The one minimum-context rule (flags, API fields and loads all use it)."""
    from r1local.errors import UsageError

    if n_ctx is not None and (not isinstance(n_ctx, int) or n_ctx < MIN_CTX):
        raise UsageError(f"{what} of {n_ctx} tokens is too small",
                         hint=f"use at least {MIN_CTX}; R1 reasons best with {USEFUL_CTX} or more")


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
    experts: int = 0  # routed experts kept in RAM for the GPU's blocks


def gpu_blocks(n_layers: int, n_gpu: int) -> int:
    """Blocks llama.cpp puts on its devices for n_gpu_layers = ``n_gpu``: the first one
    it offloads is the output matrix, then the blocks from the last one back."""
    return max(0, min(n_gpu, n_layers + 1) - 1)


def _split(shape: ModelShape, n_gpu: int, n_ctx: int, kv_type: str, flash: bool,
           n_gpus: int, unified: bool, experts_cpu: bool = False,
           kept_below: int | None = None) -> _Split:
    """Memory on each side for llama.cpp's n_gpu_layers = ``n_gpu``: the output matrix and
    the last n_gpu - 1 blocks on the GPU(s). ``experts_cpu``: those blocks' routed experts
    stay in RAM (only those of the blocks below ``kept_below``, when given)."""
    L = shape.n_layers
    g = max(0, min(n_gpu, L + 1))
    on_gpu = gpu_blocks(L, g)
    cpu_idx = range(0, L - on_gpu)
    gpu_idx = range(L - on_gpu, L)
    w_cpu = sum(shape.block_bytes[i] for i in cpu_idx)
    w_gpu = sum(shape.block_bytes[i] for i in gpu_idx)
    repack = sum(shape.block_repack[i] for i in cpu_idx)
    below = L if kept_below is None else kept_below
    kept = sum(shape.experts(i) for i in gpu_idx if i < below) if experts_cpu else 0
    w_gpu -= kept
    w_cpu += kept
    out_on_gpu = g > 0
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
    kv_gpu = kv_cache_bytes(shape, n_ctx, kv_type, flash, on_gpu)
    kv_cpu = kv_cache_bytes(shape, n_ctx, kv_type, flash, L - on_gpu)
    act = compute_bytes(shape, n_ctx, flash)
    if g > 0:
        # each GPU reserves a full micro-batch graph (logits included when the output is
        # there); the CPU keeps a small buffer for the layers it runs, a full one when it
        # runs every layer's experts
        c_gpu = n_gpus * (compute_bytes(shape, n_ctx, flash, with_logits=out_on_gpu)
                          + GPU_COMPUTE_EXTRA)
        c_cpu = act if on_gpu < L or kept else N_UBATCH * shape.n_embd * 4 * 2
    else:
        c_gpu, c_cpu = 0, act
    # the repacked copy replaces its mapped original, whose clean file pages stay resident
    # but are the first the kernel drops: they count in RSS, not in what the model needs
    ram = w_cpu + kv_cpu + c_cpu + overhead_bytes(shape)
    rss = ram + int(repack * REPACK_GROWTH)
    vram = w_gpu + kv_gpu + c_gpu
    return _Split(ram, vram, w_cpu, w_gpu, repack, kv_cpu, kv_gpu, c_cpu, c_gpu, rss, kept)


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
           flash: bool, experts_cpu: bool = False,
           kept_below: int | None = None) -> tuple[float, float]:
    """Decode tokens/s as a range: each token reads the active weights once, and the KV
    cache filled so far (none at the start, half the context on average later), plus a
    fixed cost per layer run (wholly or in part: its experts) on the CPU."""
    L = shape.n_layers
    on_gpu = gpu_blocks(L, n_gpu)
    out = shape.embd_bytes if shape.tied else shape.out_bytes
    out_gpu = n_gpu > 0
    # the experts a token reads in a GPU block whose experts stay in RAM
    below = L if kept_below is None else kept_below
    kept = [int(shape.experts(i) * shape.experts_used) if experts_cpu and i < below else 0
            for i in range(L)]
    cpu_w = (sum(shape.block_active[: L - on_gpu]) + sum(kept[L - on_gpu:])
             + (0 if out_gpu else out))
    gpu_w = (sum(shape.block_active[L - on_gpu:]) - sum(kept[L - on_gpu:])
             + (out if out_gpu else 0))
    kv_half_cpu = kv_cache_bytes(shape, n_ctx // 2, kv_type, flash, L - on_gpu)
    kv_half_gpu = kv_cache_bytes(shape, n_ctx // 2, kv_type, flash, on_gpu)
    cpu_bw = machine.ram_bandwidth
    gpu_bw = machine.gpu_bandwidth if machine.gpu_bandwidth[1] > 0 else cpu_bw

    def seconds(bw: tuple[float, float], eff: tuple[float, float], which: int,
                nbytes: int) -> float:
        rate = bw[which] * eff[which]
        return nbytes / rate if rate > 0 and nbytes > 0 else 0.0

    cpu_layers = L - on_gpu + sum(1 for k in kept[L - on_gpu:] if k)
    slow = (seconds(cpu_bw, CPU_EFFICIENCY, 0, cpu_w + kv_half_cpu)
            + seconds(gpu_bw, GPU_EFFICIENCY, 0, gpu_w + kv_half_gpu)
            + cpu_layers * CPU_LAYER_SECONDS[0])
    fast = (seconds(cpu_bw, CPU_EFFICIENCY, 1, cpu_w)
            + seconds(gpu_bw, GPU_EFFICIENCY, 1, gpu_w)
            + cpu_layers * CPU_LAYER_SECONDS[1])
    low = 1.0 / slow if slow > 0 else 0.0
    high = 1.0 / fast if fast > 0 else 0.0
    return round(low, 2), round(high, 2)


def plan_shape(shape: ModelShape, machine: "Machine", *, n_ctx: int | None = None,
               n_gpu_layers: int | None = None, kv_type: str = "f16",
               experts_on: str = "auto") -> Plan:
    """Plan one model file: context (given, or the longest useful that fits), layers on
    the GPU (given, or as many as fit), and the memory and speed that follow.

    ``experts_on`` (MoE only): "cpu" keeps the routed experts in RAM, "gpu" leaves them
    with their layers, "auto" takes whichever plan fits and decodes faster (the experts
    stay with their layers when the whole model fits on the GPU, or when there is none)."""
    from r1local.errors import UsageError

    kv_type = kv_type.lower()
    if kv_type not in KV_BYTES:
        raise UsageError(f"unknown KV cache type '{kv_type}' (use f16, q8_0 or q4_0)")
    if experts_on not in EXPERTS_ON:
        raise UsageError(f"unknown --experts-on '{experts_on}' (use {', '.join(EXPERTS_ON)})")
    check_ctx(n_ctx)
    def one(experts_cpu: bool, leftover: bool = False) -> Plan:
        return _plan_one(shape, machine, n_ctx, n_gpu_layers, kv_type, experts_cpu, leftover)

    if not shape.is_moe or experts_on != "auto":
        return one(shape.is_moe and experts_on == "cpu")
    along = one(False)
    if along.fits and (along.verdict == "gpu" or not machine.usable_gpus):
        return along
    kept = one(True, leftover=True)
    if kept.fits and (not along.fits or kept.tok_s_typical > along.tok_s_typical):
        return kept
    return along


def _plan_one(shape: ModelShape, machine: "Machine", n_ctx: int | None,
              n_gpu_layers: int | None, kv_type: str, experts_cpu: bool,
              leftover: bool = False) -> Plan:
    """plan_shape with the experts' place decided. ``leftover`` (with ``experts_cpu``):
    when every block's rest is on the GPU and VRAM is left, the last blocks' experts go
    there too, as many as it takes (llama.cpp's --n-cpu-moe N, N chosen)."""
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
                s = _split(shape, g, ctx, kv_type, flash, n_gpus, unified, experts_cpu)
                if s.vram <= vram_b:
                    return g, s
            g = 0
        return g, _split(shape, g, ctx, kv_type, flash, n_gpus, unified, experts_cpu)

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
    moe = {}
    if shape.is_moe:
        moe = {"experts_on": "cpu" if experts_cpu else "gpu",
               "experts_bytes": sum(shape.block_experts),
               "experts_in_ram": L if experts_cpu else 0,
               "cpu_tensors": (EXPERT_TENSORS,) if experts_cpu else ()}
    below = None  # the blocks whose experts stay in RAM: all of them, unless VRAM is left
    if chosen is not None and experts_cpu and leftover and chosen[1] > L:
        ctx_, g_, _ = chosen
        for n in range(0, L):  # the fewest blocks kept in RAM that still fit
            trial = _split(shape, g_, ctx_, kv_type, flash, n_gpus, unified, True, n)
            if _fits(trial, ram_b, vram_b, unified):
                if any(shape.experts(i) for i in range(n, L)):
                    chosen, below = (ctx_, g_, trial), n
                    moe.update(experts_in_ram=n, experts_on="cpu" if n else "gpu",
                               cpu_tensors=(experts_of_blocks(range(n)),) if n else ())
                break
    if chosen is None:
        s = _split(shape, 0 if not machine.usable_gpus else (
            n_gpu_layers if n_gpu_layers is not None else L + 1), ctx, kv_type, flash, n_gpus,
            unified, experts_cpu)
        need = s.ram + s.vram
        reason = (f"needs {fmt_bytes(need)} at context {ctx}, more than the "
                  f"{fmt_bytes(ram_b)} RAM" + (f" + {fmt_bytes(vram_b)} VRAM" if vram_b and not unified
                                            else "") + " it may use")
        if n_gpu_layers is not None and s.vram > vram_b:
            reason = (f"{n_gpu_layers} layers need {fmt_bytes(s.vram)} of VRAM, more than the "
                      f"{fmt_bytes(vram_b)} it may use")
        return Plan(
            model=shape.model, quant=shape.quant, arch=shape.arch, n_layers=L,
            n_gpu_layers=gpu_layers(ctx)[0], n_ctx=ctx, n_threads=n_threads, n_batch=N_BATCH,
            n_ubatch=N_UBATCH, flash_attn=flash, kv_type=kv_type, use_mmap=True,
            weights_bytes=shape.weights_bytes, kv_bytes=s.kv_ram + s.kv_vram,
            compute_bytes=s.compute_ram + s.compute_vram, overhead_bytes=overhead_bytes(shape),
            ram_bytes=s.ram, vram_bytes=s.vram, verdict="no-fit", tok_s_low=0.0,
            tok_s_high=0.0, reason=reason, repack_bytes=s.repack, rss_bytes=s.rss, ram_budget=ram_b,
            vram_budget=vram_b, **moe)

    ctx, g, s = chosen
    if g == 0:
        verdict = "cpu"
        why = "no usable GPU" if not machine.usable_gpus else "no layer fits in VRAM"
        reason = f"CPU only ({why}); {fmt_bytes(s.ram)} of {fmt_bytes(ram_b)} RAM"
    elif g > L:
        verdict = "gpu"
        reason = f"all {L} layers on GPU; {fmt_bytes(s.vram)} of {fmt_bytes(vram_b)} VRAM"
    else:
        verdict = "partial"
        rest = "the routed experts and the rest" if experts_cpu else "the rest"
        reason = (f"{gpu_blocks(L, g)} of {L} layers on GPU ({fmt_bytes(s.vram)} of "
                  f"{fmt_bytes(vram_b)} VRAM), {rest} in RAM ({fmt_bytes(s.ram)})")
    if verdict == "gpu" and s.experts:
        which = "their" if below is None else (
            "layer 0's" if below == 1 else f"layers 0-{below - 1}'s")
        reason = (f"all {L} layers on GPU but {which} routed experts; {fmt_bytes(s.vram)} of "
                  f"{fmt_bytes(vram_b)} VRAM, {fmt_bytes(s.ram)} RAM")
    low, high = _speed(shape, machine, g, ctx, kv_type, flash, experts_cpu, below)
    return Plan(
        model=shape.model, quant=shape.quant, arch=shape.arch, n_layers=L, n_gpu_layers=g,
        n_ctx=ctx, n_threads=n_threads, n_batch=N_BATCH, n_ubatch=N_UBATCH, flash_attn=flash,
        kv_type=kv_type, use_mmap=True, weights_bytes=shape.weights_bytes,
        kv_bytes=s.kv_ram + s.kv_vram, compute_bytes=s.compute_ram + s.compute_vram,
        overhead_bytes=overhead_bytes(shape), ram_bytes=s.ram, vram_bytes=s.vram,
        verdict=verdict, tok_s_low=low, tok_s_high=high, reason=reason, repack_bytes=s.repack,
        rss_bytes=s.rss, ram_budget=ram_b, vram_budget=vram_b, vram_weights_bytes=s.weights_vram,
        **moe)


# ---------------------------------------------------------------------------
# The public entry points

def plan_variant(variant: "Variant", quant: str, machine: "Machine", *,
                 n_ctx: int | None = None, n_gpu_layers: int | None = None,
                 kv_type: str = "f16", experts_on: str = "auto") -> Plan:
    return plan_shape(shape_from_variant(variant, quant), machine, n_ctx=n_ctx,
                      n_gpu_layers=n_gpu_layers, kv_type=kv_type, experts_on=experts_on)


def plan_gguf(header: "GGUFHeader", machine: "Machine", *, n_ctx: int | None = None,
              n_gpu_layers: int | None = None, kv_type: str = "f16",
              experts_on: str = "auto") -> Plan:
    return plan_shape(shape_from_gguf(header), machine, n_ctx=n_ctx,
                      n_gpu_layers=n_gpu_layers, kv_type=kv_type, experts_on=experts_on)


# ---------------------------------------------------------------------------
# Layers over RPC workers

def worker_offer(free: int, total: int, *, gpu: bool) -> int:
    """What `r1local worker` offers by default: the device's free memory less the margin
    the planner leaves on a machine of its own (RAM or VRAM)."""
    if gpu:
        reserve = max(VRAM_RESERVE_MIN, int(total * VRAM_RESERVE_FRACTION))
    else:
        reserve = max(RAM_RESERVE_MIN, int(total * RAM_RESERVE_FRACTION))
    return max(0, free - reserve)


@dataclass(frozen=True)
class Part:
    """One place of a split model: the blocks first..last (inclusive; none when last <
    first) and whether the output matrix is there too."""

    where: str  # "local CPU", "local GPU" or a worker's host:port
    first: int
    last: int
    output: bool
    bytes: int
    budget: int
    compute: int = 0  # of bytes, the compute buffers reserved (a CPU touches only a batch's)

    @property
    def n_blocks(self) -> int:
        return max(0, self.last - self.first + 1)

    def describe(self) -> str:
        if self.n_blocks == 0:
            span = "output" if self.output else "no layers"
        else:
            span = f"layer {self.first}" if self.n_blocks == 1 else f"layers {self.first}-{self.last}"
            span += " + output" if self.output else ""
        where = self.where if self.where.startswith("local") else f"on {self.where}"
        size = ""
        if not self.where.startswith("local"):  # what it holds, then what it keeps free to compute in
            size = f" ({fmt_bytes(self.bytes - self.compute)}" + (
                f" + {fmt_bytes(self.compute)} compute)" if self.compute else ")")
        return f"{span} {where}{size}"


@dataclass(frozen=True)
class RpcSplit:
    """Where each layer goes with RPC workers, and what llama.cpp is told for it."""

    parts: tuple[Part, ...]  # in layer order: local CPU, the workers, the local GPU
    n_gpu_layers: int        # llama.cpp's count: offloaded blocks, plus 1 for the output
    tensor_split: tuple[float, ...]  # per llama.cpp device: the workers, then local GPUs
    fits: bool
    reason: str
    cpu_tensors: tuple[str, ...] = ()  # kept in this machine's RAM (the routed experts)

    def line(self) -> str:
        line = ", ".join(p.describe() for p in self.parts if p.n_blocks or p.output)
        return line + (", routed experts local CPU" if self.cpu_tensors else "")


def _device_bytes(shape: ModelShape, i: int, experts_local: bool) -> int:
    """Block ``i``'s weights on the device that runs it."""
    return shape.block_bytes[i] - (shape.experts(i) if experts_local else 0)


def _worker_bytes(shape: ModelShape, blocks: range, output: bool, n_ctx: int, kv_type: str,
                  flash: bool, experts_local: bool = False) -> int:
    w = sum(_device_bytes(shape, i, experts_local) for i in blocks)
    if output:
        w += shape.embd_bytes if shape.tied else shape.out_bytes
    kv = kv_cache_bytes(shape, n_ctx, kv_type, flash, len(blocks))
    return w + kv + _worker_compute(shape, len(blocks), output, n_ctx, flash)


def _worker_compute(shape: ModelShape, n_blocks: int, output: bool, n_ctx: int, flash: bool) -> int:
    """The compute buffers a worker reserves for its part (none for no part)."""
    if not n_blocks and not output:
        return 0
    return compute_bytes(shape, n_ctx, flash, with_logits=output) + RPC_COMPUTE_EXTRA


def _proportional(cpu_blocks: int, budgets: list[int]) -> list[int]:
    """Blocks in proportion to the budgets, every worker at least one while blocks last."""
    total = sum(budgets) or 1
    counts = [int(cpu_blocks * b / total) for b in budgets]
    for j in range(1, len(counts)):
        if counts[j] == 0 and budgets[j] > 0:
            counts[j] = 1
    while sum(counts) > cpu_blocks:  # take the surplus from the largest share
        counts[counts.index(max(counts))] -= 1
    while sum(counts) < cpu_blocks:  # and give what rounding left to the largest budget
        counts[budgets.index(max(budgets))] += 1
    return counts


def _rebalanced(counts: list[int], budgets: list[int], need) -> list[int]:
    """The proportional split, repaired where a device's fixed costs (its buffers, the output
    matrix on the last one) leave it over its budget: a boundary block at a time moves to
    the neighbour with the most room to spare, while that takes it."""
    counts = list(counts)

    def used() -> list[int]:
        starts = [sum(counts[:j]) for j in range(len(counts))]
        return [need(j, starts[j], counts[j]) for j in range(len(counts))]

    for _ in range(sum(counts)):
        u = used()
        over = [u[j] - budgets[j] for j in range(len(counts))]
        j = max(range(len(counts)), key=lambda k: over[k])
        if over[j] <= 0 or counts[j] == 0:
            break
        best = None
        for k in (j - 1, j + 1):
            if 0 <= k < len(counts):
                trial = list(counts)
                trial[j] -= 1
                trial[k] += 1
                start = sum(trial[:k])
                slack = budgets[k] - need(k, start, trial[k])
                if slack >= 0 and (best is None or slack > best[0]):
                    best = (slack, trial)
        if best is None:
            break
        counts = best[1]
    return counts


def _filled(shape: ModelShape, plan: Plan, cpu_blocks: int, offers: list[int],
            output_last: bool) -> list[int]:
    """Each worker as full as its offer allows, from the last blocks back (the last worker
    first, with the output), as a GPU is filled; the local CPU keeps what is left."""
    counts = [0] * (len(offers) + 1)
    end = cpu_blocks
    for j in range(len(offers), 0, -1):
        output = output_last and j == len(offers)
        n = 0
        while n < end and _worker_bytes(shape, range(end - n - 1, end), output, plan.n_ctx,
                                        plan.kv_type, plan.flash_attn, True) <= offers[j - 1]:
            n += 1
        counts[j] = n
        end -= n
    counts[0] = end
    return counts


def plan_rpc(shape: ModelShape, plan: Plan, workers: "list[tuple[str, int]]",
             local_gpus: int = 0, experts_on: str = "auto") -> RpcSplit:
    """Spread the blocks the local plan keeps on the CPU over the local CPU and the
    ``workers`` ((host:port, bytes offered) each), in proportion to the memory each has for
    them. llama.cpp keeps the first layers on the CPU and gives the rest, with the output
    matrix, to its devices in order: the RPC workers first, then local GPUs (``local_gpus``:
    how many llama.cpp lists), which keep the plan's GPU layers and get the output.

    A MoE model's routed experts may stay here instead (``experts_on`` "cpu", or "auto"
    when the split with them does not fit): the workers then take only the rest of each
    block and are filled as a GPU is, since this machine runs every layer's experts anyway."""
    if shape.is_moe and (experts_on == "cpu" or experts_on == "auto" and plan.experts_on == "cpu"):
        return _plan_rpc(shape, plan, workers, local_gpus, True)
    split = _plan_rpc(shape, plan, workers, local_gpus, False)
    if split.fits or not shape.is_moe or experts_on == "gpu":
        return split
    kept = _plan_rpc(shape, plan, workers, local_gpus, True)
    return kept if kept.fits else split


def _plan_rpc(shape: ModelShape, plan: Plan, workers: "list[tuple[str, int]]",
              local_gpus: int, experts_local: bool) -> RpcSplit:
    L = shape.n_layers
    if plan.n_gpu_layers <= 0:
        local_gpus = 0  # the GPU holds nothing of this plan, not even the output
    on_gpu = gpu_blocks(L, plan.n_gpu_layers) if local_gpus else 0
    cpu_blocks = L - on_gpu
    experts = sum(shape.experts(i) for i in range(L)) if experts_local else 0
    # the local CPU's room for blocks: its budget less what stays there whatever the split
    # (the input embedding, the overhead, a micro-batch's buffers, experts kept here)
    fixed = (shape.embd_bytes + overhead_bytes(shape) + experts
             + compute_bytes(shape, plan.n_ctx, plan.flash_attn))
    local_room = max(0, plan.ram_budget - fixed)
    kv_one = kv_cache_bytes(shape, plan.n_ctx, plan.kv_type, plan.flash_attn, 1)
    offers = [max(0, b) for _, b in workers]

    def need(j: int, first: int, n: int) -> int:
        """What device j (0: this machine) needs for blocks first..first+n-1."""
        blocks = range(first, first + n)
        if j == 0:
            return sum(_device_bytes(shape, i, experts_local) for i in blocks) + n * kv_one + fixed
        return _worker_bytes(shape, blocks, j == len(offers) and not local_gpus, plan.n_ctx,
                             plan.kv_type, plan.flash_attn, experts_local)

    if experts_local:
        counts = _filled(shape, plan, cpu_blocks, offers, not local_gpus)
    else:
        counts = _rebalanced(_proportional(cpu_blocks, [local_room] + offers),
                             [plan.ram_budget] + offers, need)
    parts: list[Part] = []
    start = 0
    fits, reason = True, ""
    for j, n in enumerate(counts):
        blocks = range(start, start + n)
        if j == 0:
            used = need(0, start, n)
            parts.append(Part("local CPU", start, start + n - 1, False, used, plan.ram_budget))
            if used > plan.ram_budget:
                fits, reason = False, (f"the {n} layers kept here need {fmt_bytes(used)}, more "
                                       f"than the {fmt_bytes(plan.ram_budget)} RAM it may use")
        else:
            name, offer = workers[j - 1]
            output = j == len(counts) - 1 and not local_gpus
            used = _worker_bytes(shape, blocks, output, plan.n_ctx, plan.kv_type,
                                 plan.flash_attn, experts_local)
            parts.append(Part(name, start, start + n - 1, output, used, offer,
                              _worker_compute(shape, n, output, plan.n_ctx, plan.flash_attn)))
            if used > offer and fits:
                fits, reason = False, (f"RPC worker {name} offers {fmt_bytes(offer)}, its "
                                       f"{n} layers need {fmt_bytes(used)}")
        start += n
    # what llama.cpp is told: it offloads the last n_gpu_layers of blocks + output (index L)
    device_counts = [float(c) for c in counts[1:]]
    if local_gpus:
        parts.append(Part("local GPU", start, L - 1, True, plan.vram_bytes, plan.vram_budget))
        per_gpu = [(on_gpu + 1) / local_gpus] * local_gpus
        device_counts = device_counts + per_gpu
    else:
        device_counts[-1] += 1  # the output matrix goes with the last worker
    offloaded = L + 1 - counts[0]
    # a layer il goes to the first device whose cumulative share exceeds (il - first) /
    # offloaded: each boundary goes half a layer early, so float rounding moves no layer
    shares, cum, placed = [], 0.0, 0.0
    for k, c in enumerate(device_counts):
        cum += c
        edge = float(offloaded) if k == len(device_counts) - 1 else cum - 0.5
        share = max(0.0, edge - placed)
        shares.append(share)
        placed += share
    if not reason:
        reason = "split over " + ", ".join(w for w, _ in workers) + " and this machine"
        if experts_local:
            reason += ", the routed experts here"
    return RpcSplit(tuple(parts), offloaded, tuple(shares), fits, reason,
                    (EXPERT_TENSORS,) if experts_local else ())


def plan_cluster(shape: ModelShape, machine: "Machine", workers: "list[tuple[str, int]]", *,
                 n_ctx: int | None = None, n_gpu_layers: int | None = None,
                 kv_type: str = "f16", experts_on: str = "auto",
                 local_gpus: int | None = None) -> Plan:
    """One model on this machine and its RPC workers ((host:port, bytes offered) each), as
    `hw --rpc` and `show --rpc` show it: the context and the GPU layers are planned for the
    memory of all of them, then plan_rpc says where each layer goes and whether every
    device holds its part. The speed is the one machine's (each worker assumed to read its
    layers as fast as this CPU; the network is not counted). ``local_gpus``: the GPUs
    llama.cpp lists here (default: the machine's usable ones)."""
    from dataclasses import replace

    offered = sum(max(0, b) for _, b in workers)
    merged = replace(machine, ram_total=machine.ram_total + offered,
                     ram_available=machine.ram_available + offered)
    gpus = len(machine.usable_gpus) if local_gpus is None else local_gpus

    def at(ctx: int | None) -> tuple[Plan, Plan, RpcSplit]:
        whole = plan_shape(shape, merged, n_ctx=ctx, n_gpu_layers=n_gpu_layers, kv_type=kv_type,
                           experts_on=experts_on)
        here = replace(whole, ram_budget=ram_budget(machine))
        return whole, here, plan_rpc(shape, here, workers, gpus, experts_on)

    whole, here, split = at(n_ctx)
    # the memory of all the devices together may take a context that one of them cannot
    # hold its share of: then the longest shorter one that splits
    for c in sorted((c for c in CTX_STEPS if c < whole.n_ctx), reverse=True):
        if split.fits or n_ctx is not None:
            break
        trial = at(c)
        if trial[2].fits:
            whole, here, split = trial
    fits = whole.fits and split.fits
    kept = bool(split.cpu_tensors)
    return replace(
        here, rpc=split, verdict=whole.verdict if fits else "no-fit",
        ram_bytes=split.parts[0].bytes,
        reason=split.line() if fits else split.reason if not split.fits else whole.reason,
        tok_s_low=whole.tok_s_low if fits else 0.0, tok_s_high=whole.tok_s_high if fits else 0.0,
        experts_on="cpu" if kept else whole.experts_on, cpu_tensors=split.cpu_tensors,
        experts_in_ram=shape.n_layers if kept else whole.experts_in_ram)
