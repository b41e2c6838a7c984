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
