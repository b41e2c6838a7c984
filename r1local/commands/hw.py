"""`r1local hw`: this machine (or a hypothetical one), and what every R1 variant needs on it.

For each variant x published quant: all on GPU / N of M layers on GPU / CPU only / does
not fit, the memory it takes, the expected decode speed; the recommendation highlighted.
`--json` prints the same for scripts.
"""

from __future__ import annotations

import argparse

from typing import Any

from r1local.commands import add_min_speed, min_speed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--ram", metavar="SIZE",
                        help="plan for a hypothetical machine with this much RAM (e.g. 16G)")
    parser.add_argument("--vram", metavar="SIZE", action="append", default=[],
                        help="a GPU with this much memory; repeat for several GPUs")
    parser.add_argument("--unified", action="store_true",
                        help="Apple Silicon: the GPU shares the RAM (--vram is then its limit)")
    parser.add_argument("--cores", type=int, metavar="N", help="CPU cores of the hypothetical machine")
    parser.add_argument("--profile", metavar="FILE",
                        help="a hypothetical machine from a TOML/JSON file (ram, vram, cores, unified)")
    parser.add_argument("--ctx", type=int, metavar="N", help="plan every model at this context")
    parser.add_argument("--kv-type", choices=("f16", "q8_0", "q4_0"), default="f16",
                        help="KV cache type (default f16)")
    parser.add_argument("--all-quants", action="store_true",
                        help="list every published quant (default: the common ones)")
    parser.add_argument("--wide", action="store_true",
                        help="every column, whatever the terminal's width")
    from r1local.planner import EXPERTS_ON, EXPERTS_ON_HELP
    from r1local.rpc import add_rpc_argument

    parser.add_argument("--experts-on", choices=EXPERTS_ON, default="auto", help=EXPERTS_ON_HELP)
    add_rpc_argument(parser)
    add_min_speed(parser)


# the quants shown per variant unless --all-quants (the first of these a variant has)
COMMON = ("Q8_0", "Q6_K", "Q4_K_M", "Q3_K_M", "Q2_K", "UD-Q2_K_XL", "UD-IQ2_XXS", "UD-IQ1_S")


def machine_from_args(args: argparse.Namespace):
    """The machine to plan for: a profile, flags, or this one."""
    from r1local import session
    from r1local.errors import UsageError
    from r1local.hardware import hypothetical, load_profile
    from r1local.units import parse_size

    flags = args.ram or args.vram or args.unified or args.cores is not None
    if args.profile:
        if flags:
            raise UsageError("give either --profile or --ram/--vram/--cores/--unified, not both")
        return load_profile(args.profile)
    if flags:
        if not args.ram:
            raise UsageError("a hypothetical machine needs --ram (e.g. --ram 16G --vram 8G)")
        if args.unified and len(args.vram) > 1:
            raise UsageError("--unified describes one GPU sharing the RAM: give at most one --vram")
        return hypothetical(parse_size(args.ram), [parse_size(v, allow_zero=True) for v in args.vram],
                            cores=args.cores if args.cores is not None else 8,
                            unified=args.unified)
    return session.machine()


def build_report(args: argparse.Namespace) -> dict:
    from r1local import session
    from r1local.catalog import load_catalog
    from r1local.planner import check_ctx
    from r1local.quant_choice import candidate_quants, plan_for
    from r1local.store import Store, catalog_name

    check_ctx(args.ctx, "--ctx")
    machine = machine_from_args(args)
    workers = session.rpc_workers(args.rpc)  # asked before anything is planned: bad ones fail first
    catalog = load_catalog()
    store = Store()
    how = {"experts_on": args.experts_on, "workers": workers}
    rec = session.recommendation(catalog, machine, min_speed(args), **how)
    rows = []
    for v in sorted(catalog, key=lambda v: v.params_b):
        quants = candidate_quants(v)
        if not args.all_quants:
            quants = [q for q in quants if q in COMMON] or quants[:3]
        for q in quants:
            p = _downloaded_plan(store, catalog_name(v.tag, q), machine, args, workers) or \
                plan_for(v, q, machine, n_ctx=args.ctx, kv_type=args.kv_type, **how)
            rows.append({"tag": v.tag, "name": v.name, "params_b": v.params_b,
                         "file_bytes": v.quants[q].total_size,
                         "recommended": rec.fits and v.tag == rec.model and q == rec.quant,
                         "downloaded": store.get(catalog_name(v.tag, q)) is not None,
                         **p.as_dict()})
    return {"machine": machine.as_dict(), "recommendation": rec.as_dict(), "plans": rows,
            "workers": [{"endpoint": e, "offered_bytes": b} for e, b in workers or ()]}


def _downloaded_plan(store, name: str, machine, args: argparse.Namespace, workers=None):
    """A quant in the store is planned from its own header, as `run` and `show` plan it;
    None when it is not there (or its files are not whole: the catalog's numbers then)."""
    from r1local import session
    from r1local.errors import R1LocalError

    if args.kv_type != "f16" or store.get(name) is None:
        return None
    try:
        return session.plan_model(session.locate(name, store=store), machine, ctx=args.ctx,
                                  experts_on=args.experts_on, workers=workers)
    except R1LocalError:
        return None


def _speed(low: float, high: float, unit: str = " tok/s") -> str:
    if high <= 0:
        return "-"
    fmt = (lambda x: f"{x:.0f}") if low >= 10 else (lambda x: f"{x:.1f}")
    return f"{fmt(low)}-{fmt(high)}{unit}"


def _fits_short(row: dict) -> str:
    """The fit verdict in a few characters, for a narrow terminal."""
    if row.get("rpc") and row["fits"]:
        return "split"
    experts = "+exp RAM" if row.get("experts_on") == "cpu" and row["n_gpu_layers"] else ""
    blocks = max(0, min(row["n_gpu_layers"], row["n_layers"] + 1) - 1)
    return {"gpu": "GPU" + experts, "cpu": "CPU", "no-fit": "no"}.get(
        row["verdict"], f"{blocks}/{row['n_layers']} GPU{experts}")


def _ctx(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


# the model table's columns, most wanted first: (header, cell, right-aligned); a narrow
# terminal loses them from the end of this list, and the short forms replace the long ones
def _columns(wide_forms: bool, has_gpu: bool) -> list[tuple[str, Any, bool]]:
    from r1local.planner import TYPICAL_REPLY_TOKENS
    from r1local.units import fmt_bytes, fmt_duration

    def mem(r: dict) -> str:
        return fmt_bytes(r["ram_bytes"] + (0 if r["fits"] else r["vram_bytes"]))

    def reply(r: dict) -> str:
        return f"~{fmt_duration(r['reply_seconds'])}" if r["fits"] and r["tok_s_high"] > 0 else "-"

    vram = ("VRAM", lambda r: fmt_bytes(r["vram_bytes"]) if r["vram_bytes"] and r["fits"]
            else "-", True)
    cols = [
        ("model", lambda r: ("★ " if r["recommended"] else "") + r["tag"], False),
        ("quant", lambda r: r["quant"], False),
        ("fits", (lambda r: r["placement"]) if wide_forms else _fits_short, False),
        ("tok/s", lambda r: _speed(r["tok_s_low"], r["tok_s_high"], ""), True),
        (f"{TYPICAL_REPLY_TOKENS // 1000}k reply", reply, True),
        ("RAM", mem, True),
        *([vram] if has_gpu else []),
        ("context", lambda r: (str(r["n_ctx"]) if wide_forms else _ctx(r["n_ctx"]))
         if r["fits"] else "-", True),
        ("file", lambda r: fmt_bytes(r["file_bytes"]), True),
    ]
    return cols if has_gpu else [*cols, vram]


def _model_table(report: dict, console: Any, wide: bool) -> Any:
    """The widest table the console holds: all columns in their long forms when they fit
    (or with --wide), else the short forms, then fewer columns; never a wrapped row."""
    from rich import box
    from rich.measure import Measurement
    from rich.table import Table

    has_gpu = bool(report["machine"]["gpus"])
    tries = [(True, None), (False, None)] + [(False, n) for n in range(8, 3, -1)]
    for wide_forms, keep in tries:
        cols = _columns(wide_forms, has_gpu)[:keep]
        t = Table(title="DeepSeek-R1 models on it", title_justify="left",
                  box=box.SIMPLE_HEAD if not wide_forms else box.HEAVY_HEAD, pad_edge=False)
        for header, _, right in cols:
            t.add_column(header, justify="right" if right else "left", no_wrap=True)
        last = None
        for r in report["plans"]:
            if last is not None and r["tag"] != last:
                t.add_section()
            last = r["tag"]
            style = {"gpu": "green", "partial": "yellow", "cpu": "cyan", "no-fit": "dim"}[r["verdict"]]
            t.add_row(*(cell(r) for _, cell, _ in cols),
                      style="bold reverse green" if r["recommended"] else style)
        unbounded = console.options.update_width(1 << 14)  # what it wants, not what it gets
        if wide or Measurement.get(console, unbounded, t).maximum <= console.width:
            return t
    return t


def render(report: dict, *, wide: bool = False) -> None:
    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table

    from r1local.planner import TYPICAL_REPLY_TOKENS
    from r1local.units import fmt_bytes, fmt_duration

    console = Console(highlight=False)
    m = report["machine"]
    mt = Table(title="hypothetical machine" if m["hypothetical"] else "this machine",
               show_header=False, title_justify="left")
    mt.add_column(style="bold", no_wrap=True)
    mt.add_column()
    mt.add_row("CPU", f"{m['cpu_name']} — {m['physical_cores']} cores / "
               f"{m['logical_cores']} threads")
    if m["simd"]:
        mt.add_row("SIMD", " ".join(m["simd"]))
    ram = f"{fmt_bytes(m['ram_total'])} total, {fmt_bytes(m['ram_available'])} available"
    if m["swap_total"]:
        ram += f", swap {fmt_bytes(m['swap_total'])}"
    mt.add_row("RAM", ram)
    if m["gpus"]:
        for g in m["gpus"]:
            kind = " (unified memory: working-set limit)" if g["unified"] else ""
            mt.add_row(f"GPU {g['index']}", f"{g['name']} [{g['vendor']}] — "
                       f"{fmt_bytes(g['total_bytes'])} total, {fmt_bytes(g['free_bytes'])} free{kind}")
    else:
        mt.add_row("GPU", "none")
    mt.add_row("offload", m["offload_note"])
    for w in report.get("workers", ()):
        mt.add_row("RPC worker", f"{w['endpoint']} — offers {fmt_bytes(w['offered_bytes'])}")
    mt.add_row("disk", f"{fmt_bytes(m['disk_free'])} free for models")
    console.print(mt)

    table = _model_table(report, console, wide)
    if wide:
        console.width = max(console.width, Measurement.get(
            console, console.options.update_width(1 << 14), table).maximum)
    console.print(table)
    rec = report["recommendation"]
    if rec["verdict"] == "no-fit":
        console.print(f"[bold red]No R1 model fits:[/] {rec['reason']}")
    else:
        name = f"{rec['model']}:{rec['quant']}"
        console.print(f"[bold green]Recommended:[/] [bold]{name}[/] — context {rec['n_ctx']}, "
                      f"{_speed(rec['tok_s_low'], rec['tok_s_high'])}, "
                      f"~{fmt_duration(rec['reply_seconds'])} for a "
                      f"{TYPICAL_REPLY_TOKENS:,}-token reply")
        console.print(f"  why: {rec['reason']}", style="dim")
        if rec.get("rpc"):
            console.print(device_table(rec["rpc"]))
        rpc = f" --rpc {','.join(w['endpoint'] for w in report['workers'])}" if report.get("workers") else ""
        console.print(f"  get it: r1local pull {name}    chat: r1local run {name}{rpc}")


def device_table(rpc: dict) -> Any:
    """A plan over RPC workers, a row per device: its layers, what they take, what it has."""
    from rich.table import Table

    from r1local.units import fmt_bytes

    t = Table(title="where the layers go", title_justify="left", pad_edge=False)
    for header in ("device", "layers", "memory", "of"):
        t.add_column(header, justify="right" if header in ("memory", "of") else "left",
                     no_wrap=True)
    for p in rpc["parts"]:
        n = max(0, p["last"] - p["first"] + 1)
        span = (f"{p['first']}-{p['last']}" if n > 1 else str(p["first"]) if n else "-")
        span += " + output" if p["output"] else ""
        t.add_row(p["where"], span, fmt_bytes(p["bytes"]), fmt_bytes(p["budget"]))
    return t


def run(args: argparse.Namespace) -> int:
    report = build_report(args)
    if args.json:
        import json
        import sys

        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    render(report, wide=args.wide)
    return 0
