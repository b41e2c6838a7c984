"""Run one engine call in a worker thread and deliver its chunks to the event loop.

llama.cpp blocks, so the token loop runs in a thread; chunks cross to the loop through an
asyncio.Queue. The lease is released when the thread ends (not when the client goes away),
so the next queued request never touches an engine still generating. A client that
disconnects sets the cancel Event, which the engine checks between tokens.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterator, Callable, Iterator

from r1local.server.errors import ApiError, from_r1local

if TYPE_CHECKING:
    from starlette.requests import Request

    from r1local.engine import Chunk, Stats
    from r1local.server.models import Lease, ModelManager

_END = object()
log = logging.getLogger("r1local.server")  # `r1local serve` prints it on stderr


@dataclass
class Outcome:
    """What the finished call reports (Ollama's counts and durations, OpenAI's usage)."""

    stats: "Stats | None"
    thinking: str
    answer: str
    error: ApiError | None


class Generation:
    def __init__(self, manager: "ModelManager", lease: "Lease", chunks: Iterator["Chunk"],
                 cancel: threading.Event, keep_alive: float | None) -> None:
        self.manager = manager
        self.lease = lease
        self.cancel = cancel
        self.keep_alive = keep_alive
        self.started = time.monotonic()
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._thinking: list[str] = []
        self._answer: list[str] = []
        self._error: ApiError | None = None
        self._stats: "Stats | None" = None
        self._chunks = chunks
        self._pending: collections.deque = collections.deque()
        self._wake_lock = threading.Lock()
        self._woken = False
        self.done = self._loop.run_in_executor(None, self._work)
        entry = (cancel, self.done)
        manager.running.add(entry)
        self.done.add_done_callback(lambda _f: manager.running.discard(entry))
        self.done.add_done_callback(lambda _f: manager.release(lease, keep_alive))

    def _work(self) -> None:
        put = self._post
        try:
            for chunk in self._chunks:
                put(chunk)
        except Exception as err:  # llama.cpp failing mid-stream: report it, do not hang
            self._error = err if isinstance(err, ApiError) else from_r1local(err)
        finally:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()  # finishes the engine's stats even when cancelled
            # read the stats here: once the lease is released the next request owns the engine
            self._stats = getattr(self._chunks, "stats", None) or self.lease.engine.last_stats
            if getattr(self._stats, "finish_reason", None) == "cancelled":
                # the operator sees that a client's Stop (or a dropped connection) took hold
                log.info("cancelled a reply from %s after %d tokens (the client stopped "
                         "or went away)", self.lease.slot.name, self._stats.completion_tokens)
            put(_END)

    def _post(self, item: object) -> None:
        """Hand ``item`` to the loop. Items wait in a deque; the loop is woken once per
        burst (a wake-up already on its way takes the later items too), not once per token."""
        self._pending.append(item)
        with self._wake_lock:
            if self._woken:
                return
            self._woken = True
        self._loop.call_soon_threadsafe(self._move)

    def _move(self) -> None:  # on the loop
        with self._wake_lock:
            self._woken = False
        while self._pending:
            self._queue.put_nowait(self._pending.popleft())

    def ready(self) -> bool:
        """A chunk (or the end) is already here: reading it will not wait."""
        return not self._queue.empty()

    async def chunks(self) -> AsyncIterator["Chunk"]:
        """The chunks as they come; when the consumer stops early, generation is cancelled."""
        try:
            while True:
                item = await self._queue.get()
                if item is _END:
                    return
                if item.kind == "thinking":
                    self._thinking.append(item.text)
                else:
                    self._answer.append(item.text)
                yield item
        finally:
            if not self.done.done():
                self.cancel.set()

    async def outcome(self) -> Outcome:
        await asyncio.shield(self.done)
        return Outcome(self._stats, "".join(self._thinking),
                       "".join(self._answer), self._error)

    async def collect(self) -> Outcome:
        """For a non-streaming reply: consume every chunk, then the outcome; its error raised."""
        async for _ in self.chunks():
            pass
        out = await self.outcome()
        if out.error is not None:
            raise out.error
        return out


async def joined(events: AsyncIterator[bytes], gen: Generation) -> AsyncIterator[bytes]:
    """``events`` written in as few pieces as the reply allows: what is ready at once (the
    loop fell behind the tokens) goes out in one write; nothing is held while waiting."""
    held: list[bytes] = []
    async for event in events:
        held.append(event)
        if not gen.ready():
            yield b"".join(held)
            held = []
    if held:
        yield b"".join(held)


async def watch_disconnect(request: "Request", cancel: threading.Event) -> None:
    """Set ``cancel`` when the client goes away (the body was already read)."""
    while not cancel.is_set():
        message = await request.receive()
        if message["type"] == "http.disconnect":
            cancel.set()
            return


async def start(manager: "ModelManager", request: "Request", name: str,
                make: Callable[["object", threading.Event], Iterator["Chunk"]], *,
                keep_alive: float | None, n_ctx: int | None) -> Generation:
    """Queue for the model, build the engine call (errors such as a too-long prompt are
    raised here, before any response starts), and start it in a worker thread."""
    lease = await manager.acquire(name, keep_alive=keep_alive, n_ctx=n_ctx)
    cancel = threading.Event()
    try:
        chunks = await asyncio.to_thread(make, lease.engine, cancel)
    except BaseException as err:
        manager.release(lease, keep_alive)
        if isinstance(err, ApiError):
            raise
        if isinstance(err, Exception):
            raise from_r1local(err) from None
        raise
    gen = Generation(manager, lease, chunks, cancel, keep_alive)
    watcher = asyncio.get_running_loop().create_task(watch_disconnect(request, cancel))
    gen.done.add_done_callback(lambda _f: watcher.cancel())
    return gen


class NoTokens:
    """An engine call that generates nothing (num_predict 0): only the prompt is counted."""

    def __init__(self, engine: "object", prompt_tokens: int) -> None:
        from r1local.engine import Stats

        self.stats = Stats(prompt_tokens=prompt_tokens, completion_tokens=0, thinking_tokens=0,
                           prompt_seconds=0.0, decode_seconds=0.0,
                           load_seconds=getattr(engine, "load_seconds", 0.0),
                           finish_reason="length", n_ctx=getattr(engine, "n_ctx", 0))

    def __iter__(self) -> "NoTokens":
        return self

    def __next__(self) -> "Chunk":
        raise StopIteration
