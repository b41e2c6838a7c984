"""`r1local run [TAG] [PROMPT...]`: chat in the terminal, or answer one prompt and exit.

TAG is a path to a .gguf, or a model in the store (`7b`, `7b:q4_k_m`, an import name).
Without TAG the planner's recommendation for this machine is used: from the store, or
pulled (after asking, in a chat at a terminal; a script is told on stderr what is being
fetched, as `ollama run` does). With a prompt (or piped stdin) the answer goes to stdout and the reasoning to
stderr, so `r1local run 7b "q" > answer.txt` keeps only the answer.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tag", nargs="?", help="model: a .gguf path or a store/catalog tag "
                        "(default: the recommended model for this machine; a quoted prompt "
                        "of several words in its place asks that one)")
    parser.add_argument("prompt", nargs="*", help="answer this prompt and exit (stdin is read "
                        "when piped)")
    out = parser.add_argument_group("output")
    out.add_argument("--hide-thinking", action="store_true", help="do not print the reasoning")
    out.add_argument("--json", action="store_true",
                     help="print one JSON object: thinking, answer and stats")
    out.add_argument("--verbose", action="store_true", help="llama.cpp's own log, and stats")
    load = parser.add_argument_group("loading (override the plan)")
    load.add_argument("--ctx", type=int, metavar="N", help="context length in tokens")
    load.add_argument("--gpu-layers", type=int, metavar="N", help="layers to offload to the GPU")
    load.add_argument("--threads", type=int, metavar="N", help="CPU threads")
    load.add_argument("--force", action="store_true",
                      help="load even when the plan says it does not fit")
    load.add_argument("--ram", metavar="SIZE",
                      help="plan as if this machine had only SIZE of RAM (e.g. 8G), to leave "
                      "room for other programs")
    gen = parser.add_argument_group("generation")
    gen.add_argument("--temperature", type=float, metavar="T", help="default 0.6 (DeepSeek)")
    gen.add_argument("--top-p", type=float, metavar="P", help="default 0.95 (DeepSeek)")
    gen.add_argument("--top-k", type=int, metavar="K", help="default 40")
    gen.add_argument("--seed", type=int, metavar="N", help="fixed seed for repeatable output")
    gen.add_argument("--think-budget", type=int, metavar="N",
                     help="reasoning tokens before the model must answer")
    gen.add_argument("--max-tokens", type=int, metavar="N", help="stop the reply after N tokens")
    gen.add_argument("--system", metavar="TEXT", help="system prompt (for R1 it is folded "
                     "into the first message, as DeepSeek advises)")


def run(args: argparse.Namespace) -> int:
    from r1local.errors import R1LocalError

    try:
        return main(args)
    except R1LocalError as err:
        text = one_line(str(err))
        if text == str(err):
            raise
        raise type(err)(text) from None


MAX_ERROR_CHARS = 300


def one_line(text: str) -> str:
    """An error message fit for one terminal line: a corrupt file can put control
    characters and kilobytes of binary into a 'name' that ends up in the message."""
    out = "".join(c if c.isprintable() and c != "\ufffd" else "?" for c in text)
    return out if len(out) <= MAX_ERROR_CHARS else out[: MAX_ERROR_CHARS - 1] + "…"


# ---- everything below runs only inside `run` (heavy imports are local) -----------------

def main(args: argparse.Namespace) -> int:
    import sys

    from r1local.engine import Engine
    from r1local.errors import DoesNotFitError, UsageError
    from r1local.ggufinfo import read_header

    ram_limit = _check_numbers(args)
    tag, words = _split_tag(args.tag, args.prompt)
    prompt = " ".join(words)
    interactive = sys.stdin.isatty()
    # only a chat at a terminal has someone to ask before a download
    path, stored = _resolve(tag, ask=interactive and not prompt.strip(), ram_limit=ram_limit)
    header = read_header(path, check_architecture=True, max_array=256)
    machine, plan = _plan(header, path, args.ctx, args.gpu_layers, ram_limit=ram_limit)
    if plan is not None and not plan.fits:
        where = f"this machine with --ram {args.ram}" if ram_limit else "this machine"
        what = f"{path.name} does not fit {where} ({plan.reason})"
        if not args.force:
            raise DoesNotFitError(what, hint="pick a smaller quant or variant (see `r1local hw`), "
                                  "or add --force to load it anyway")
        print(f"r1local: warning: {what}; loading it anyway (--force)", file=sys.stderr)

    if not interactive:
        piped = sys.stdin.read()
        if piped.strip():
            prompt = f"{prompt}\n\n{piped.strip()}" if prompt.strip() else piped.strip()
        if not prompt.strip():
            raise UsageError("nothing to answer: give a prompt, or pipe text into stdin")

    engine = Engine.load(path, plan, n_ctx=args.ctx, n_gpu_layers=args.gpu_layers,
                         n_threads=args.threads, verbose=args.verbose or None)
    try:
        settings = _settings(args)
        if prompt.strip():
            return _one_shot(engine, settings, prompt, args)

        def reload(n_ctx: int) -> Engine:
            _, new_plan = _plan(header, path, n_ctx, args.gpu_layers, machine=machine)
            return Engine.load(path, new_plan, n_ctx=n_ctx, n_gpu_layers=args.gpu_layers,
                               n_threads=args.threads, verbose=args.verbose or None)

        from r1local.locations import history_file
        from r1local.repl import Repl

        repl = Repl(engine, settings, system=args.system, show_thinking=not args.hide_thinking,
                    reload=reload, describe=describe(engine, plan, stored, header),
                    history_path=history_file())
        try:
            return repl.run()
        finally:
            engine = repl.engine  # /set context may have replaced it
    finally:
        engine.close()


def _check_numbers(args: argparse.Namespace) -> int | None:
    """Refuse nonsense before anything loads; returns --ram in bytes (None: not given)."""
    from r1local.errors import UsageError

    for name in ("ctx", "threads", "max_tokens"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive number")
    for name in ("gpu_layers", "think_budget", "top_k"):
        value = getattr(args, name)
        if value is not None and value < 0:
            raise UsageError(f"--{name.replace('_', '-')} cannot be negative")
    for name in ("temperature", "top_p"):
        value = getattr(args, name)
        if value is not None and not 0 <= value <= (1 if name == "top_p" else 5):
            raise UsageError(f"--{name.replace('_', '-')} {value} is out of range")
    if args.ram is None:
        return None
    from r1local.hardware import parse_size

    return parse_size(args.ram)


def _split_tag(tag: str | None, prompt: list[str]) -> tuple[str | None, list[str]]:
    """(tag, prompt words). No model name has a space, so `r1local run "why is the sky
    blue?"` is a prompt for the recommended model, not a model called that; a missing
    "my models/x.gguf" stays a path, to be reported as missing."""
    from pathlib import Path

    if (tag is not None and len(tag.split()) > 1 and not tag.lower().endswith(".gguf")
            and not Path(tag).expanduser().exists()):
        return None, [tag, *prompt]
    return tag, list(prompt)


def _machine(ram_limit: int | None, models_dir=None):
    """This machine as probed, with at most ``ram_limit`` bytes of RAM where given."""
    from dataclasses import replace

    from r1local.hardware import probe

    machine = probe(models_dir)
    if ram_limit is not None:
        machine = replace(machine, ram_total=min(machine.ram_total, ram_limit),
                          ram_available=min(machine.ram_available, ram_limit))
    return machine


def _settings(args: argparse.Namespace):
    from r1local.engine import GenerationSettings

    s = GenerationSettings()
    for arg, field in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"),
                       ("seed", "seed"), ("think_budget", "think_budget"),
                       ("max_tokens", "max_tokens")):
        value = getattr(args, arg)
        if value is not None:
            setattr(s, field, value)
    return s


def _looks_like_path(tag: str) -> bool:
    import os
    from pathlib import Path

    return (tag.lower().endswith(".gguf") or "/" in tag or os.sep in tag
            or tag.startswith(("~", ".")) or Path(tag).exists())


def _resolve(tag: str | None, *, ask: bool = False, ram_limit: int | None = None):
    """(path, stored model or None) for a TAG, a path, or the recommended model."""
    from pathlib import Path

    from r1local.catalog import load_catalog
    from r1local.errors import ModelFileError, UnknownModelError

    if tag is None:
        return _recommended(ask, ram_limit)
    if _looks_like_path(tag):
        p = Path(tag).expanduser()
        if not p.exists():
            near = sorted(x.name for x in p.parent.glob("*.gguf"))[:5] if p.parent.is_dir() else []
            raise ModelFileError(f"{tag} does not exist",
                                 hint=f"GGUF files there: {', '.join(near)}" if near else
                                 "give the path to a .gguf file, or a tag like 7b (`r1local list`)")
        return p, None
    catalog = load_catalog()
    try:
        from r1local.store import Store, resolve_gguf
    except ImportError:  # the store is not built yet: catalog names can only be suggested
        catalog.resolve(tag)
        raise UnknownModelError(f"'{tag}' is not downloaded",
                                hint=f"run `r1local pull {tag}`, or give a path to a .gguf") from None
    return resolve_gguf(tag, catalog, Store())


def _recommended(ask: bool, ram_limit: int | None):
    """The planner's pick for this machine: from the store, or pulled. At a terminal the
    user is asked first (``ask``); a script is not (as `ollama run` does), but stderr says
    what is being fetched and how big it is, so nobody wonders what the wait is."""
    import sys

    from r1local.catalog import load_catalog
    from r1local.errors import DoesNotFitError, UsageError

    try:
        from r1local.hub import pull
        from r1local.planner import recommend
        from r1local.store import Store, resolve_gguf
    except ImportError:
        raise UsageError("no model given: use `r1local run PATH.gguf` or `r1local run TAG`") from None
    from r1local.chat_view import fmt_bytes

    catalog = load_catalog()
    machine = _machine(ram_limit)
    plan = recommend(catalog, machine)
    if not plan.fits:
        raise DoesNotFitError(f"no R1 model fits this machine ({plan.reason})",
                              hint="see `r1local hw`, or name a model and add --force")
    ref = f"{plan.model}:{plan.quant}"
    store = Store()
    if store.find(ref, catalog) is not None:
        path, stored = resolve_gguf(ref, catalog, store)  # says so if its files are gone
        print(f"using {ref}, the recommended model for this machine", file=sys.stderr)
        return path, stored
    size = fmt_bytes(catalog.resolve(ref).variant.quant(plan.quant).total_size)
    if ask:
        try:
            answer = input(f"The recommended model for this machine is {ref} ({size}). "
                           "Download it now? [Y/n] ")
        except EOFError:  # Ctrl-D: the same as no
            answer = "n"
            print(file=sys.stderr)
        if answer.strip().lower() not in ("", "y", "yes"):
            raise UsageError(f"{ref} not downloaded", hint=f"`r1local pull {ref}` fetches it later")
    else:
        print(f"pulling {ref} ({size}), the recommended model for this machine; name a model "
              "to use another (`r1local run TAG`)", file=sys.stderr)
    stored = pull(ref, machine=machine, store=store)
    return stored.path, stored


def _plan(header, path, n_ctx, n_gpu_layers, *, machine=None, ram_limit=None):
    """(machine, plan) from the planner, or (None, None) where it is not available."""
    try:
        from r1local.planner import plan_gguf
    except ImportError:
        return None, None
    machine = machine or _machine(ram_limit, path.parent)
    return machine, plan_gguf(header, machine, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers)


def quant_name(header) -> str:
    from gguf.constants import LlamaFileType

    ft = header.get("general.file_type")
    try:
        return LlamaFileType(ft).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except (ValueError, TypeError):
        return "?"


def describe(engine, plan, stored, header) -> str:
    """The one start line: what was loaded and how."""
    from r1local.chat_view import fmt_bytes

    variant = (stored.name.split(":")[0] if stored is not None else None) or engine.name
    quant = (plan.quant if plan is not None and plan.quant else None) \
        or (stored.quant if stored is not None else None) or quant_name(header)
    n_layers = header.arch_value("block_count") or "?"
    if plan is not None:
        mem = f"GPU {fmt_bytes(plan.vram_bytes)} + RAM {fmt_bytes(plan.ram_bytes)}"
    else:
        mem = f"RAM ~{fmt_bytes(engine.path.stat().st_size)}"
    gpu = min(engine.n_gpu_layers, n_layers) if isinstance(n_layers, int) else engine.n_gpu_layers
    return (f"{variant} · {quant} · {gpu}/{n_layers} layers on GPU · {mem} · "
            f"context {engine.n_ctx} · {engine.n_threads} threads")


def _one_shot(engine, settings, prompt: str, args: argparse.Namespace) -> int:
    import json
    import sys

    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": prompt}]
    thinking, answer = [], []
    err_tty = sys.stderr.isatty()
    dim, reset = ("\x1b[2m", "\x1b[0m") if err_tty else ("", "")
    shown_thinking = False
    for chunk in engine.chat(messages, settings):
        if chunk.kind == "thinking":
            thinking.append(chunk.text)
            if not args.json and not args.hide_thinking:
                if not shown_thinking:
                    sys.stderr.write(f"{dim}Thinking…\n")
                    shown_thinking = True
                sys.stderr.write(chunk.text)
                sys.stderr.flush()
        else:
            if shown_thinking:
                sys.stderr.write(f"\n…done thinking.{reset}\n\n")
                sys.stderr.flush()
                shown_thinking = False
            answer.append(chunk.text)
            if not args.json:
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
    if shown_thinking:
        sys.stderr.write(f"{reset}\n")
    st = engine.last_stats
    if args.json:
        print(json.dumps({"model": engine.name, "thinking": "".join(thinking),
                          "answer": "".join(answer), "finish_reason": st.finish_reason,
                          "stats": st.as_dict()}, ensure_ascii=False))
        return 0
    if answer:
        sys.stdout.write("\n")
        sys.stdout.flush()
    if st.finish_reason == "loop":
        print("(stopped: the model was repeating itself)", file=sys.stderr)
    elif st.finish_reason == "length":
        print("(stopped: reached the token limit)", file=sys.stderr)
    if args.verbose:
        print(f"prompt {st.prompt_tokens} tokens at {st.prompt_tok_s:.1f} tok/s · reply "
              f"{st.completion_tokens} tokens at {st.decode_tok_s:.1f} tok/s · first token "
              f"{st.ttft_seconds:.2f} s", file=sys.stderr)
    return 0
