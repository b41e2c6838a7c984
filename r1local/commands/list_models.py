"""`r1local list`: not built yet."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from r1local.errors import R1LocalError

    raise R1LocalError("this command is not built yet")
