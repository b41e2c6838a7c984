"""`r1local worker`: lend this machine's CPU (or its GPU, on a GPU build) to other r1local
processes over llama.cpp's RPC backend; they name it with `--rpc host:port`.

The mechanics are in r1local/rpc.py; this module checks the flags and waits.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from r1local.rpc import DEFAULT_PORT, LOOPBACK

    parser.add_argument("--host", default=LOOPBACK,
                        help=f"address to listen on (default {LOOPBACK}: this machine only, "
                        "reach it through an SSH tunnel); any other needs --allow-remote")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a --host other than loopback: only on a trusted network, "
                        "llama.cpp's RPC protocol has no authentication or encryption")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads for the layers served here (default: physical cores)")
    parser.add_argument("--mem", metavar="SIZE",
                        help="memory offered to clients, e.g. 12G (default: what is free, less "
                        "the planner's margin)")
    parser.add_argument("--cache", metavar="DIR",
                        help="keep the tensors clients send in DIR (llama.cpp's RPC cache), so "
                        "that loading the same model again does not resend them")


def run(args: argparse.Namespace) -> int:
    import ipaddress
    import sys
    from pathlib import Path

    from r1local import rpc, rpc_liveness
    from r1local.errors import UsageError
    from r1local.planner import worker_offer
    from r1local.units import fmt_bytes, parse_size

    rpc.spin_briefly()  # before llama_cpp loads: see rpc.OMP_SPIN

    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port} is out of range (1-65535)")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads {args.threads} must be at least 1")
    addr = rpc.check_bind(args.host, args.allow_remote)
    cache = None
    if args.cache:
        cache = Path(args.cache).expanduser().resolve()
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UsageError(f"cannot use --cache {args.cache}: {err.strerror or err}") from None
    rpc.check_port_free(addr, args.port)

    from r1local.hardware import probe

    machine = probe()
    dev = rpc.serving_device()
    name, is_gpu, free, total = rpc.device_info(dev)
    if not is_gpu:  # llama.cpp's CPU device reports all of RAM as free; the probe knows better
        free, total = machine.ram_available, machine.ram_total
    default_offer = worker_offer(free, total, gpu=is_gpu)
    if args.mem is not None:
        offer = parse_size(args.mem)
        if offer > free:
            raise UsageError(f"--mem {args.mem} is more than the {fmt_bytes(free)} free here")
    else:
        offer = default_offer
    if offer <= 0:
        raise UsageError(f"nothing to offer: {fmt_bytes(free)} free on {name}",
                         hint="free some memory, or set --mem")
    threads = args.threads if args.threads is not None else machine.physical_cores
    server = rpc.Server(addr, args.port, dev, offer, threads, cache)
    if not ipaddress.ip_address(addr).is_loopback:
        print(f"r1local: warning: {rpc.SECURITY_NOTE.format(port=args.port)}", file=sys.stderr)
    what = "GPU" if is_gpu else "CPU"
    note = "" if server.offer_exact else f" (llama.cpp reports {fmt_bytes(free)} free; --mem not enforced)"
    print(f"r1local worker: serving {what} {name} on {server.endpoint}, offering "
          f"{fmt_bytes(offer)}{note}, {threads} threads"
          + (f", tensor cache {cache}" if cache else "")
          + f"; use it with `r1local run MODEL --rpc {server.endpoint}`. Ctrl-C stops it.",
          file=sys.stderr, flush=True)
    # a client that vanishes (pulled cable, powered off) is let go, so the next one is served
    rpc_liveness.watch(rpc_liveness.from_clients(args.port))
    server.start()
    while not server.wait(0.5):
        pass
    # llama.cpp's accept loop returns only when its socket failed
    raise rpc.RpcError(f"llama.cpp's RPC server on {server.endpoint} stopped (see its message above)")
