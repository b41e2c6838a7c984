"""Which variant and quant to run on a machine: the policy over the planner's plans (pure,
no I/O). The recommendation `hw` shows and the quant `pull`, `run` and `show` choose both
come from here, through r1local.session, with the same speed floor.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from r1local.planner import USEFUL_CTX, Plan, plan_cluster, plan_variant
from r1local.shapes import shape_from_variant

if TYPE_CHECKING:
    from r1local.catalog import Catalog, Variant
    from r1local.hardware import Machine

# Quality order, best first: the planner tries quants in this order.
QUANT_PREFERENCE: tuple[str, ...] = (
    "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S", "IQ4_XS",
    "Q4_0", "Q3_K_L", "Q3_K_M", "IQ3_M", "Q3_K_S", "IQ3_XXS", "UD-Q2_K_XL", "Q2_K_L",
    "Q2_K", "IQ2_M", "UD-IQ2_XXS", "IQ2_XXS", "UD-IQ1_M", "IQ1_M", "UD-IQ1_S", "IQ1_S",
)
# Below this a dense distill loses too much: recommended only when nothing better fits.
# (The 671B MoE is published in dynamic 1.58-2.7 bit quants made to stay usable.)
DENSE_QUALITY_FLOOR = "Q3_K_M"

# The speed floor (`--min-speed`): below 2 tok/s a 1,000-token reasoning reply takes over
# 8 minutes, past what most people wait for. recommend() skips variants (and choose_quant
# quants) slower than this when it can.
MIN_TOK_S = 2.0
MIN_SPEED_HELP = (f"recommend only models that decode at least this many tokens/s (the middle "
                  f"of the predicted range; default {MIN_TOK_S:g}: slower, a 1,000-token "
                  "reasoning reply takes over 8 min); 0 picks by quality alone")


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


def plan_for(variant: "Variant", quant: str, machine: "Machine", *, experts_on: str = "auto",
             workers: "list[tuple[str, int]] | None" = None, n_ctx: int | None = None,
             kv_type: str = "f16") -> Plan:
    """One quant on this machine, or on it and its RPC ``workers`` (planner.plan_cluster)."""
    if workers:
        return plan_cluster(shape_from_variant(variant, quant), machine, workers, n_ctx=n_ctx,
                            kv_type=kv_type, experts_on=experts_on)
    return plan_variant(variant, quant, machine, n_ctx=n_ctx, kv_type=kv_type,
                        experts_on=experts_on)


def choose_quant(variant: "Variant", machine: "Machine", *, min_tok_s: float = 0.0,
                 experts_on: str = "auto",
                 workers: "list[tuple[str, int]] | None" = None) -> Plan:
    """The best quant of one variant that fits with a useful context.

    Best = highest quality that still runs at least as well (all-GPU beats partial beats
    CPU) as the next quant down would, with a context of at least 8192 where possible.
    Where that would decode slower than ``min_tok_s`` (the middle of its range), the best
    of the smaller ones that does not, if any. ``experts_on``, ``workers``: as plan_for."""
    plans = [plan_for(variant, q, machine, experts_on=experts_on, workers=workers)
             for q in candidate_quants(variant)]
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


def recommend(catalog: "Catalog", machine: "Machine", *, min_tok_s: float = MIN_TOK_S,
              experts_on: str = "auto",
              workers: "list[tuple[str, int]] | None" = None) -> Plan:
    """The largest variant that fits (at a recommendable quant and a useful context), then
    its best quant, then the longest useful context. Where that quant would decode slower
    than ``min_tok_s`` (judged by the middle of its range) a smaller recommendable quant of
    the same variant is taken (choose_quant), and failing that the next smaller variant."""
    how = {"experts_on": experts_on, "workers": workers}
    picks: list[tuple["Variant", Plan]] = []
    for v in _sizes(catalog):
        p = choose_quant(v, machine, min_tok_s=min_tok_s, **how)
        if p.fits and acceptable(v, p.quant) and p.n_ctx >= min(USEFUL_CTX, v.arch.context_length):
            picks.append((v, p))
    if not picks:  # nothing at a useful context: the smallest that fits at all
        for v in _sizes(catalog):
            p = choose_quant(v, machine, **how)
            if p.fits:
                return replace(p, reason=p.reason + "; context below 8192: expect cut-off reasoning")
        smallest = _sizes(catalog)[0]
        p = choose_quant(smallest, machine, **how)
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
