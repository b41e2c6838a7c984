"""`r1local convert SRC --quant Q4_K_M [-o OUT]`: a Hugging Face checkpoint to GGUF.

Thin: the options and the work belong to the `quantize` library; its ConvertError becomes
the one-line R1LocalError the CLI prints.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from quantize.cli import add_arguments as quantize_arguments

    quantize_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from quantize.cli import run as convert
    from quantize.errors import ConvertError

    from r1local.errors import R1LocalError

    try:
        out = convert(args)
    except ConvertError as err:
        raise R1LocalError(str(err)) from None
    print(out)
    return 0
