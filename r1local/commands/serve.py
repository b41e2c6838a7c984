"""`r1local serve`: Ollama- and OpenAI-compatible HTTP APIs on 127.0.0.1.

The app lives in r1local/server (the only place that imports FastAPI / uvicorn); this
module parses the flags, checks them, preloads --model, binds the socket and runs uvicorn.
"""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from r1local.server.config import (API_KEY_ENV, DEFAULT_HOST, DEFAULT_MAX_LOADED,
                                       DEFAULT_MAX_QUEUE, DEFAULT_PORT)

    parser.add_argument("--host", default=None,
                        help=f"address to listen on (default {DEFAULT_HOST}: this machine "
                        "only; or as R1LOCAL_HOST / OLLAMA_HOST say: host, host:port, "
                        "http://host:port)")
    parser.add_argument("--port", type=int, default=None,
                        help=f"port (default {DEFAULT_PORT}, Ollama's, or R1LOCAL_HOST's / "
                        "OLLAMA_HOST's; 0 picks a free one)")
    parser.add_argument("--model", metavar="TAG",
                        help="load this model at start and keep it loaded; requests that name "
                        "no model use it")
    parser.add_argument("--api-key", metavar="KEY", default=None,
                        help=f"require `Authorization: Bearer KEY` on every request "
                        f"(default: ${API_KEY_ENV})")
    parser.add_argument("--cors-origin", metavar="ORIGIN", action="append", default=[],
                        help="allow browser requests from this origin (repeatable; '*' for any)")
    parser.add_argument("--allow-host", metavar="NAME", action="append", default=[],
                        help="also answer requests whose Host header is NAME (repeatable; '*' "
                        "for any): besides localhost, IP addresses and --host, other names "
                        "are refused, which stops DNS-rebinding web pages")
    parser.add_argument("--allow-paths", metavar="DIR", action="append", default=[],
                        help="let requests name .gguf files inside DIR by path (repeatable); "
                        "by default requests name store models and catalog tags only")
    parser.add_argument("--max-body", metavar="SIZE", default="8M",
                        help="largest request body, e.g. 8M (default), 64K")
    parser.add_argument("--keep-alive", default="5m", metavar="DURATION",
                        help="how long an idle model stays loaded: 30s, 5m, 1h, 0 (unload after "
                        "each request), -1 (forever); default 5m")
    parser.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE, metavar="N",
                        help=f"requests that may wait per model before 503 (default "
                        f"{DEFAULT_MAX_QUEUE})")
    parser.add_argument("--max-loaded", type=int, default=DEFAULT_MAX_LOADED, metavar="N",
                        help=f"models kept loaded at once (default {DEFAULT_MAX_LOADED})")
    parser.add_argument("--ctx", type=int, metavar="N",
                        help="context length for every model (default: the planner's)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads per model (default: the planner's)")
    parser.add_argument("--open", action="store_true",
                        help="open the web chat (served at /) in your browser once listening")
    from r1local.rpc import add_rpc_argument

    add_rpc_argument(parser)
    from r1local.planner import EXPERTS_ON, EXPERTS_ON_HELP

    parser.add_argument("--experts-on", choices=EXPERTS_ON, default="auto", help=EXPERTS_ON_HELP)
    parser.add_argument("--parallel", type=int, metavar="N",
                        help="requests each model decodes together, each with its own context "
                        "(default: up to 4, as many as the memory allows; 1: one at a time)")


def run(args: argparse.Namespace) -> int:
    import sys

    from r1local.server.config import API_KEY_ENV, ServerConfig, exposure_warning
    from r1local.units import parse_size

    host, port = _address(args.host, args.port)
    config = ServerConfig(
        host=host, port=port, model=args.model,
        api_key=_api_key(args.api_key) or os.environ.get(API_KEY_ENV) or None,
        cors_origins=tuple(args.cors_origin), keep_alive=_keep_alive(args.keep_alive),
        max_queue=_at_least("--max-queue", args.max_queue, 0),
        max_loaded=_at_least("--max-loaded", args.max_loaded, 1), n_ctx=_ctx(args.ctx),
        n_threads=_at_least("--threads", args.threads, 1) if args.threads is not None else None,
        allow_hosts=tuple(args.allow_host), allow_paths=_folders(args.allow_paths),
        max_body=parse_size(args.max_body),
        rpc=_workers(args.rpc),
        parallel=_parallel(args.parallel),
        experts_on=args.experts_on,
    )
    _at_least("--port", port, 0)
    warning = exposure_warning(config.host, config.api_key)
    if warning:
        print(f"r1local: {warning}", file=sys.stderr, flush=True)
    if config.model:
        _check_model(config.model)  # an unknown --model fails before anything listens
    from r1local.server.listening import listen

    sock = listen(config.host, config.port)
    import asyncio

    try:
        return asyncio.run(_serve(config, sock, open_browser=getattr(args, "open", False)))
    except KeyboardInterrupt:  # Ctrl-C is how a server is stopped: not an error
        print("r1local: server stopped", file=sys.stderr)
        return 0
    finally:
        sock.close()


async def _serve(config, sock, open_browser: bool = False) -> int:
    import sys

    import uvicorn

    from r1local.errors import R1LocalError
    from r1local.server.app import create_app
    from r1local.server.errors import ApiError

    app = create_app(config)
    if config.model:
        try:
            slot = await app.state.manager.preload(config.model)
        except ApiError as err:
            raise R1LocalError(f"cannot serve --model {config.model}: {err.message}") from None
        from r1local.server.models import loaded_line

        print(f"r1local: {loaded_line(slot)}", file=sys.stderr)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"r1local: serving on http://{shown}:{port} (Ollama API /api/*, OpenAI API /v1/*)"
          f"{' with API key' if config.api_key else ''}; Ctrl-C stops", file=sys.stderr,
          flush=True)
    _log_to_stderr()
    if open_browser:
        _open_page(host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=5))
    try:
        await server.serve(sockets=[sock])
    finally:
        await app.state.manager.stop()
    return 0


def _log_to_stderr() -> None:
    """The server's own notes (a cancelled reply, ...) as `r1local: ...` lines on stderr."""
    import logging
    import sys

    log = logging.getLogger("r1local.server")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("r1local: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def page_url(host: str, port: int) -> str:
    """The web chat's address as a browser on this machine reaches it (a wildcard bind is
    reached through loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def _open_page(host: str, port: int) -> None:
    """Open the page in the user's browser; in a thread, as some browsers block until they
    exit, and the socket already listens, so the browser's request waits for uvicorn."""
    import sys
    import threading
    import webbrowser

    url = page_url(host, port)

    def go() -> None:
        if not webbrowser.open(url):
            print(f"r1local: no browser found here: open {url} yourself", file=sys.stderr,
                  flush=True)

    print(f"r1local: opening {url} in your browser", file=sys.stderr, flush=True)
    threading.Thread(target=go, daemon=True, name="r1local-open").start()


def _address(host: str | None, port: int | None) -> tuple[str, int]:
    """--host / --port, else R1LOCAL_HOST or OLLAMA_HOST (as Ollama reads it), else
    127.0.0.1:11434."""
    from r1local.errors import UsageError
    from r1local.server.config import DEFAULT_HOST, DEFAULT_PORT, address_from_env

    try:
        env = address_from_env(dict(os.environ))
    except ValueError as err:
        raise UsageError(str(err), hint="or give --host and --port") from None
    env_host, env_port = (env[0], env[1]) if env else (DEFAULT_HOST, DEFAULT_PORT)
    return (host if host is not None else env_host,
            port if port is not None else env_port)


def _check_model(name: str) -> None:
    from r1local.errors import R1LocalError
    from r1local.server.errors import ApiError
    from r1local.server.models import resolve_name

    try:
        resolve_name(name)
    except ApiError as err:
        raise R1LocalError(f"cannot serve --model {name}: {err.message}") from None


def _api_key(key: str | None) -> str | None:
    from r1local.errors import UsageError

    if key is not None and not key.strip():  # an unset shell variable: no auth, silently
        raise UsageError("--api-key is empty", hint="give a key, or leave the flag out to "
                         "serve without one")
    return key


def _ctx(n_ctx: int | None) -> int | None:
    from r1local.errors import UsageError
    from r1local.planner import check_ctx
    from r1local.server.limits import MAX_NUM_CTX

    check_ctx(n_ctx, "--ctx")
    if n_ctx is not None and n_ctx > MAX_NUM_CTX:
        raise UsageError(f"--ctx {n_ctx} is more than the {MAX_NUM_CTX} tokens a server allows")
    return n_ctx


def _folders(paths: list[str]) -> tuple[str, ...]:
    from pathlib import Path

    from r1local.errors import UsageError

    for p in paths:
        if not Path(p).expanduser().is_dir():
            raise UsageError(f"--allow-paths {p}: no such folder")
    return tuple(paths)


def _parallel(value: int | None) -> int | None:
    from r1local.batching import MAX_PARALLEL
    from r1local.errors import UsageError

    if value is not None and not 1 <= value <= MAX_PARALLEL:
        raise UsageError(f"--parallel must be 1 to {MAX_PARALLEL}")
    return value


def _workers(value: str | None) -> tuple[str, ...]:
    """--rpc (else $R1LOCAL_RPC), checked before anything listens."""
    from r1local.rpc import endpoints_from

    return tuple(endpoints_from(value) or ())


def _keep_alive(text: str) -> float:
    from r1local.errors import UsageError
    from r1local.server.config import parse_duration

    try:
        return parse_duration(text)
    except ValueError as err:
        raise UsageError(f"--keep-alive: {err}") from None


def _at_least(flag: str, value: int, low: int) -> int:
    from r1local.errors import UsageError

    if value < low:
        raise UsageError(f"{flag} must be at least {low} (got {value})")
    return value
