"""The one thread that runs llama.cpp's compute (every llama_decode) in this process.

The wheel's CPU backend runs a graph on OpenMP, whose thread team belongs to the thread
that calls it: every Python thread that ever decoded keeps a team of its own, and two teams
on the same cores slow each other down. Measured on 2 cores with SmolLM2: a batched engine
decoded one sequence at 46 tok/s while a thread that had decoded earlier was still alive,
87 tok/s once it was gone. A server has many request threads and the batching loop, the CLI
its main thread, the embeddings theirs; so every decode is handed to this one thread,
whichever thread asks, and the process keeps a single team.

Loading a model does not come here (it computes nothing, and a long load must not hold up
the decodes of the models already loaded).
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable, TypeVar

T = TypeVar("T")

_queue: "queue.SimpleQueue[tuple[Callable[..., Any], tuple, Future]]" = queue.SimpleQueue()
_start = threading.Lock()
_thread: threading.Thread | None = None


def run(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on the compute thread, its result or its exception returned here."""
    global _thread
    if threading.current_thread() is _thread:
        return fn(*args)
    if _thread is None:
        with _start:
            if _thread is None:
                t = threading.Thread(target=_serve, name="r1local-compute", daemon=True)
                t.start()
                _thread = t
    done: Future = Future()
    _queue.put((fn, args, done))
    try:
        return done.result()
    except BaseException:
        # interrupted (Ctrl-C) while the decode runs: let it finish, so that whoever comes
        # next sees the cache and the token count it left, not a decode still under way
        while not done.done():
            try:
                done.exception()
            except BaseException:
                continue
        raise


def _serve() -> None:
    while True:
        fn, args, done = _queue.get()
        if not done.set_running_or_notify_cancel():
            continue
        try:
            done.set_result(fn(*args))
        except BaseException as err:  # the caller's to handle, on the caller's thread
            done.set_exception(err)
