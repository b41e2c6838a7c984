"""`r1local list`: the models in the local store (name, quant, size, where, when)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def run(args: argparse.Namespace) -> int:
    import json

    from r1local.units import fmt_bytes
    from r1local.store import Store

    store = Store()
    models = store.list()
    if args.json:
        print(json.dumps([{
            "name": m.name, "tag": m.tag, "quant": m.quant, "size": m.size,
            "files": [str(f) for f in m.files], "source": m.source, "revision": m.revision,
            "sha256": list(m.sha256), "added_at": m.added_at, "origin": m.origin,
            "linked": m.linked, "present": m.present, "damaged": m.size_problem()}
            for m in models], indent=2))
        return 0
    if not models:
        print(f"no models in {store.root} yet: `r1local pull 7b` fetches one, "
              "`r1local import FILE.gguf --name NAME` adds one you have")
        return 0
    rows = [("NAME", "QUANT", "SIZE", "FROM", "ADDED", "WHERE")]
    for m in models:
        problem = m.size_problem()
        where = str(m.path) + ("  (missing!)" if not m.present else
                               f"  (damaged: {problem}; `r1local pull {m.name}` fetches it "
                               "again)" if problem else "")
        origin = {"pull": m.source or "hub", "source": f"built from {m.source}",
                  "import": "import" + (" (link)" if m.linked else "")}.get(m.origin, m.origin)
        rows.append((m.name, m.quant, fmt_bytes(m.size), origin,
                     m.added_at.replace("T", " ")[:16], where))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    return 0
