"""llama.cpp's RPC backend through ctypes: serve this machine's device to other r1local
processes (`r1local worker`), and make remote workers devices of this process (`--rpc`).

The wheel install.sh builds carries libggml-rpc (GGML_RPC=ON); its functions are reached
through the wheel's own libggml, the one llama_cpp loads, so that a device registered here
is one llama.cpp's model loader sees.

llama.cpp's RPC client aborts the whole process on a worker it cannot reach or that speaks
another protocol version, so `connect` first says hello to each worker itself, over a plain
socket, and turns every failure into a one-line error naming the worker. It also aborts
when a connection drops later, so a model that uses workers runs in a child process of its
own (r1local.rpc_child).
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from r1local.errors import R1LocalError, UsageError

DEFAULT_PORT = 50052
RPC_ENV = "R1LOCAL_RPC"  # workers for every command that loads, as --rpc
LOOPBACK = "127.0.0.1"
# The RPC protocol this build's llama.cpp speaks (ggml-rpc.h, llama-cpp-python 0.3.36):
# the client aborts on another major version or a newer minor one.
PROTO_MAJOR, PROTO_MINOR = 7, 0
HELLO_CMD = 14          # RPC_CMD_HELLO, fixed across versions
CONN_CAPS = 24          # bytes of transport capabilities in the hello messages
HELLO_TIMEOUT_S = 5.0   # a worker busy with another client does not answer its hello
DEV_CPU, DEV_GPU, DEV_IGPU = 0, 1, 2  # enum ggml_backend_dev_type
# struct ggml_backend_device (ggml-backend-impl.h): 15 interface pointers, reg, context
DEVICE_WORDS, GET_MEMORY_SLOT, INIT_BACKEND_SLOT = 17, 2, 5

# llama.cpp's CPU backend runs a graph on OpenMP threads, which by GOMP's default spin for
# 300,000 rounds (milliseconds) after each graph before they sleep. Over RPC a token's layers
# run in one process after another, so where they share cores (loopback, or a worker beside
# the client) the spinning threads of the process that just finished take the cores from the
# one whose turn it is: two loopback workers decoded at 0.49x of one process. A short spin
# still covers the gaps between a graph's ops. Set before libggml loads; the user's own wins.
OMP_SPIN = ("GOMP_SPINCOUNT", "3000")

SECURITY_NOTE = (
    "llama.cpp's RPC protocol has no authentication and no encryption: anyone who can reach "
    "this port can run code on this machine's memory. Reach it only over a trusted network, "
    "or bind 127.0.0.1 and tunnel: ssh -L {port}:127.0.0.1:{port} <this host>")


class RpcError(R1LocalError):
    """A worker that cannot be reached or served, or a build without RPC."""


@dataclass(frozen=True)
class Worker:
    """One remote device as this process sees it."""

    endpoint: str  # host:port as the user wrote it
    free_bytes: int  # what the worker offers (its --mem)
    total_bytes: int
    device: int = 0  # ggml device handle in this process (0 until registered)


def spin_briefly(env: dict | None = None) -> dict:
    """Shorten the OpenMP threads' idle spin in `env` (this process's environment by default,
    so call it before llama_cpp is imported); returns `env`."""
    env = os.environ if env is None else env
    env.setdefault(*OMP_SPIN)
    return env


# ---------------------------------------------------------------------------
# The libraries

_lib: ctypes.CDLL | None = None


def _ggml() -> ctypes.CDLL:
    """The wheel's libggml with the RPC and registry functions typed (RpcError without)."""
    global _lib
    if _lib is not None:
        return _lib
    import llama_cpp  # loads libggml and its backends first, so ctypes gets the same copy

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    from r1local.hardware import GGML_NAMES  # libllama's own copy first (see there)

    names = [lib_dir / n for n in GGML_NAMES if (lib_dir / n).exists()]
    if not names:
        raise RpcError(f"no libggml next to llama_cpp in {lib_dir}: run ./install.sh again")
    lib = ctypes.CDLL(str(names[0]))
    vp, sz = ctypes.c_void_p, ctypes.c_size_t
    sig = {
        "ggml_backend_reg_by_name": (vp, [ctypes.c_char_p]),
        "ggml_backend_reg_get_proc_address": (vp, [vp, ctypes.c_char_p]),
        "ggml_backend_register": (None, [vp]),
        "ggml_backend_reg_dev_count": (sz, [vp]),
        "ggml_backend_reg_dev_get": (vp, [vp, sz]),
        "ggml_backend_dev_count": (sz, []),
        "ggml_backend_dev_get": (vp, [sz]),
        "ggml_backend_dev_type": (ctypes.c_int, [vp]),
        "ggml_backend_dev_name": (ctypes.c_char_p, [vp]),
        "ggml_backend_dev_description": (ctypes.c_char_p, [vp]),
        "ggml_backend_dev_memory": (None, [vp, ctypes.POINTER(sz), ctypes.POINTER(sz)]),
        "ggml_backend_dev_by_type": (vp, [ctypes.c_int]),
        "ggml_backend_get_device": (vp, [vp]),
    }
    for name, (res, args) in sig.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    _lib = lib
    return lib


def _rpc_fn(name: str, restype, argtypes):
    """One of ggml-rpc's functions, asked of the RPC backend's registry entry (how llama.cpp
    itself finds them): RpcError when this build has no RPC backend."""
    lib = _ggml()
    reg = lib.ggml_backend_reg_by_name(b"RPC")
    if not reg:
        raise RpcError("this llama-cpp-python was built without llama.cpp's RPC backend",
                       hint="run ./install.sh --rebuild, which builds it with -DGGML_RPC=ON")
    addr = lib.ggml_backend_reg_get_proc_address(reg, name.encode())
    if not addr:
        raise RpcError(f"llama.cpp's RPC backend has no {name}: run ./install.sh --rebuild")
    return ctypes.CFUNCTYPE(restype, *argtypes)(addr)


def available() -> bool:
    """Whether the installed llama.cpp has its RPC backend."""
    try:
        return bool(_ggml().ggml_backend_reg_by_name(b"RPC"))
    except (ImportError, OSError, R1LocalError):
        return False


def _memory(dev: int) -> tuple[int, int]:
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    _ggml().ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
    return int(free.value), int(total.value)


# ---------------------------------------------------------------------------
# Endpoints

def parse_endpoints(text: str | Sequence[str]) -> list[str]:
    """'host:port,host:port' (or a list of them) -> checked endpoints, in order."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for raw in (p.strip() for p in parts):
        if not raw:
            continue
        host, sep, port = raw.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"bad RPC worker '{raw}'", hint="write host:port, e.g. 192.168.1.7:50052")
        if raw in out:
            raise UsageError(f"RPC worker {raw} is listed twice")
        out.append(raw)
    if not out:
        raise UsageError("--rpc needs at least one host:port")
    return out


def add_rpc_argument(parser) -> None:
    """`--rpc host:port,...` (default $R1LOCAL_RPC), the same on every verb that loads."""
    parser.add_argument("--rpc", metavar="HOST:PORT,...", default=None,
                        help="run some of the layers on these `r1local worker`s, in this "
                        f"order (default: ${RPC_ENV}); the planner splits by the memory each "
                        "offers")


def endpoints_from(value: str | None) -> list[str] | None:
    """--rpc, or $R1LOCAL_RPC when it is not given, checked; None: no workers."""
    text = value if value is not None else os.environ.get(RPC_ENV, "")
    return parse_endpoints(text) if text.strip() else None


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """(host, port) of a host:port (an IPv6 host in brackets) that parse_endpoints passed."""
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


def hello(endpoint: str, timeout: float = HELLO_TIMEOUT_S) -> tuple[int, int, int]:
    """The worker's protocol version, asked over a socket of our own: RpcError (naming the
    worker) when it is down, busy, not an RPC worker, or speaks another version."""
    host, port = split_endpoint(endpoint)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(bytes([HELLO_CMD]) + struct.pack("<Q", CONN_CAPS) + bytes(CONN_CAPS))
            head = _recv(sock, 8)
            (size,) = struct.unpack("<Q", head)
            if size < 3 or size > 4096:
                raise RpcError(f"RPC worker {endpoint} answered with something that is not "
                               "llama.cpp's RPC protocol")
            major, minor, patch = _recv(sock, size)[:3]
    except socket.timeout:
        raise RpcError(f"RPC worker {endpoint} did not answer within {timeout:g} s",
                       hint="is it serving another r1local process? a worker serves one at a time") from None
    except OSError as err:
        why = err.strerror or str(err)
        raise RpcError(f"cannot reach RPC worker {endpoint}: {why}",
                       hint="start it there with `r1local worker`, and check the address and port") from None
    if major != PROTO_MAJOR or minor > PROTO_MINOR:
        raise RpcError(f"RPC worker {endpoint} speaks protocol {major}.{minor}.{patch}, this "
                       f"r1local's llama.cpp {PROTO_MAJOR}.{PROTO_MINOR}",
                       hint="install the same r1local version on both machines")
    return major, minor, patch


def _recv(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise OSError(0, "it closed the connection")
        data += chunk
    return data


_registered: dict[str, Worker] = {}


def local_gpu_count() -> int:
    """GPUs of this process's own llama.cpp build (llama.cpp lists them after RPC workers)."""
    lib = _ggml()
    remote = {w.device for w in _registered.values()}
    return sum(1 for i in range(lib.ggml_backend_dev_count())
               if (dev := lib.ggml_backend_dev_get(i)) not in remote
               and lib.ggml_backend_dev_type(dev) == DEV_GPU)


def connect(endpoints: Sequence[str]) -> list[Worker]:
    """Make each worker a llama.cpp device of this process (as llama.cpp's own --rpc does:
    add the server, register its backend), with the memory it offers, asked of the worker.
    Idempotent: a worker already registered is not registered again."""
    add_server = _rpc_fn("ggml_backend_rpc_add_server", ctypes.c_void_p, [ctypes.c_char_p])
    lib = _ggml()
    workers = []
    for ep in endpoints:
        if ep in _registered:
            workers.append(_registered[ep])
            continue
        hello(ep)
        reg = add_server(ep.encode())
        if not reg:
            raise RpcError(f"RPC worker {ep} offers no device")
        lib.ggml_backend_register(reg)
        dev = lib.ggml_backend_reg_dev_get(reg, 0)
        free, total = _memory(dev)
        w = Worker(ep, free, total, int(dev))
        _registered[ep] = w
        workers.append(w)
    return workers


# ---------------------------------------------------------------------------
# Serving

def check_bind(host: str, allow_remote: bool) -> str:
    """The address to bind: an IP address (names are resolved); anything but loopback needs
    ``allow_remote``. UsageError on a bad address or a refused one."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise UsageError(f"bad address '{host}' for --host", hint="use an IP address of this machine, e.g. 127.0.0.1") from None
    addr = str(infos[0][4][0])
    if not ipaddress.ip_address(addr).is_loopback and not allow_remote:
        raise UsageError(f"refusing to serve on {host}: llama.cpp's RPC protocol has no "
                         "authentication or encryption",
                         hint="add --allow-remote on a trusted network, or keep 127.0.0.1 and use an SSH tunnel")
    return addr


def check_port_free(addr: str, port: int) -> None:
    """UsageError when ``port`` cannot be bound on ``addr`` (llama.cpp would only print
    that it failed to create its socket)."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        if os.name != "nt":  # as llama.cpp's server binds (on Windows the flag means more):
            # a worker restarted on its port need not wait out its old connections' TIME_WAIT
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((addr, port))
        except OSError as err:
            if err.errno in (98, 48, 10048):  # EADDRINUSE on Linux, macOS, Windows
                raise UsageError(f"port {port} on {addr} is already in use",
                                 hint="another worker may be serving there; pick one with --port") from None
            raise UsageError(f"cannot serve on {addr}:{port}: {err.strerror or err}",
                             hint="use an address of this machine with --host") from None


def serving_device() -> int:
    """What a worker serves: the first GPU of a GPU build, else the CPU (as rpc-server does)."""
    lib = _ggml()
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        if lib.ggml_backend_dev_type(dev) in (DEV_GPU, DEV_IGPU):
            return int(dev)
    dev = lib.ggml_backend_dev_by_type(DEV_CPU)
    if not dev:
        raise RpcError("llama.cpp reports no device to serve")
    return int(dev)


def device_info(dev: int) -> tuple[str, bool, int, int]:
    """(description, is_gpu, free, total) of a device of this process."""
    lib = _ggml()
    name = (lib.ggml_backend_dev_description(dev) or lib.ggml_backend_dev_name(dev) or b"?")
    free, total = _memory(dev)
    return name.decode(errors="replace"), lib.ggml_backend_dev_type(dev) != DEV_CPU, free, total


_keep: list[object] = []  # the proxy device and its callbacks live as long as the process


def _offering(dev: int, offer: int) -> int:
    """A device that is ``dev`` in all but the memory it reports: ``offer`` bytes free.

    The RPC server answers a client's memory question with what its device reports, and
    llama.cpp has no option for less. So the proxy is a copy of the device's struct with two
    interface entries replaced: get_memory, and init_backend, which points the backend it
    makes back at the proxy (the server asks the backend for its device). The layout is
    llama.cpp's internal one (ggml-backend-impl.h); 0 when it does not look as expected."""
    words = (ctypes.c_void_p * DEVICE_WORDS).from_address(dev)
    proxy = (ctypes.c_void_p * DEVICE_WORDS)(*words)
    real_init = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p)(words[INIT_BACKEND_SLOT])
    total = _memory(dev)[1]
    proxy_addr = ctypes.addressof(proxy)

    @ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t))
    def get_memory(_dev, free_p, total_p):
        free_p[0] = offer
        total_p[0] = max(total, offer)

    @ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p)
    def init_backend(_dev, params):
        backend = real_init(dev, params)
        if backend:
            # struct ggml_backend: guid, its interface, then the device pointer
            slots = (ctypes.c_void_p * 64).from_address(backend)
            for i in range(1, 64):
                if slots[i] == dev:
                    slots[i] = proxy_addr
                    break
        return backend

    proxy[GET_MEMORY_SLOT] = ctypes.cast(get_memory, ctypes.c_void_p)
    proxy[INIT_BACKEND_SLOT] = ctypes.cast(init_backend, ctypes.c_void_p)
    _keep.extend([proxy, get_memory, init_backend, real_init])
    lib = _ggml()
    if lib.ggml_backend_dev_name(proxy_addr) != lib.ggml_backend_dev_name(dev) or _memory(proxy_addr)[0] != offer:
        return 0
    return proxy_addr


class Server:
    """One running RPC server (llama.cpp's accept loop, on a thread of its own so that the
    caller keeps Ctrl-C and can stop waiting)."""

    def __init__(self, addr: str, port: int, dev: int, offer: int, threads: int,
                 cache_dir: Path | None) -> None:
        start = _rpc_fn("ggml_backend_rpc_start_server", None,
                        [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t,
                         ctypes.POINTER(ctypes.c_void_p)])
        self.endpoint = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
        self.offer_exact = True
        served = _offering(dev, offer) if offer else 0
        if not served:
            self.offer_exact = not offer
            served = dev
        devices = (ctypes.c_void_p * 1)(served)
        cache = str(cache_dir).encode() if cache_dir is not None else None
        _keep.append(devices)
        self._thread = threading.Thread(
            target=start, args=(self.endpoint.encode(), cache, threads, 1, devices),
            name="rpc-server", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """True once llama.cpp's server has returned (it only does on a failure)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()
