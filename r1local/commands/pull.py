"""`r1local pull TAG[:QUANT]`: download a model into the local store (resumable, verified).

With no quant the planner picks the best one for this machine and says why. `--from-source`
downloads the original safetensors and converts them here instead of fetching a GGUF.
"""

from __future__ import annotations

import argparse

from r1local.commands import add_min_speed, min_speed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tag", help="a catalog tag (1.5b 7b 8b 14b 32b 70b 671b ...), "
                        "optionally with :QUANT, e.g. 14b:Q4_K_M")
    parser.add_argument("--quant", metavar="Q", help="the quant to fetch (default: the best "
                        "that fits this machine)")
    parser.add_argument("--from-source", action="store_true",
                        help="download the original safetensors and convert them locally")
    parser.add_argument("--keep-source", action="store_true",
                        help="with --from-source: keep the safetensors after converting")
    parser.add_argument("--trust-hub", action="store_true",
                        help="take the hub's file when its sha256 is not the one the catalog "
                        "pins (a publisher's re-upload); it is still checked against the "
                        "hub's hash")
    parser.add_argument("--verify", action="store_true",
                        help="for a model already in the store: hash its files again, not "
                        "only check their sizes")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_min_speed(parser)


def run(args: argparse.Namespace) -> int:
    import sys

    from r1local.errors import UsageError
    from r1local.session import pull_model

    if args.keep_source and not args.from_source:
        raise UsageError("--keep-source only applies with --from-source")
    try:
        model = pull_model(args.tag, quant=args.quant, from_source=args.from_source,
                           keep_source=args.keep_source, progress=not args.quiet,
                           min_tok_s=min_speed(args), trust_hub=args.trust_hub,
                           verify=args.verify)
    except KeyboardInterrupt:
        print(f"\nr1local: interrupted; `r1local pull {args.tag}` again resumes the download",
              file=sys.stderr)
        return 130
    print(model.name)
    return 0
