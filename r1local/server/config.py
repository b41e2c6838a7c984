"""Server settings and the small parsers they need (durations, loopback addresses)."""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass

DEFAULT_HOST = "127.0.0.1"
# Ollama's own port: every Ollama client (and the OpenAI clients' Ollama recipes) looks
# there with no setup. To run beside Ollama, give one of them another port.
DEFAULT_PORT = 11434
# where to listen, as Ollama reads OLLAMA_HOST: "host", "host:port", ":port",
# "http://host:port"; R1LOCAL_HOST wins over OLLAMA_HOST, --host/--port over both
HOST_ENVS = ("R1LOCAL_HOST", "OLLAMA_HOST")
DEFAULT_KEEP_ALIVE = 300.0  # seconds (Ollama's default: 5m)
DEFAULT_MAX_QUEUE = 512  # requests waiting per model (Ollama's OLLAMA_MAX_QUEUE default)
DEFAULT_MAX_LOADED = 3  # models kept loaded at once (Ollama's CPU default)
# request bodies are JSON prompts: 8 MiB is ~2M tokens of text, far past any context we plan
DEFAULT_MAX_BODY = 8 << 20
API_KEY_ENV = "R1LOCAL_API_KEY"

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


@dataclass
class ServerConfig:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    model: str | None = None  # loaded at start and kept (the default for requests without one)
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    keep_alive: float = DEFAULT_KEEP_ALIVE  # seconds; < 0 forever; 0 unload after each request
    max_queue: int = DEFAULT_MAX_QUEUE
    max_loaded: int = DEFAULT_MAX_LOADED
    n_ctx: int | None = None  # override the planner's context for every load
    n_threads: int | None = None  # override the planner's thread count
    # sequences each chat model decodes together (r1local.batching); None: the planner's
    # choice for each model (session.choose_parallel)
    parallel: int | None = None
    # Host names (besides loopback names, IP literals and --host) that may reach the API;
    # "*" turns the DNS-rebinding check off
    allow_hosts: tuple[str, ...] = ()
    # folders whose .gguf files requests may name by path (besides a --model path)
    allow_paths: tuple[str, ...] = ()
    max_body: int = DEFAULT_MAX_BODY  # bytes per request body
    # RPC workers (host:port) the chat models load over, each model in a child process
    # (r1local.rpc_child); empty: every model in this process
    rpc: tuple[str, ...] = ()
    # where a MoE model's routed experts go (`--experts-on`: auto, cpu, gpu), for every load
    experts_on: str = "auto"


def parse_duration(value: object) -> float:
    """Ollama's keep_alive: a number of seconds, or a Go duration ("5m", "1h30m", "-1").

    Returns seconds; negative means forever. Raises ValueError with a message for the user.
    """
    if isinstance(value, bool):
        raise ValueError("keep_alive must be a duration like \"5m\" or a number of seconds")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError("keep_alive must be finite")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("keep_alive must be a duration like \"5m\" or a number of seconds")
    text = value.strip()
    try:
        return float(text)  # "300", "-1"
    except ValueError:
        pass
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    pos, total = 0, 0.0
    for m in _PART.finditer(body):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not body or pos != len(body):
        raise ValueError(f"keep_alive {value!r} is not a duration (use e.g. \"5m\", \"30s\", \"1h\", 0 or -1)")
    return sign * total


def parse_host(value: str, what: str = "OLLAMA_HOST") -> tuple[str, int]:
    """(host, port) from an OLLAMA_HOST-style address; ValueError says what is wrong.
    A missing host is Ollama's 127.0.0.1, a missing port its 11434 (443 for https)."""
    text = value.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "http", text
    if scheme.lower() not in ("http", "https"):
        raise ValueError(f"{what}={value!r}: use host, host:port or http://host:port")
    rest = rest.split("/", 1)[0]
    default_port = 443 if scheme.lower() == "https" else DEFAULT_PORT
    if rest.startswith("["):  # [::1]:port
        end = rest.find("]")
        host, tail = rest[1:end], rest[end + 1:]
        port_text = tail[1:] if tail.startswith(":") else ""
    elif rest.count(":") == 1:
        host, port_text = rest.split(":")
    else:  # a bare name, or a bare IPv6 address
        host, port_text = rest, ""
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise ValueError(f"{what}={value!r}: the port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{what}={value!r}: the port must be 0-65535")
    return host or DEFAULT_HOST, port


def address_from_env(environ: dict[str, str]) -> tuple[str, int, str] | None:
    """(host, port, the variable it came from) from R1LOCAL_HOST or OLLAMA_HOST, if set."""
    for name in HOST_ENVS:
        value = environ.get(name, "").strip()
        if value:
            host, port = parse_host(value, name)
            return host, port, name
    return None


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The warning printed when the API is reachable from other machines without a key."""
    if is_loopback(host) or api_key:
        return None
    return (f"warning: serving on {host} without an API key: anyone who can reach this "
            f"address can use the models; set --api-key or {API_KEY_ENV}")
