"""The planner over a table of hypothetical machines, and on real GGUF headers."""

from __future__ import annotations

import pytest

import model_fixtures
from r1local.catalog import load_catalog
from r1local.errors import UsageError
from r1local.ggufinfo import read_header
from r1local.hardware import hypothetical
from r1local.units import parse_size
from r1local.planner import USEFUL_CTX, plan_gguf, plan_variant, ram_budget, vram_budget
from r1local.quant_choice import acceptable, choose_quant, recommend
from r1local.shapes import arch_params

G = parse_size("1G")

MACHINES = {
    "8 GB laptop": hypothetical(8 * G, cores=4),
    "16 GB + 8 GB GPU": hypothetical(16 * G, 8 * G, cores=8),
    "32 GB + 24 GB GPU": hypothetical(32 * G, 24 * G, cores=12),
    "64 GB Apple Silicon": hypothetical(64 * G, cores=12, unified=True),
    "128 GB + 2x24 GB": hypothetical(128 * G, [24 * G, 24 * G], cores=16),
    "512 GB server": hypothetical(512 * G, cores=64),
}


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def _within(plan, machine) -> None:
    """The plan uses no more memory than the machine has, on either side."""
    assert plan.ram_bytes <= ram_budget(machine) <= machine.ram_total
    assert plan.vram_bytes <= vram_budget(machine) <= machine.vram_total
    if machine.unified:  # one pool: GPU and CPU parts together
        assert plan.ram_bytes + plan.vram_bytes <= machine.ram_total


def test_catalog_numbers_give_each_models_published_size(catalog):
    for v in catalog:
        assert arch_params(v.arch) / 1e9 == pytest.approx(v.params_b, rel=0.01), v.tag


@pytest.mark.parametrize("name", list(MACHINES))
def test_pick_fits_and_the_next_larger_variant_does_not(catalog, name):
    machine = MACHINES[name]
    rec = recommend(catalog, machine, min_tok_s=0)
    assert rec.fits, rec.reason
    _within(rec, machine)
    assert rec.n_ctx >= USEFUL_CTX
    variants = sorted(catalog, key=lambda v: v.params_b)
    picked = next(i for i, v in enumerate(variants) if v.tag == rec.model)
    for larger in variants[picked + 1:]:
        best = choose_quant(larger, machine)
        assert not (best.fits and acceptable(larger, best.quant) and best.n_ctx >= USEFUL_CTX), \
            f"{larger.tag}:{best.quant} would also have fit on the {name}"


def test_expected_picks_on_the_table(catalog):
    picks = {name: recommend(catalog, m, min_tok_s=0) for name, m in MACHINES.items()}
    assert picks["8 GB laptop"].model in ("8b", "8b-llama", "7b")
    assert picks["16 GB + 8 GB GPU"].model in ("14b", "32b")
    assert picks["32 GB + 24 GB GPU"].model in ("32b", "70b")
    assert picks["512 GB server"].model == "671b"
    assert picks["512 GB server"].quant == "Q4_K_M"
    # more memory never means a smaller model
    order = [v.tag for v in sorted(catalog, key=lambda v: v.params_b)]
    sizes = [order.index(picks[n].model) for n in
             ("8 GB laptop", "16 GB + 8 GB GPU", "32 GB + 24 GB GPU", "512 GB server")]
    assert sizes == sorted(sizes)


def test_gpu_layers_fill_the_vram_budget_and_no_more(catalog):
    v = catalog.resolve("32b").variant
    small = hypothetical(64 * G, 8 * G)
    p = plan_variant(v, "Q4_K_M", small, n_ctx=8192)
    assert p.verdict == "partial" and 0 < p.n_gpu_layers < p.n_layers
    _within(p, small)
    one_more = plan_variant(v, "Q4_K_M", small, n_ctx=8192, n_gpu_layers=p.n_gpu_layers + 1)
    assert not one_more.fits  # the planner took every layer that fits
    big = plan_variant(v, "Q4_K_M", hypothetical(64 * G, 48 * G), n_ctx=8192)
    assert big.verdict == "gpu" and big.n_gpu_layers == big.n_layers + 1
    assert big.tok_s_low > p.tok_s_high  # all on GPU decodes faster than a partial offload


def test_a_plan_that_does_not_fit_still_fills_the_gpu_for_force(catalog):
    """70B Q4_K_M on 16 GB + 8 GB does not fit; `run --force` loads what the plan says, so
    the plan keeps as many layers on the GPU as its VRAM takes (not zero)."""
    v = catalog.resolve("70b").variant
    m = hypothetical(16 * G, 8 * G)
    p = plan_variant(v, "Q4_K_M", m, n_ctx=8192)
    assert not p.fits and 0 < p.n_gpu_layers < p.n_layers
    at = plan_variant(v, "Q4_K_M", hypothetical(256 * G, 8 * G), n_ctx=8192)
    assert at.fits and at.n_gpu_layers == p.n_gpu_layers  # the most that the 8 GB take
    cpu_only = plan_variant(v, "Q4_K_M", hypothetical(16 * G), n_ctx=8192)
    assert not cpu_only.fits and cpu_only.n_gpu_layers == 0


def test_a_quant_too_slow_to_use_gives_way_to_a_smaller_one_of_the_same_variant(catalog):
    """24 GB, 2 cores: 14b fits at Q8_0 but would crawl; rather than drop to 8b, take the
    best 14b quant that decodes at MIN_TOK_S (middle of its range), and say why."""
    from r1local.quant_choice import MIN_TOK_S

    m = hypothetical(24 * G, cores=2)
    rec = recommend(catalog, m)
    best = choose_quant(catalog.resolve(rec.model).variant, m)
    assert rec.model == "14b" and best.quant == "Q8_0"
    assert best.tok_s_typical < MIN_TOK_S <= rec.tok_s_typical
    assert rec.quant != best.quant and f"{best.quant} would fit too" in rec.reason
    _within(rec, m)


def test_two_gpus_hold_what_one_cannot(catalog):
    v = catalog.resolve("70b").variant
    one = plan_variant(v, "Q4_K_M", hypothetical(128 * G, 24 * G), n_ctx=8192)
    two = plan_variant(v, "Q4_K_M", hypothetical(128 * G, [24 * G, 24 * G]), n_ctx=8192)
    assert one.n_gpu_layers < two.n_gpu_layers


def test_kv_cache_types_and_context_scale_memory(catalog):
    v = catalog.resolve("7b").variant
    m = hypothetical(64 * G)
    f16 = plan_variant(v, "Q4_K_M", m, n_ctx=16384)
    q8 = plan_variant(v, "Q4_K_M", m, n_ctx=16384, kv_type="q8_0")
    q4 = plan_variant(v, "Q4_K_M", m, n_ctx=16384, kv_type="q4_0")
    assert f16.kv_bytes > q8.kv_bytes > q4.kv_bytes
    # 28 layers x 4 KV heads x 128 x (K+V) x 2 bytes per token
    assert f16.kv_bytes == 16384 * 28 * 4 * 128 * 2 * 2
    half = plan_variant(v, "Q4_K_M", m, n_ctx=8192)
    assert half.kv_bytes * 2 == f16.kv_bytes


def test_moe_speed_counts_active_experts_only(catalog):
    v = catalog.resolve("671b").variant
    m = hypothetical(512 * G, cores=64)
    p = plan_variant(v, "Q4_K_M", m)
    dense_equiv = p.weights_bytes / (m.ram_bandwidth[1] * 0.85)
    assert p.tok_s_high > 5 / dense_equiv  # far faster than reading all 671B per token
    # MLA: the KV cache per token is the compressed latent, not 128 heads of K and V
    assert p.kv_bytes < p.n_ctx * 61 * 2 * 128 * 128 * 2 / 10


def test_too_small_machine_says_what_it_needs(catalog):
    rec = recommend(catalog, hypothetical(1 * G))
    assert not rec.fits
    assert "nothing fits" in rec.reason


def test_bad_kv_type_is_a_usage_error(catalog):
    with pytest.raises(UsageError, match="KV cache type"):
        plan_variant(catalog.resolve("7b").variant, "Q4_K_M", hypothetical(16 * G), kv_type="q5")


def test_plan_gguf_uses_real_tensor_sizes(smollm2, r1_header):
    m = hypothetical(16 * G)
    h = read_header(smollm2, max_array=0)
    p = plan_gguf(h, m, n_ctx=2048)
    assert p.arch == "llama" and p.n_layers == h.arch_value("block_count")
    assert p.weights_bytes == h.tensor_bytes
    assert p.quant == "Q4_1"
    # the real (truncated) 7B R1 file: its tensor table gives the published Q4_K_M size
    real = plan_gguf(r1_header, m)
    assert real.n_layers == 28 and real.arch == "qwen2"
    assert real.weights_bytes == r1_header.tensor_bytes
    assert 4.4e9 < real.weights_bytes < 4.7e9
    assert real.repack_bytes > 0  # Q4_K tensors are repacked by the CPU backend
    assert real.n_ctx >= USEFUL_CTX


def test_plan_gguf_agrees_with_catalog_estimate(r1_header, catalog):
    m = hypothetical(32 * G)
    from_file = plan_gguf(r1_header, m, n_ctx=8192)
    from_catalog = plan_variant(catalog.resolve("7b").variant, "Q4_K_M", m, n_ctx=8192)
    assert from_file.kv_bytes == from_catalog.kv_bytes
    assert from_file.ram_bytes == pytest.approx(from_catalog.ram_bytes, rel=0.05)


def test_plan_gguf_on_quantized_standin(r1_standin):
    q8 = model_fixtures.quantized_copy(r1_standin, "Q8_0")
    h = read_header(q8, max_array=0)
    p = plan_gguf(h, hypothetical(8 * G), n_ctx=4096)
    assert p.quant == "Q8_0" and p.weights_bytes == h.tensor_bytes
    assert p.n_ctx == 4096 and p.verdict == "cpu"


# ---- llama.cpp's n_gpu_layers rule ----------------------------------------------------------

def test_n_gpu_layers_counts_the_output_first(catalog):
    """llama.cpp offloads the output matrix first, then blocks from the last one back:
    n_gpu_layers = g puts the output and g - 1 blocks on the GPU (tests/test_moe_placement.py
    checks this against a real load)."""
    v = catalog.resolve("7b").variant
    m = hypothetical(64 * G, 24 * G)
    only_out = plan_variant(v, "Q4_K_M", m, n_ctx=4096, n_gpu_layers=1)
    assert only_out.layers_on_gpu == 0 and only_out.verdict == "partial"
    assert only_out.placement == "0 of 28 layers on GPU"
    out = only_out.vram_weights_bytes
    assert out > 0  # 7b's untied output matrix
    five = plan_variant(v, "Q4_K_M", m, n_ctx=4096, n_gpu_layers=5)
    assert five.layers_on_gpu == 4 and five.placement == "4 of 28 layers on GPU"
    block = (five.vram_weights_bytes - out) / 4
    assert block == pytest.approx(v.quants["Q4_K_M"].total_size / 29, rel=0.2)  # about a block
    whole = plan_variant(v, "Q4_K_M", m, n_ctx=4096, n_gpu_layers=29)
    assert whole.verdict == "gpu" and whole.layers_on_gpu == 28


# ---- MoE: the routed experts in RAM ---------------------------------------------------------

BIG_MOE_BOX = hypothetical(192 * G, 24 * G, cores=16)  # a typical 24 GB GPU, 192 GB RAM


def test_671b_on_24_gb_keeps_the_experts_in_ram_and_every_layer_on_the_gpu(catalog):
    from r1local.shapes import shape_from_variant

    v = catalog.resolve("671b").variant
    kept = plan_variant(v, "UD-IQ1_S", BIG_MOE_BOX, experts_on="cpu")
    assert kept.fits and kept.experts_on == "cpu" and kept.cpu_tensors
    assert kept.verdict == "gpu" and kept.layers_on_gpu == 61 and kept.n_ctx >= USEFUL_CTX
    _within(kept, BIG_MOE_BOX)
    shape = shape_from_variant(v, "UD-IQ1_S")
    experts = sum(shape.block_experts)
    assert kept.experts_bytes == experts and kept.experts_in_ram == 61
    # the GPU holds everything but the routed experts and the input embedding
    assert kept.vram_weights_bytes == shape.weights_bytes - experts - shape.embd_bytes
    assert kept.ram_bytes > experts
    along = plan_variant(v, "UD-IQ1_S", BIG_MOE_BOX, experts_on="gpu")
    assert along.experts_on == "gpu" and not along.cpu_tensors
    assert along.verdict == "partial" and along.layers_on_gpu < 15
    assert kept.tok_s_low > along.tok_s_low and kept.tok_s_high > along.tok_s_high
    # the planner's pick: the same, but the VRAM left takes the last few layers' experts
    auto = plan_variant(v, "UD-IQ1_S", BIG_MOE_BOX)
    assert auto.layers_on_gpu == 61 and auto.n_ctx == kept.n_ctx
    assert 50 < auto.experts_in_ram < 61 and auto.tok_s_high > kept.tok_s_high
    _within(auto, BIG_MOE_BOX)


def test_experts_stay_with_their_layers_when_the_whole_model_fits_the_gpus(catalog):
    v = catalog.resolve("671b").variant
    eight = hypothetical(512 * G, [80 * G] * 8, cores=64)
    p = plan_variant(v, "UD-IQ1_S", eight)
    assert p.verdict == "gpu" and p.experts_on == "gpu" and not p.cpu_tensors
    cpu_only = plan_variant(v, "UD-IQ1_S", hypothetical(512 * G, cores=64))
    assert cpu_only.verdict == "cpu" and not cpu_only.cpu_tensors


def test_experts_on_means_nothing_for_a_dense_model(catalog):
    v = catalog.resolve("32b").variant
    m = hypothetical(64 * G, 12 * G)
    plans = {e: plan_variant(v, "Q4_K_M", m, experts_on=e) for e in ("auto", "cpu", "gpu")}
    assert plans["auto"] == plans["cpu"] == plans["gpu"]
    assert plans["auto"].experts_on == "" and plans["auto"].cpu_tensors == ()
    with pytest.raises(UsageError, match="--experts-on"):
        plan_variant(v, "Q4_K_M", m, experts_on="disk")


def test_mla_cache_is_one_latent_row_per_token_and_layer(catalog):
    """deepseek2 in this llama.cpp caches K only: kv_lora_rank + the rope part (576)."""
    v = catalog.resolve("671b").variant
    p = plan_variant(v, "UD-IQ1_S", BIG_MOE_BOX, n_ctx=8192)
    assert p.kv_bytes == 8192 * 61 * (512 + 64) * 2


def test_a_dynamic_moe_quant_keeps_its_dense_part_at_more_bits(catalog):
    """unsloth's UD- quants leave attention, shared experts and dense layers at 4-6 bits:
    the experts get what the published size leaves (1.58-bit: about 1.6 bits)."""
    from r1local.shapes import DENSE_PART_BPW, _routed_params, arch_params, shape_from_variant

    v = catalog.resolve("671b").variant
    s = shape_from_variant(v, "UD-IQ1_S")
    routed = _routed_params(v.arch) * (v.arch.n_layers - v.arch.n_dense_layers)
    expert_bpw = sum(s.block_experts) * 8 / routed
    assert 1.4 < expert_bpw < 1.8
    dense = s.weights_bytes - sum(s.block_experts)
    assert dense * 8 / (arch_params(v.arch) - routed) == pytest.approx(DENSE_PART_BPW, rel=0.01)
    flat = shape_from_variant(v, "Q4_K_M")  # llama.cpp's own mix: one rate for all
    assert sum(flat.block_experts) / flat.weights_bytes == pytest.approx(routed / arch_params(v.arch),
                                                                         rel=0.01)


def test_plan_rpc_moves_blocks_off_a_worker_its_fixed_costs_overfill(catalog):
    """Blocks go out by memory, but the last worker also holds the output matrix and its
    buffers: the split moves boundary blocks to a neighbour with room rather than fail."""
    from r1local.planner import plan_rpc
    from r1local.shapes import shape_from_variant

    shape = shape_from_variant(catalog.resolve("7b").variant, "Q4_K_M")
    plan = plan_variant(catalog.resolve("7b").variant, "Q4_K_M", hypothetical(6 * G), n_ctx=8192)
    split = plan_rpc(shape, plan, [("w:1", 1 * G)])
    assert split.fits, split.reason
    assert all(p.bytes <= p.budget for p in split.parts)
    assert split.parts[1].output and split.parts[1].n_blocks >= 1


def test_vram_left_over_takes_the_last_layers_experts(catalog):
    """An 80 GB GPU holds every layer's rest with room to spare: the experts of the last
    layers go there too (llama.cpp's --n-cpu-moe N, N the fewest that fit), the rest stay
    in RAM, and the pattern llama.cpp is given names exactly layers 0..N-1's experts."""
    import re

    from r1local.planner import _fits, _split, ram_budget as rb, vram_budget as vb
    from r1local.shapes import shape_from_variant

    v = catalog.resolve("671b").variant
    box = hypothetical(256 * G, 80 * G, cores=32)
    auto = plan_variant(v, "UD-IQ1_S", box)
    forced = plan_variant(v, "UD-IQ1_S", box, experts_on="cpu")
    n = auto.experts_in_ram
    assert auto.fits and auto.verdict == "gpu" and auto.experts_on == "cpu"
    assert 0 < n < auto.n_layers and forced.experts_in_ram == auto.n_layers
    _within(auto, box)
    assert auto.vram_bytes > forced.vram_bytes and auto.ram_bytes < forced.ram_bytes
    assert auto.tok_s_low > forced.tok_s_low and auto.tok_s_high > forced.tok_s_high
    # the fewest: one block fewer in RAM would not fit the GPU
    shape = shape_from_variant(v, "UD-IQ1_S")
    fewer = _split(shape, auto.n_gpu_layers, auto.n_ctx, auto.kv_type, True, 1, False, True, n - 1)
    assert not _fits(fewer, rb(box), vb(box), False)
    (pattern,) = auto.cpu_tensors
    for i in range(auto.n_layers):
        for t in ("ffn_up_exps", "ffn_gate_exps", "ffn_down_exps"):
            assert bool(re.search(pattern, f"blk.{i}.{t}.weight")) == (i < n), (i, t)
        assert not re.search(pattern, f"blk.{i}.ffn_up_shexp.weight")
        assert not re.search(pattern, f"blk.{i}.attn_kv_a_mqa.weight")
    assert f"experts of layers 0-{n - 1} in RAM" in auto.placement
    assert f"layers 0-{n - 1}'s routed experts" in auto.reason
