"""The listening socket, bound before uvicorn starts (by `r1local serve` and by tests'
background servers alike)."""

from __future__ import annotations

import socket

from r1local.errors import UsageError


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
            raise UsageError(f"port {port} on {host} is already in use",
                             hint="stop the other server or pick another --port") from None
        raise UsageError(f"cannot listen on {host}:{port}: {err.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
