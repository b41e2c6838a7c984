"""`r1local show TAG`: what a model is (architecture, parameters, quant, context, chat
template, license, where it came from) and the plan for this machine.

TAG is a store name, a catalog tag or a path to a .gguf; a catalog tag that is not
downloaded is shown from the catalog, with the quant the planner would pull.
"""

from __future__ import annotations

import argparse

from r1local.commands import add_min_speed, min_speed
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tag", help="a store name, a catalog tag (7b, 7b:Q4_K_M) or a .gguf path")
    parser.add_argument("--template", action="store_true", help="print the whole chat template")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    from r1local.planner import EXPERTS_ON, EXPERTS_ON_HELP
    from r1local.rpc import add_rpc_argument

    parser.add_argument("--experts-on", choices=EXPERTS_ON, default="auto", help=EXPERTS_ON_HELP)
    add_rpc_argument(parser)
    add_min_speed(parser)


def run(args: argparse.Namespace) -> int:
    import json

    from r1local import session
    from r1local.catalog import load_catalog
    from r1local.errors import UnknownModelError

    catalog = load_catalog()
    machine = session.machine()
    how = {"experts_on": args.experts_on, "workers": session.rpc_workers(args.rpc)}
    try:
        model = session.locate(args.tag, catalog=catalog)
    except UnknownModelError:
        mref = catalog.resolve(args.tag)  # unknown everywhere: the catalog's suggestion
        info = _from_catalog(mref, machine, min_speed(args), how)
    else:
        info = _from_file(model, catalog, machine, how)
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
        for part in (plan.get("rpc") or {}).get("parts", ()):  # a row per device
            print(f"{'':<14}{_device_row(part)}")
    if template:
        if args.template:
            print("chat template:\n" + template)
        else:
            first = template.strip().splitlines()[0]
            print(f"{'chat template':<14}{len(template)} chars: {first[:60]}{'…' if len(first) > 60 else ''}"
                  "  (--template prints it)")
    return 0


def _plan_summary(plan: Any) -> dict:
    from r1local.units import fmt_bytes

    where = (f"RAM {fmt_bytes(plan.ram_bytes)} here" if plan.rpc is not None else
             f"RAM {fmt_bytes(plan.ram_bytes)} + VRAM {fmt_bytes(plan.vram_bytes)}")
    return {**plan.as_dict(),
            "summary": (f"{plan.placement}, context {plan.n_ctx}, {where}, ~{plan.tok_s_low:.1f}-"
                        f"{plan.tok_s_high:.1f} tok/s ({plan.reason})")}


def _device_row(part: dict) -> str:
    """One device of a plan over RPC workers: where, which layers, its memory."""
    from r1local.units import fmt_bytes

    n = max(0, part["last"] - part["first"] + 1)
    span = (f"layers {part['first']}-{part['last']}" if n > 1 else f"layer {part['first']}"
            if n else "no layers") + (" + output" if part["output"] else "")
    return (f"{part['where']:<22}{span:<24}{fmt_bytes(part['bytes'])} of "
            f"{fmt_bytes(part['budget'])}")


def _human_params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _from_file(model, catalog, machine, how: dict) -> dict:
    from r1local import session
    from r1local.units import fmt_bytes

    header, stored = model.header, model.stored
    variant = catalog.resolve(stored.tag).variant if stored is not None and stored.tag else None
    n_params = sum(t.n_elements for t in header.tensors)  # every part's tensors
    info: dict[str, Any] = {
        "name": stored.name if stored else str(model.path),
        "model": header.get("general.name") or (variant.name if variant else None),
        "architecture": header.architecture,
        "parameters": _human_params(n_params),
        "quant": model.quant,
        "context": header.arch_value("context_length"),
        "layers": header.arch_value("block_count"),
        "license": header.get("general.license") or (variant.license if variant else None),
        "size": fmt_bytes(model.size),
        "files": [str(f) for f in model.parts],
        "source": (stored.source if stored else None),
        "revision": (stored.revision if stored else None),
        "sha256": list(stored.sha256) if stored else None,
        "added": stored.added_at if stored else None,
        "chat_template": header.get("tokenizer.chat_template"),
        "plan": _plan_summary(session.plan_model(model, machine, **how)),
    }
    return info


def _from_catalog(mref, machine, min_tok_s: float | None, how: dict) -> dict:
    from r1local import session
    from r1local.quant_choice import plan_for

    v = mref.variant
    plan = (plan_for(v, mref.quant, machine, **how) if mref.quant
            else session.pick_quant(v, machine, min_tok_s, **how))
    return {
        "name": str(mref), "model": v.name, "architecture": v.arch.type,
        "parameters": f"{v.params_b:.2f}B", "quant": plan.quant,
        "context": v.arch.context_length, "layers": v.arch.n_layers, "license": v.license,
        "source": v.gguf_repo, "status": f"not downloaded: `r1local pull {mref}`",
        "description": v.description, "plan": _plan_summary(plan),
    }
