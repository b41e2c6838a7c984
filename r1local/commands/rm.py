"""`r1local rm NAME`: remove a model (and its files) from the local store."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="a store name (`r1local list`), a tag like 7b, or 7b:Q4_K_M")
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")


def run(args: argparse.Namespace) -> int:
    import sys

    from r1local.catalog import load_catalog
    from r1local.errors import UsageError
    from r1local.store import Store, check_ref
    from r1local.units import fmt_bytes

    store = Store()
    name = check_ref(args.name)  # a path is refused before anything is read or changed
    model = store.get(name) or store.find(name, load_catalog())
    if model is not None:
        name = model.name
        what = (f"{model.name} ({fmt_bytes(model.size)}"
                + (", a link: your file is kept" if model.linked else "") + ")")
    else:
        name = store.damaged(name)
        if name is None:
            raise store.unknown(args.name)
        what = f"the damaged entry {name} (and its folder in the store)"
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(f"not removing {what} without confirmation", hint="add --yes")
        answer = input(f"Remove {what}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("kept", file=sys.stderr)
            return 1
    store.remove(name)
    print(f"removed {what}")
    return 0
