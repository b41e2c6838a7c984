"""The one seam from a model reference to a loaded model: resolve -> read the header (every
part of a split file) -> probe the machine -> plan -> load; and the one answer to "which
quant of this variant for this machine".

run, show, pull, hw and the server all come through here, so one reference gets the same
file, the same plan and the same quant from every command. The pieces stay where they
live (store resolves, ggufinfo reads, planner plans, engine and embeddings load); this
module only wires them, in one order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from r1local.errors import DoesNotFitError
from r1local.units import fmt_bytes

if TYPE_CHECKING:
    from r1local.catalog import Catalog, Variant
    from r1local.embeddings import Embedder
    from r1local.engine import Engine
    from r1local.ggufinfo import GGUFHeader
    from r1local.hardware import Machine
    from r1local.planner import Plan, RpcSplit
    from r1local.store import Store, StoredModel

# plan for the machine a profile file describes instead of this one (`hw --profile`'s format)
PROFILE_ENV = "R1LOCAL_PROFILE"


@dataclass(frozen=True)
class ModelFile:
    """A model reference resolved to what llama.cpp will load."""

    ref: str  # what the user or client called it
    path: Path  # the GGUF llama.cpp is given (the first part of a split model)
    stored: "StoredModel | None"  # its store entry, if it has one
    header: "GGUFHeader"  # the first part's metadata with every part's tensors

    @property
    def parts(self) -> tuple[Path, ...]:
        return tuple(map(Path, self.header.parts)) or (self.path,)

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in self.parts)

    @property
    def quant(self) -> str:
        return (self.stored.quant if self.stored is not None else None) or self.header.quant


def machine(ram_limit: int | None = None, models_dir: Path | None = None) -> "Machine":
    """The machine to plan for: this one as probed (or the profile $R1LOCAL_PROFILE
    names), with at most ``ram_limit`` bytes of RAM where given (`--ram`)."""
    from r1local.hardware import load_profile, probe

    profile = os.environ.get(PROFILE_ENV)
    found = load_profile(profile) if profile else probe(models_dir)
    if ram_limit is not None:
        found = replace(found, ram_total=min(found.ram_total, ram_limit),
                        ram_available=min(found.ram_available, ram_limit))
    return found


def rpc_workers(value: str | None) -> "list[tuple[str, int]] | None":
    """--rpc (or $R1LOCAL_RPC): each worker's host:port and the memory it offers, asked of
    the worker itself; None without workers."""
    from r1local import rpc

    endpoints = rpc.endpoints_from(value)
    if not endpoints:
        return None
    return [(w.endpoint, w.free_bytes) for w in rpc.connect(endpoints)]


def pick_quant(variant: "Variant", on: "Machine", min_tok_s: float | None = None, *,
               experts_on: str = "auto",
               workers: "list[tuple[str, int]] | None" = None) -> "Plan":
    """The quant of ``variant`` to use on this machine: the best quality that fits with a
    useful context and still decodes at the speed floor (``--min-speed``, by default
    quant_choice.MIN_TOK_S), the rule `hw` recommends by. Every command that chooses a
    quant asks here. ``workers``: RPC workers' (host:port, bytes offered) to plan with."""
    from r1local.quant_choice import MIN_TOK_S, choose_quant

    return choose_quant(variant, on, min_tok_s=MIN_TOK_S if min_tok_s is None else min_tok_s,
                        experts_on=experts_on, workers=workers)


def recommendation(catalog: "Catalog", on: "Machine",
                   min_tok_s: float | None = None, *, experts_on: str = "auto",
                   workers: "list[tuple[str, int]] | None" = None) -> "Plan":
    """The variant and quant this machine should run (what `hw` stars and `run` with no
    model uses), by the same speed floor as pick_quant."""
    from r1local.quant_choice import MIN_TOK_S, recommend

    return recommend(catalog, on, min_tok_s=MIN_TOK_S if min_tok_s is None else min_tok_s,
                     experts_on=experts_on, workers=workers)


def locate(ref: str, *, store: "Store | None" = None,
           catalog: "Catalog | None" = None) -> ModelFile:
    """A reference (a .gguf path, a store name, a catalog tag or alias) -> its file and
    header; every part of a split model must be present."""
    from r1local.catalog import load_catalog
    from r1local.ggufinfo import read_model_header
    from r1local.store import Store, resolve_gguf

    path, stored = resolve_gguf(ref, catalog or load_catalog(), store or Store())
    return ModelFile(ref=ref, path=Path(path), stored=stored, header=read_model_header(path))


def plan_model(model: ModelFile, on: "Machine", *, ctx: int | None = None,
               gpu_layers: int | None = None, experts_on: str = "auto",
               workers: "list[tuple[str, int]] | None" = None) -> "Plan":
    """The planner's settings for this file on this machine (from its real tensor sizes);
    ``experts_on``: where a MoE model's routed experts go (`--experts-on`); ``workers``: RPC
    workers' (host:port, bytes offered) to plan the cluster with (planner.plan_cluster)."""
    from r1local.planner import plan_cluster, plan_gguf

    if workers:
        from r1local.shapes import shape_from_gguf

        plan = plan_cluster(shape_from_gguf(model.header), on, workers, n_ctx=ctx,
                            experts_on=experts_on)
        return replace(plan, quant=model.quant)
    plan = plan_gguf(model.header, on, n_ctx=ctx, n_gpu_layers=gpu_layers, experts_on=experts_on)
    return replace(plan, quant=model.quant)


def _fitting_plan(model: ModelFile, on: "Machine | None", *, ctx: int | None,
                  gpu_layers: int | None, threads: int | None, ram_limit: int | None,
                  force: bool, warn: Callable[[str], None] | None,
                  experts_on: str = "auto") -> "Plan":
    """The plan to load ``model`` with; one that does not fit is refused with the fix,
    unless ``force`` (then ``warn`` is told)."""
    on = on or machine(ram_limit, model.path.parent)
    plan = plan_model(model, on, ctx=ctx, gpu_layers=gpu_layers, experts_on=experts_on)
    if threads is not None:
        plan = replace(plan, n_threads=threads)
    if not plan.fits:
        where = ("this machine" if ram_limit is None
                 else f"this machine with {fmt_bytes(ram_limit)} of RAM (--ram)")
        what = f"{model.path.name} does not fit {where} ({plan.reason})"
        if not force:
            raise DoesNotFitError(what, hint="pick a smaller quant or variant (see `r1local hw`), "
                                  "or add --force to load it anyway")
        if warn is not None:
            warn(f"{what}; loading it anyway (--force)")
    return plan


def open_model(ref: "str | ModelFile", *, ctx: int | None = None, gpu_layers: int | None = None,
               threads: int | None = None, ram_limit: int | None = None, force: bool = False,
               on: "Machine | None" = None, verbose: bool | None = None,
               warn: Callable[[str], None] | None = None,
               rpc: "Sequence[str] | None" = None,
               progress: Callable[[float], None] | None = None,
               experts_on: str = "auto",
               parallel: int = 1,
               ) -> "tuple[Engine, Plan, StoredModel | None]":
    """Resolve, plan and load a model for chat and completion. A plan that does not fit is
    refused with the fix, unless ``force`` (then ``warn`` is told, and it loads anyway).
    ``rpc``: host:port of RPC workers (`r1local worker`) to run some of the layers; the
    engine's ``rpc_split`` then says where each layer went. ``progress``: llama.cpp's load
    fraction as it loads (Engine.load). ``experts_on``: where a MoE model's routed experts
    go, "auto" (the planner decides), "cpu" (always RAM) or "gpu" (with their layers).
    ``parallel``: sequences decoded together (serve --parallel, run --samples), each with
    a context of ``ctx`` (default: slot_ctx's); the plan holds the KV cache of them all."""
    from r1local.engine import Engine
    from r1local.errors import UsageError
    from r1local.ggufinfo import ENCODER_ARCHITECTURES

    model = ref if isinstance(ref, ModelFile) else locate(ref)
    arch = model.header.architecture
    if arch in ENCODER_ARCHITECTURES:
        raise UsageError(f"{model.path.name} is an embedding model ({arch}): it cannot chat "
                         "or complete text", hint="use it for embeddings: /api/embed or "
                         "/v1/embeddings on `r1local serve`")
    if rpc:
        plan, split = _rpc_plan(model, rpc, on, ctx=ctx, gpu_layers=gpu_layers,
                                threads=threads, ram_limit=ram_limit, force=force, warn=warn,
                                experts_on=experts_on)
        engine = Engine.load(model.path, plan, verbose=verbose, header=model.header,
                             n_gpu_layers=split.n_gpu_layers, tensor_split=split.tensor_split,
                             progress=progress, cpu_tensors=split.cpu_tensors)
        engine.rpc_split = split
        return engine, plan, model.stored
    slot = None
    if parallel > 1:
        on = on or machine(ram_limit, model.path.parent)
        slot = slot_ctx(model, on, ctx)
        ctx = parallel * slot
    plan = _fitting_plan(model, on, ctx=ctx, gpu_layers=gpu_layers, threads=threads,
                         ram_limit=ram_limit, force=force, warn=warn, experts_on=experts_on)
    # with nothing offloaded every tensor is in RAM already: no override to set
    engine = Engine.load(model.path, plan, verbose=verbose, header=model.header,
                         progress=progress,
                         cpu_tensors=plan.cpu_tensors if plan.n_gpu_layers else (),
                         n_ctx=slot, n_parallel=parallel)
    return engine, plan, model.stored


def slot_ctx(model: ModelFile, on: "Machine", ctx: int | None) -> int:
    """Each parallel sequence's context: ``ctx``, else the planner's context for one
    sequence, at most batching.SLOT_CTX (several full-length contexts rarely fit)."""
    from r1local.batching import SLOT_CTX
    from r1local.planner import pad_ctx

    return pad_ctx(ctx or min(plan_model(model, on).n_ctx, SLOT_CTX))


def choose_parallel(model: ModelFile, on: "Machine", ctx: int | None,
                    most: int | None = None) -> int:
    """How many sequences `serve` decodes together by default: the most (up to
    batching.DEFAULT_PARALLEL) whose KV cache still fits beside the model without moving
    a layer off the GPU."""
    from r1local.batching import DEFAULT_PARALLEL

    one = plan_model(model, on, ctx=slot_ctx(model, on, ctx))
    for n in range(most or DEFAULT_PARALLEL, 1, -1):
        plan = plan_model(model, on, ctx=n * slot_ctx(model, on, ctx))
        if plan.fits and plan.n_gpu_layers >= one.n_gpu_layers:
            return n
    return 1


def _rpc_plan(model: ModelFile, endpoints: "Sequence[str]", on: "Machine | None", *,
              ctx: int | None, gpu_layers: int | None, threads: int | None,
              ram_limit: int | None, force: bool,
              warn: Callable[[str], None] | None,
              experts_on: str = "auto") -> "tuple[Plan, RpcSplit]":
    """The plan with RPC workers (planner.plan_cluster): planned for the memory of this
    machine and the workers together, its CPU layers then spread over this machine and the
    workers, each worker's memory as the worker itself reports it. The workers are
    registered as llama.cpp devices here, before anything loads."""
    from r1local import rpc
    from r1local.planner import plan_cluster
    from r1local.shapes import shape_from_gguf

    local_gpus = rpc.local_gpu_count()
    workers = rpc.connect(endpoints)
    # the same cluster plan `show --rpc` and `hw --rpc` show: the context for all the memory
    on = on or machine(ram_limit, model.path.parent)
    plan = plan_cluster(shape_from_gguf(model.header), on,
                        [(w.endpoint, w.free_bytes) for w in workers], n_ctx=ctx,
                        n_gpu_layers=gpu_layers, experts_on=experts_on, local_gpus=local_gpus)
    plan = replace(plan, quant=model.quant, n_threads=plan.n_threads if threads is None else threads)
    split = plan.rpc
    if not split.fits:
        what = f"{model.path.name} does not fit this machine and its RPC workers ({split.reason})"
        if not force:
            # what would fit: the first worker short of room, offering what its share needs
            short = next((p for p in split.parts[1:] if p.bytes > p.budget
                          and p.where not in ("local CPU", "local GPU")), None)
            fix = (f"start {short.where}'s worker with --mem {-(-short.bytes // (1 << 20))}M or more, "
                   "or add a worker" if short is not None else "add a worker")
            raise DoesNotFitError(what, hint=f"{fix}; or pick a smaller quant, or add --force "
                                  "to load it anyway")
        if warn is not None:
            warn(f"{what}; loading it anyway (--force)")
    return plan, split


def open_embedder(ref: "str | ModelFile", *, ctx: int | None = None,
                  threads: int | None = None, on: "Machine | None" = None,
                  verbose: bool | None = None) -> "tuple[Embedder, Plan]":
    """Resolve, plan and load a model for embeddings (embeddings.Embedder: its own llama.cpp
    context, pooled as the model declares or by the mean): the same names, files, plan and
    errors as open_model. ``ctx``: the longest input it takes (embeddings.embedding_ctx)."""
    from r1local.embeddings import Embedder, embedding_ctx, pooling_for

    model = ref if isinstance(ref, ModelFile) else locate(ref)
    pooling = pooling_for(model.header)  # a reranker is refused before anything loads
    n_ctx = embedding_ctx(model.header, ctx)
    plan = _fitting_plan(model, on, ctx=n_ctx, gpu_layers=None, threads=threads,
                         ram_limit=None, force=False, warn=None)
    embedder = Embedder.load(model.path, plan, header=model.header, n_ctx=n_ctx,
                             pooling=pooling, verbose=verbose)
    return embedder, plan


def pull_model(ref: str, *, quant: str | None = None, on: "Machine | None" = None,
               store: "Store | None" = None, min_tok_s: float | None = None,
               **pull_options) -> "StoredModel":
    """Download ``ref`` into the store; where neither it nor ``quant`` names a quant, the
    one this machine should run (pick_quant), saying why."""
    from r1local import hub
    from r1local.catalog import load_catalog
    from r1local.store import Store

    store = store or Store()
    mref = load_catalog().resolve(ref)
    notes: list[str] = []
    if quant is None and mref.quant is None:
        plan = pick_quant(mref.variant, on or machine(models_dir=store.root), min_tok_s)
        quant = plan.quant
        tag = f"{mref.variant.tag}:{plan.quant}"
        notes.append(f"chose {tag} for this machine: {plan.reason}" if plan.fits else
                     f"{plan.quant} is the smallest {mref.variant.tag} quant, and it does not "
                     f"fit this machine ({plan.reason}); downloading it anyway")
    return hub.pull(ref, quant=quant, store=store, notes=notes, **pull_options)
