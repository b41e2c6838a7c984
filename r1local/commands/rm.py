"""`r1local rm NAME`: remove a model (and its files) from the local store."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="a store name (`r1local list`), a tag like 7b, or 7b:Q4_K_M")
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")


def run(args: argparse.Namespace) -> int:
    import sys

    from r1local.catalog import load_catalog
    from r1local.errors import UnknownModelError, UsageError
    from r1local.units import fmt_bytes
    from r1local.store import Store

    store = Store()
    model = store.get(args.name) or store.find(args.name, load_catalog())
    if model is None:
        store.remove(args.name)  # raises UnknownModelError with the closest names
        raise UnknownModelError(f"'{args.name}' is not in the store")
    what = (f"{model.name} ({fmt_bytes(model.size)}"
            + (", a link: your file is kept" if model.linked else "") + ")")
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(f"not removing {what} without confirmation", hint="add --yes")
        answer = input(f"Remove {what}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("kept", file=sys.stderr)
            return 1
    store.remove(model.name)
    print(f"removed {what}")
    return 0
