"""Command line entry point: parse arguments and hand each verb to its own module.

Only argparse is imported here. Each verb lives in ``r1local/commands/<verb>.py`` and is
imported only when that verb runs, so ``r1local --help`` never pays for llama.cpp,
numpy or huggingface_hub.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from r1local import __version__

# verb -> (module under r1local.commands, one-line summary, examples for its --help).
# Order is the order of --help.
VERBS: dict[str, tuple[str, str, str]] = {
    "hw": ("hw", "check this machine and what each R1 model would need on it",
           "r1local hw\n  r1local hw --ram 32G --vram 8G     (plan for another machine)"),
    "pull": ("pull", "download a model by tag (e.g. 8b, 14b:Q4_K_M) into the local store",
             "r1local pull 8b\n  r1local pull 14b:Q4_K_M"),
    "run": ("run", "chat with a model in the terminal, or answer one prompt",
            "r1local run 8b\n  r1local run 8b \"What is 17 * 23?\" > answer.txt"),
    "serve": ("serve", "serve models over Ollama- and OpenAI-compatible HTTP APIs",
              "r1local serve --model 8b\n  curl localhost:11434/api/generate -d "
              "'{\"model\": \"8b\", \"prompt\": \"hi\"}'"),
    "convert": ("convert", "convert a Hugging Face checkpoint to GGUF at a chosen quant",
                "r1local convert deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B --quant Q8_0"),
    "list": ("list_models", "list the models in the local store", "r1local list"),
    "show": ("show", "show a model's details and the plan for this machine",
             "r1local show 8b\n  r1local show 14b:Q4_K_M --json"),
    "rm": ("rm", "remove a model from the local store", "r1local rm 14b:Q4_K_M"),
    "worker": ("worker", "lend this machine's CPU or GPU to another r1local over llama.cpp's RPC",
               "r1local worker --mem 12G\n  r1local run 70b --rpc 127.0.0.1:50052   (on the other "
               "machine, through `ssh -L 50052:127.0.0.1:50052 this-host`)"),
    "import": ("import_gguf", "add a GGUF file you already have to the store",
               "r1local import ~/models/my-r1.gguf --name my-r1"),
}


def _load(verb: str):
    module_name = VERBS[verb][0]
    return importlib.import_module(f"r1local.commands.{module_name}")


def _find_verb(argv: Sequence[str]) -> str | None:
    for token in argv:
        if token in VERBS:
            return token
        if not token.startswith("-"):
            return None
    return None


def build_parser(verb: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="r1local",
        description="Run the DeepSeek-R1 family on this machine.",
    )
    parser.add_argument("--version", action="version", version=f"r1local {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND", title="commands")
    for name, (_, summary, examples) in VERBS.items():
        p = sub.add_parser(name, help=summary, description=summary,
                           epilog=f"example:\n  {examples}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == verb:
            _load(name).add_arguments(p)
    return parser


def _one_line(text: str, limit: int = 300) -> str:
    """Errors can quote names read from corrupt files (control characters, kilobytes of
    binary): keep them to one printable line."""
    clean = "".join(c if c.isprintable() and c != "\ufffd" else "?" for c in " ".join(text.split()))
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = _find_verb(argv)
    parser = build_parser(verb)
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 0

    from r1local.errors import R1LocalError

    try:
        return int(_load(args.verb).run(args) or 0)
    except R1LocalError as err:
        print(f"r1local: error: {_one_line(str(err))}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("r1local: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
