"""The converter's command line, shared by `python -m quantize` and `r1local convert`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from quantize.quants import SUPPORTED_QUANTS

    parser.add_argument("src", metavar="SRC",
                        help="a Hugging Face checkpoint folder, or a hub repo id (owner/name)")
    parser.add_argument("--quant", "-q", default="Q4_K_M", metavar="TYPE",
                        help=f"output type (default Q4_K_M): {', '.join(SUPPORTED_QUANTS)}")
    parser.add_argument("-o", "--output", metavar="OUT",
                        help="output GGUF file (default: <source name>-<TYPE>.gguf here)")
    parser.add_argument("--threads", type=int, metavar="N", help="threads for llama.cpp's quantizer")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    parser.add_argument("--imatrix", metavar="FILE",
                        help="importance matrix from llama-imatrix: needed by the IQ1/IQ2/IQ3 types, "
                             "improves the K-quants")
    parser.add_argument("--revision", metavar="REV", help="hub revision (branch, tag or commit)")
    parser.add_argument("--two-pass", action="store_true",
                        help="K-quants the old way: an F16/BF16 file first, then llama.cpp's "
                             "quantizer over it (the same bytes, twice the disk and time)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def default_output(src: str, quant: str) -> Path:
    name = Path(str(src).rstrip("/")).name or "model"
    return Path(f"{name}-{quant.upper()}.gguf")


def run(args: argparse.Namespace) -> Path:
    """Convert as the arguments say; raises ConvertError on bad input."""
    from quantize import convert
    from quantize.errors import ConvertError

    if args.threads is not None and args.threads < 1:
        raise ConvertError("--threads must be at least 1")
    out = Path(args.output) if args.output else default_output(args.src, args.quant)
    return convert(args.src, out, args.quant, threads=args.threads, force=args.force,
                   imatrix=args.imatrix, revision=args.revision, two_pass=args.two_pass,
                   progress=not args.no_progress and sys.stderr.isatty())


def main(argv: Sequence[str] | None = None) -> int:
    from quantize.errors import ConvertError

    parser = argparse.ArgumentParser(prog="python -m quantize",
                                     description="Convert a Hugging Face checkpoint to GGUF.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        out = run(args)
    except ConvertError as err:
        print(f"quantize: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("quantize: interrupted (nothing was written)", file=sys.stderr)
        return 130
    print(out)
    return 0
