"""`r1local show TAG`: what a model is (architecture, parameters, quant, context, chat
template, license, where it came from) and the plan for this machine.

TAG is a store name, a catalog tag or a path to a .gguf; a catalog tag that is not
downloaded is shown from the catalog, with the quant the planner would pull.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tag", help="a store name, a catalog tag (7b, 7b:Q4_K_M) or a .gguf path")
    parser.add_argument("--template", action="store_true", help="print the whole chat template")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def run(args: argparse.Namespace) -> int:
    import json

    from r1local.catalog import load_catalog
    from r1local.errors import UnknownModelError
    from r1local.store import Store, resolve_gguf

    catalog = load_catalog()
    store = Store()
    try:
        path, stored = resolve_gguf(args.tag, catalog, store)
    except UnknownModelError:
        mref = catalog.resolve(args.tag)  # unknown everywhere: the catalog's suggestion
        info = _from_catalog(mref)
    else:
        info = _from_file(path, stored, catalog)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    template = info.pop("chat_template", None)
    plan = info.pop("plan", None)
    for key, value in info.items():
        if value not in (None, "", [], ()):
            label = key.replace("_", " ")
            print(f"{label:<14}{', '.join(map(str, value)) if isinstance(value, list) else value}")
    if plan:
        print(f"{'plan':<14}{plan['summary']}")
    if template:
        if args.template:
            print("chat template:\n" + template)
        else:
            first = template.strip().splitlines()[0]
            print(f"{'chat template':<14}{len(template)} chars: {first[:60]}{'…' if len(first) > 60 else ''}"
                  "  (--template prints it)")
    return 0


def _plan_summary(plan: Any) -> dict:
    from r1local.hub import fmt_size

    where = {"gpu": "all on GPU", "partial": f"{plan.n_gpu_layers} of {plan.n_layers} layers on GPU",
             "cpu": "CPU only", "no-fit": "does not fit"}.get(plan.verdict, plan.verdict)
    return {"verdict": plan.verdict, "n_ctx": plan.n_ctx, "n_gpu_layers": plan.n_gpu_layers,
            "ram_bytes": plan.ram_bytes, "vram_bytes": plan.vram_bytes,
            "summary": (f"{where}, context {plan.n_ctx}, RAM {fmt_size(plan.ram_bytes)}"
                        f" + VRAM {fmt_size(plan.vram_bytes)}, ~{plan.tok_s_low:.1f}-"
                        f"{plan.tok_s_high:.1f} tok/s ({plan.reason})")}


def _param_count(header) -> int:
    return sum(t.n_elements for t in header.tensors)


def _human_params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _from_file(path, stored, catalog) -> dict:
    from r1local.ggufinfo import read_header
    from r1local.hub import fmt_size
    from r1local.store import quant_of

    header = read_header(path, max_array=256)
    variant = None
    if stored is not None and stored.tag:
        variant = catalog.resolve(stored.tag).variant
    n_params = _param_count(header)
    if stored is not None and len(stored.files) > 1:
        n_params = 0  # the first part holds only some tensors: use the catalog's count
    info: dict[str, Any] = {
        "name": stored.name if stored else str(path),
        "model": header.get("general.name") or (variant.name if variant else None),
        "architecture": header.architecture,
        "parameters": _human_params(n_params) if n_params else
        (f"{variant.params_b:.2f}B" if variant else None),
        "quant": (stored.quant if stored else None) or quant_of(header),
        "context": header.arch_value("context_length"),
        "layers": header.arch_value("block_count"),
        "license": header.get("general.license") or (variant.license if variant else None),
        "size": fmt_size(stored.size if stored else path.stat().st_size),
        "files": [str(f) for f in (stored.files if stored else (path,))],
        "source": (stored.source if stored else None),
        "revision": (stored.revision if stored else None),
        "sha256": list(stored.sha256) if stored else None,
        "added": stored.added_at if stored else None,
        "chat_template": header.get("tokenizer.chat_template"),
    }
    try:
        from r1local.hardware import probe
        from r1local.planner import plan_gguf
    except ImportError:
        return info
    if stored is None or len(stored.files) == 1:
        info["plan"] = _plan_summary(plan_gguf(header, probe(path.parent)))
    elif variant is not None:
        from r1local.planner import plan_variant

        info["plan"] = _plan_summary(plan_variant(variant, stored.quant, probe(path.parent)))
    return info


def _from_catalog(mref) -> dict:
    v = mref.variant
    info: dict[str, Any] = {
        "name": str(mref), "model": v.name, "architecture": v.arch.type,
        "parameters": f"{v.params_b:.2f}B", "quant": mref.quant,
        "context": v.arch.context_length, "layers": v.arch.n_layers, "license": v.license,
        "source": v.gguf_repo, "status": f"not downloaded: `r1local pull {mref}`",
        "description": v.description,
    }
    try:
        from r1local.hardware import probe
        from r1local.planner import choose_quant, plan_variant
    except ImportError:
        return info
    machine = probe()
    plan = plan_variant(v, mref.quant, machine) if mref.quant else choose_quant(v, machine)
    info["quant"] = plan.quant
    info["plan"] = _plan_summary(plan)
    return info
