"""`r1local run [TAG] [PROMPT...]`: chat in the terminal, or answer one prompt and exit.

TAG is a path to a .gguf, or a model in the store (`7b`, `7b:q4_k_m`, an import name).
Without TAG the planner's recommendation for this machine is used: from the store, or
pulled (after asking, in a chat at a terminal; a script is told on stderr what is being
fetched, as `ollama run` does). With a prompt (or piped stdin) the answer goes to stdout and the reasoning to
stderr, so `r1local run 7b "q" > answer.txt` keeps only the answer.
"""

from __future__ import annotations

import argparse

from r1local.commands import add_min_speed, min_speed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tag", nargs="?", help="model: a .gguf path or a store/catalog tag "
                        "(default: the recommended model for this machine; a quoted prompt "
                        "of several words in its place asks that one)")
    parser.add_argument("prompt", nargs="*", help="answer this prompt and exit (stdin is read "
                        "when piped)")
    out = parser.add_argument_group("output")
    out.add_argument("--hide-thinking", action="store_true", help="do not print the reasoning")
    out.add_argument("--web", action="store_true",
                     help="chat in the browser instead: serve the model (`r1local serve "
                     "--model TAG --open`) and open the web chat")
    out.add_argument("--json", action="store_true",
                     help="print one JSON object: thinking, answer and stats")
    out.add_argument("--verbose", action="store_true", help="llama.cpp's own log, and stats")
    out.add_argument("--format", metavar="json|SCHEMA.json",
                     help="the answer is JSON: `json` for any JSON object, or a JSON schema "
                     "file it must match (the reasoning stays free)")
    load = parser.add_argument_group("loading (override the plan)")
    load.add_argument("--ctx", type=int, metavar="N", help="context length in tokens")
    load.add_argument("--gpu-layers", type=int, metavar="N", help="layers to offload to the GPU")
    load.add_argument("--threads", type=int, metavar="N", help="CPU threads")
    load.add_argument("--force", action="store_true",
                      help="load even when the plan says it does not fit")
    add_min_speed(load)
    from r1local.rpc import add_rpc_argument

    add_rpc_argument(load)
    from r1local.planner import EXPERTS_ON, EXPERTS_ON_HELP

    load.add_argument("--experts-on", choices=EXPERTS_ON, default="auto", help=EXPERTS_ON_HELP)
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
    gen.add_argument("--answer-reserve", type=int, metavar="N",
                     help="tokens kept for the answer: the reasoning is closed when only this "
                     "much room is left (default: an eighth of the context, 64-2048; 0: off)")
    gen.add_argument("--samples", type=int, metavar="K",
                     help="answer K times, decoded together, and print the majority answer "
                     "with its votes (the R1 paper's cons@K; --json: every sample)")
    gen.add_argument("--system", metavar="TEXT", help="system prompt (for R1 it is folded "
                     "into the first message, as DeepSeek advises)")


# ---- everything below runs only inside `run` (heavy imports are local) -----------------

def run(args: argparse.Namespace) -> int:
    import sys

    from r1local import session
    from r1local.errors import UsageError

    ram_limit = _check_numbers(args)
    if getattr(args, "web", False):
        return _web(args, ram_limit)
    from r1local.rpc import endpoints_from

    workers = endpoints_from(args.rpc)  # a malformed list is refused before anything loads
    grammar = _format_grammar(args.format)  # a bad schema is refused before any model loads
    tag, words = _split_tag(args.tag, args.prompt)
    prompt = " ".join(words)
    interactive = sys.stdin.isatty()
    if tag is None:  # only a chat at a terminal has someone to ask before a download
        tag = _recommended(ask=interactive and not prompt.strip(), ram_limit=ram_limit,
                           min_tok_s=min_speed(args))
    model = session.locate(tag)
    machine = session.machine(ram_limit, model.path.parent)
    warn = lambda text: print(f"r1local: warning: {text}", file=sys.stderr)  # noqa: E731

    if not interactive:
        piped = sys.stdin.read()
        if piped.strip():
            prompt = f"{prompt}\n\n{piped.strip()}" if prompt.strip() else piped.strip()
        if not prompt.strip():
            raise UsageError("nothing to answer: give a prompt, or pipe text into stdin")

    samples = args.samples or 1
    if samples > 1 and not prompt.strip():
        raise UsageError("--samples answers one prompt: give the prompt with it")
    if samples > 1 and workers:
        raise UsageError("--samples does not work with --rpc yet: drop one of them")
    parallel = {"parallel": samples} if samples > 1 else {}
    open_model = session.open_model
    if workers:  # llama.cpp aborts a process that loses a worker: the model runs in a child
        from r1local.rpc_child import open_model

    def load(n_ctx: int | None, force: bool, more: dict = parallel):
        return open_model(model, ctx=n_ctx, gpu_layers=args.gpu_layers,
                                  threads=args.threads, ram_limit=ram_limit, force=force,
                                  on=machine, verbose=args.verbose or None, warn=warn,
                                  rpc=workers, experts_on=args.experts_on, **more)

    engine, plan, stored = load(args.ctx, args.force)
    try:
        settings = _settings(args)
        settings.grammar = grammar
        if prompt.strip():
            if engine.rpc_split is not None:  # where the layers went is worth a line here too
                print(f"r1local: {engine.rpc_split.line()}", file=sys.stderr)
            if samples > 1:
                return _samples_shot(engine, plan, settings, prompt, args)
            return _one_shot(engine, plan, settings, prompt, args)

        def reload(n_ctx: int, sequences: int | None = None):
            # /set context, /set samples: what the user chose, so no refusal
            if sequences is not None and workers:
                raise UsageError("samples do not work with --rpc yet")
            more = {"parallel": sequences} if sequences else parallel
            return load(n_ctx, True, more)[0]

        from r1local.locations import history_file
        from r1local.repl import Repl

        repl = Repl(engine, settings, system=args.system, show_thinking=not args.hide_thinking,
                    reload=reload, describe=describe(engine, plan, stored),
                    history_path=history_file())
        try:
            return repl.run()
        finally:
            engine = repl.engine  # /set context may have replaced it
    finally:
        engine.close()


def _web(args: argparse.Namespace, ram_limit: int | None) -> int:
    """`run --web [TAG]`: `serve --model TAG --open` (the recommended model without TAG).
    The page has its own sampling settings, so only the loading flags carry over."""
    import sys

    from r1local.commands import serve
    from r1local.errors import UsageError

    tag, words = _split_tag(args.tag, args.prompt)
    if words:
        raise UsageError("--web opens a chat in the browser: give no prompt with it")
    if tag is None:
        tag = _recommended(ask=sys.stdin.isatty(), ram_limit=ram_limit,
                           min_tok_s=min_speed(args))
    parser = argparse.ArgumentParser(prog="r1local serve")
    serve.add_arguments(parser)
    flags = ["--model", tag, "--open"]
    if args.rpc is not None:
        flags += ["--rpc", args.rpc]
    if args.ctx is not None:
        flags += ["--ctx", str(args.ctx)]
    if args.threads is not None:
        flags += ["--threads", str(args.threads)]
    return serve.run(parser.parse_args(flags))


def _check_numbers(args: argparse.Namespace) -> int | None:
    """Refuse nonsense before anything loads; returns --ram in bytes (None: not given)."""
    from r1local.errors import UsageError

    from r1local.planner import check_ctx

    check_ctx(args.ctx, "--ctx")
    from r1local.batching import MAX_PARALLEL

    if args.samples is not None and not 1 <= args.samples <= MAX_PARALLEL:
        raise UsageError(f"--samples must be 1 to {MAX_PARALLEL}")
    for name in ("threads", "max_tokens"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive number")
    for name in ("gpu_layers", "think_budget", "top_k", "answer_reserve"):
        value = getattr(args, name)
        if value is not None and value < 0:
            raise UsageError(f"--{name.replace('_', '-')} cannot be negative")
    for name in ("temperature", "top_p"):
        value = getattr(args, name)
        if value is not None and not 0 <= value <= (1 if name == "top_p" else 5):
            raise UsageError(f"--{name.replace('_', '-')} {value} is out of range")
    if args.ram is None:
        return None
    from r1local.units import parse_size

    return parse_size(args.ram)


def _format_grammar(value: str | None) -> str | None:
    if value is None:
        return None
    from r1local.structured import load_cli_format, schema_grammar

    return schema_grammar(load_cli_format(value))


def _split_tag(tag: str | None, prompt: list[str]) -> tuple[str | None, list[str]]:
    """(tag, prompt words). No model name has a space, so `r1local run "why is the sky
    blue?"` is a prompt for the recommended model, not a model called that; a missing
    "my models/x.gguf" stays a path, to be reported as missing."""
    from pathlib import Path

    if (tag is not None and len(tag.split()) > 1 and not tag.lower().endswith(".gguf")
            and not Path(tag).expanduser().exists()):
        return None, [tag, *prompt]
    return tag, list(prompt)


def _settings(args: argparse.Namespace):
    from r1local.engine import GenerationSettings

    s = GenerationSettings()
    for arg, field in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"),
                       ("seed", "seed"), ("think_budget", "think_budget"),
                       ("max_tokens", "max_tokens"), ("answer_reserve", "answer_reserve")):
        value = getattr(args, arg)
        if value is not None:
            setattr(s, field, value)
    return s


def _recommended(ask: bool, ram_limit: int | None, min_tok_s: float | None) -> str:
    """The store name of the planner's pick for this machine, pulled first if needed. At a
    terminal the user is asked first (``ask``); a script is not (as `ollama run` does), but
    stderr says what is being fetched and how big it is, so nobody wonders what the wait is."""
    import sys

    from r1local import session
    from r1local.catalog import load_catalog
    from r1local.errors import DoesNotFitError, UsageError
    from r1local.store import Store
    from r1local.units import fmt_bytes

    catalog = load_catalog()
    store = Store()
    machine = session.machine(ram_limit, store.root)
    plan = session.recommendation(catalog, machine, min_tok_s)
    if not plan.fits:
        raise DoesNotFitError(f"no R1 model fits this machine ({plan.reason})",
                              hint="see `r1local hw`, or name a model and add --force")
    ref = f"{plan.model}:{plan.quant}"
    if store.find(ref, catalog) is not None:
        print(f"using {ref}, the recommended model for this machine", file=sys.stderr)
        return ref
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
    return session.pull_model(ref, on=machine, store=store).name


def describe(engine, plan, stored) -> str:
    """The one start line: what was loaded and how."""
    from r1local.planner import TYPICAL_REPLY_TOKENS
    from r1local.units import fmt_bytes, fmt_duration

    variant = (stored.name.split(":")[0] if stored is not None else None) or engine.name
    speed = (f" · ~{plan.tok_s_low:.1f}-{plan.tok_s_high:.1f} tok/s, ~"
             f"{fmt_duration(plan.reply_seconds)} for a {TYPICAL_REPLY_TOKENS:,}-token reply"
             if plan.tok_s_high > 0 else "")
    split = getattr(engine, "rpc_split", None)
    where = (split.line() if split is not None else
             f"{plan.layers_on_gpu}/{plan.n_layers} layers on GPU · "
             f"GPU {fmt_bytes(plan.vram_bytes)} + RAM {fmt_bytes(plan.ram_bytes)}")
    if split is not None:
        speed = ""  # the planner's speed range knows nothing of the network yet
    return (f"{variant} · {plan.quant} · {where} · "
            f"context {engine.n_ctx} · {engine.n_threads} threads{speed}")


def _one_shot(engine, plan, settings, prompt: str, args: argparse.Namespace) -> int:
    import json
    import sys

    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": prompt}]
    thinking, answer = [], []
    err_tty = sys.stderr.isatty()
    dim, reset = ("\x1b[2m", "\x1b[0m") if err_tty else ("", "")
    shown_thinking = False
    from r1local.errors import R1LocalError

    try:
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
                if not args.json and settings.grammar is None:  # JSON: printed once it is whole
                    sys.stdout.write(chunk.text)
                    sys.stdout.flush()
    except R1LocalError:  # a worker lost mid-reply: the error gets a line of its own
        if answer and not args.json and settings.grammar is None:
            sys.stdout.write("\n")
            sys.stdout.flush()
        if shown_thinking:
            sys.stderr.write(f"{reset}\n")
        raise
    if shown_thinking:
        sys.stderr.write(f"{reset}\n")
    st = engine.last_stats
    cut_short = st.finish_reason == "length" and not "".join(answer).strip()
    if args.json:  # (a script reads finish_reason; the exit code says it too)
        print(json.dumps({"model": engine.name, "thinking": "".join(thinking),
                          "answer": "".join(answer), "finish_reason": st.finish_reason,
                          "stats": st.as_dict(), "plan": plan.as_dict()}, ensure_ascii=False))
        return 1 if cut_short else 0
    if settings.grammar is not None:
        if st.finish_reason in ("length", "loop", "cancelled"):
            # the grammar holds only for a finished answer: a cut one is not valid JSON
            print(f"r1local: error: the JSON answer was cut off ({st.finish_reason} after "
                  f"{st.completion_tokens} tokens): give it more room (--max-tokens, --ctx)",
                  file=sys.stderr)
            return 1
        sys.stdout.write("".join(answer))
    if answer:
        sys.stdout.write("\n")
        sys.stdout.flush()
    if cut_short:
        # nothing on stdout: the user must learn why, and a script must see it failed
        limit = (f"--max-tokens {settings.max_tokens}" if settings.max_tokens is not None
                 and st.completion_tokens >= settings.max_tokens else f"its context of {st.n_ctx}")
        print(f"r1local: error: the reply reached {limit} tokens before any answer "
              f"({st.thinking_tokens} tokens of reasoning): give it more room (--ctx, "
              "--max-tokens) or less reasoning (--think-budget N)", file=sys.stderr)
        return 1
    if st.finish_reason == "loop":
        print("(stopped: the model was repeating itself)", file=sys.stderr)
    elif st.finish_reason == "length":
        print("(stopped: reached the token limit)", file=sys.stderr)
    if args.verbose:
        print(f"prompt {st.prompt_tokens} tokens at {st.prompt_tok_s:.1f} tok/s · reply "
              f"{st.completion_tokens} tokens at {st.decode_tok_s:.1f} tok/s · first token "
              f"{st.ttft_seconds:.2f} s", file=sys.stderr)
    return 0


def _samples_shot(engine, plan, settings, prompt: str, args: argparse.Namespace) -> int:
    """`--samples K`: K replies decoded together, each one's answer extracted, the majority
    printed with its votes (`7  (5 of 8 samples)`); a line per sample on stderr."""
    import json
    import sys

    from r1local.vote import majority

    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": prompt}]
    k = args.samples
    streams = engine.chat_samples(messages, settings.for_samples(k))
    if not args.json:
        print(f"r1local: {k} samples, decoded together", file=sys.stderr)
    results = []
    for i, stream in enumerate(streams, 1):
        parts = {"thinking": [], "answer": []}
        for chunk in stream:
            parts[chunk.kind].append(chunk.text)
        st = stream.stats
        results.append({"thinking": "".join(parts["thinking"]),
                        "answer": "".join(parts["answer"]),
                        "finish_reason": st.finish_reason, "stats": st.as_dict()})
    vote = majority([r["answer"] for r in results])
    for i, (r, answer) in enumerate(zip(results, vote.answers), 1):
        r["extracted"] = answer
        if not args.json:
            st = r["stats"]
            print(f"r1local: sample {i}: {answer or '(no answer)'} · {st['completion_tokens']} "
                  f"tokens · {r['finish_reason']}", file=sys.stderr)
    if args.json:
        print(json.dumps({"model": engine.name, "vote": vote.as_dict(), "samples": results,
                          "plan": plan.as_dict()}, ensure_ascii=False))
    else:
        print(vote.line())
    return 0 if vote.votes else 1
