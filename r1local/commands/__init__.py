"""One module per CLI verb. Each has ``add_arguments(parser)`` and ``run(args) -> int``.

Modules here import only argparse at the top; anything heavy is imported inside ``run``
so that ``r1local --help`` stays fast.
"""

import argparse


def add_min_speed(parser: argparse.ArgumentParser) -> None:
    """`--min-speed`: the one speed floor hw, pull, run and show choose models by."""
    from r1local.quant_choice import MIN_SPEED_HELP

    parser.add_argument("--min-speed", type=float, metavar="TOK_S", help=MIN_SPEED_HELP)


def min_speed(args: argparse.Namespace) -> float | None:
    """--min-speed, checked (None: the default floor)."""
    from r1local.errors import UsageError

    if args.min_speed is not None and not 0 <= args.min_speed < 1e6:
        raise UsageError(f"--min-speed {args.min_speed:g} is out of range (tokens/s, 0 or more)")
    return args.min_speed
