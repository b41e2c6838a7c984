"""`r1local import FILE.gguf --name NAME`: add a GGUF you already have to the store.

The header is validated first; the file is copied (written as .partial, renamed when
complete) or, with --link, recorded where it is.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="the .gguf file")
    parser.add_argument("--name", required=True,
                        help="the name to run it by (letters, digits, '-', '_', '.')")
    parser.add_argument("--link", action="store_true",
                        help="do not copy: point at the file where it is")
    parser.add_argument("--force", action="store_true", help="replace an entry of that name")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from r1local.catalog import load_catalog
    from r1local.errors import UnknownModelError, UsageError
    from r1local.units import fmt_bytes
    from r1local.store import Store, check_name

    check_name(args.name)
    try:
        ref = load_catalog().resolve(args.name)
    except UnknownModelError:
        pass
    else:
        raise UsageError(f"'{args.name}' is a catalog name ({ref.variant.tag}): choose another "
                         "name so `r1local run` is never ambiguous")
    store = Store()
    old = store.get(args.name)
    if old is not None and not args.force:
        raise UsageError(f"'{args.name}' is already in the store",
                         hint="choose another --name, or add --force to replace it")
    model = store.import_file(Path(args.file), args.name, link=args.link)
    if old is not None and not old.linked:  # the replaced copy, unless it was reused
        root = store.root.resolve()
        for f in old.files:
            if f.resolve() not in {p.resolve() for p in model.files} and f.resolve().is_relative_to(root):
                f.unlink(missing_ok=True)
    how = "linked" if args.link else "copied"
    print(f"imported {model.name} ({model.quant}, {fmt_bytes(model.size)}, {how}): "
          f"`r1local run {model.name}`")
    return 0
