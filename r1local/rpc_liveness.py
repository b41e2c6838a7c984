"""TCP keepalive and a user timeout on llama.cpp's RPC connections, so that a peer behind a
pulled cable (or a machine that froze or lost power) is counted gone instead of waited for.

llama.cpp's RPC sockets are plain blocking TCP with no timeout: a worker that stops
answering at the network level leaves its client in recv() for ever, and a client that
vanishes leaves its worker serving nobody (a worker serves one client at a time, so it
never takes the next). The kernel can tell: keepalive probes find a silent peer while the
line is idle, and TCP_USER_TIMEOUT ends a connection whose sent bytes go unacknowledged.
llama.cpp sets neither and opens its sockets itself, so a thread finds them among this
process's descriptors and sets both. A connection so ended fails llama.cpp's next read:
the client's process aborts (r1local.rpc_child turns that into a lost-worker error) and
the worker goes back to taking clients.

Only the peer's kernel has to answer, so a worker busy with a long computation, or a
client idle for hours between requests, is never taken for dead.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Callable, Iterable

DEAD_AFTER_S = 30.0  # silence at the TCP level that ends a connection
DEAD_ENV = "R1LOCAL_RPC_DEAD_S"
SCAN_EVERY_S = 0.5  # llama.cpp opens its connections when it likes; look this often
FD_DIRS = ("/proc/self/fd", "/dev/fd")

Address = tuple  # (host, port[, flowinfo, scope]) as getpeername/getsockname give it
Match = Callable[[Address, Address], bool]  # (local, peer) -> watch this connection


def dead_after() -> float:
    """Seconds of TCP silence that end an RPC connection: $R1LOCAL_RPC_DEAD_S, else 30."""
    text = os.environ.get(DEAD_ENV, "").strip()
    try:
        value = float(text) if text else DEAD_AFTER_S
    except ValueError:
        return DEAD_AFTER_S
    return value if value >= 1 else DEAD_AFTER_S


def guard(sock: socket.socket, dead_s: float) -> None:
    """Keepalive probes after dead_s/3 of idle line, then every dead_s/6; the connection
    ends once dead_s pass with nothing acknowledged (where the OS has TCP_USER_TIMEOUT;
    elsewhere after three unanswered probes)."""
    idle, interval = max(1, int(dead_s / 3)), max(1, int(dead_s / 6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    # TCP_KEEPIDLE on Linux and the BSDs, TCP_KEEPALIVE on macOS
    keepidle = getattr(socket, "TCP_KEEPIDLE", None) or getattr(socket, "TCP_KEEPALIVE", None)
    for opt, value in ((keepidle, idle), (getattr(socket, "TCP_KEEPINTVL", None), interval),
                       (getattr(socket, "TCP_KEEPCNT", None), 3),
                       (getattr(socket, "TCP_USER_TIMEOUT", None), int(dead_s * 1000))):
        if opt is not None:
            sock.setsockopt(socket.IPPROTO_TCP, opt, value)


def _fd_dir() -> str | None:
    return next((d for d in FD_DIRS if os.path.isdir(d)), None)


def guard_matching(match: Match, dead_s: float, seen: set[tuple[int, int]] | None = None) -> int:
    """One look over this process's TCP connections: guard each one ``match`` accepts
    and ``seen`` (the sockets already done, as (device, inode)) does not hold. Returns how
    many were guarded now."""
    where = _fd_dir()
    if where is None:
        return 0
    done = 0
    for name in os.listdir(where):
        try:
            fd = int(name)
            st = os.stat(fd)
            key = (st.st_dev, st.st_ino)
            if seen is not None and key in seen:
                continue
            dup = os.dup(fd)  # the descriptor stays llama.cpp's; ours is closed below
        except (ValueError, OSError):
            continue
        try:
            sock = socket.socket(fileno=dup)
        except OSError:  # not a socket
            os.close(dup)
            continue
        with sock:
            try:
                if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
                    continue
                local, peer = sock.getsockname(), sock.getpeername()
            except OSError:  # a listening or not yet connected socket
                continue
            if not match(local, peer):
                continue
            try:
                guard(sock, dead_s)
            except OSError:
                continue
            done += 1
            if seen is not None:
                seen.add(key)
    return done


def watch(match: Match, *, name: str = "r1local-rpc-liveness") -> threading.Thread:
    """A daemon thread that guards every connection ``match`` accepts as it appears."""
    dead_s = dead_after()
    seen: set[tuple[int, int]] = set()

    def loop() -> None:
        while True:
            guard_matching(match, dead_s, seen)
            time.sleep(SCAN_EVERY_S)

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread


def _addresses(host: str) -> set[str]:
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
    except (socket.gaierror, UnicodeError):
        return set()


def to_workers(endpoints: Iterable[str]) -> Match:
    """A client's connections to these workers (host:port, as --rpc names them)."""
    from r1local.rpc import split_endpoint

    wanted: set[tuple[str, int]] = set()
    for ep in endpoints:
        host, port = split_endpoint(ep)
        wanted |= {(_unmapped(addr), port) for addr in _addresses(host)}
    return lambda local, peer: (_unmapped(peer[0]), peer[1]) in wanted


def from_clients(port: int) -> Match:
    """A worker's connections from its clients: those accepted on its own port."""
    return lambda local, peer: local[1] == port


def _unmapped(addr: str) -> str:
    return addr[7:] if addr.startswith("::ffff:") else addr
