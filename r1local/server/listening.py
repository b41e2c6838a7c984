"""The listening socket, bound before uvicorn starts (by `r1local serve` and by tests'
background servers alike). A busy port is one line saying who holds it, when that can be
told, and how to pick another."""

from __future__ import annotations

import socket

from r1local.errors import UsageError

# what a server on the port answers to `GET /`, and what to call it then
_GREETINGS = (("Ollama is running", "Ollama"), ("r1local is running", "another r1local serve"))
_PROBE_SECONDS = 0.5


def listen(host: str, port: int) -> socket.socket:
    """Bind before starting uvicorn: a busy port is one clear line, and --port 0 works."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as err:
        sock.close()
        if err.errno in (98, 48):  # EADDRINUSE (Linux, macOS)
            holder = port_holder(host, port)
            by = f" by {holder}" if holder else ""
            raise UsageError(f"port {port} on {host} is already in use{by}",
                             hint="stop it, or pick another port: --port N, or "
                                  "R1LOCAL_HOST=host:N (OLLAMA_HOST is read too)") from None
        raise UsageError(f"cannot listen on {host}:{port}: {err.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def port_holder(host: str, port: int) -> str | None:
    """Which program listens on ``port``, in words ("Ollama (pid 812)"); None when neither
    the process table nor the server's own greeting tells."""
    process = _process_on(port)
    greeting = _greeting(host, port)
    if process is not None:
        name, pid = process
        if name.lower().startswith("ollama"):
            greeting = "Ollama"
        return f"{greeting or name} (pid {pid})"
    return greeting


def _process_on(port: int) -> tuple[str, int] | None:
    """(name, pid) of the process listening on ``port``, where this user may see it."""
    try:
        import psutil
    except ImportError:
        return None
    try:
        for conn in psutil.net_connections(kind="inet"):
            if (conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port
                    and conn.pid):
                return psutil.Process(conn.pid).name(), conn.pid
    except (psutil.Error, OSError):  # another user's process, or a system that hides them
        return None
    return None


def _greeting(host: str, port: int) -> str | None:
    """Ask the server on the port what it is: Ollama and r1local answer `GET /` in words."""
    target = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host in ("::", "[::]")
                                                           else host.strip("[]"))
    data = b""
    try:
        with socket.create_connection((target, port), timeout=_PROBE_SECONDS) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            while len(data) < 4096 and (part := s.recv(4096)):
                data += part
    except OSError:  # a timeout included: whatever came is enough
        pass
    text = data.decode("latin-1", "replace")
    return next((name for greet, name in _GREETINGS if greet in text), None)
