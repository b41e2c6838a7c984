"""The model manager: names to engines, loaded on first use, as many requests at once per
model as its engine decodes together (a batched engine also holds as many more, prepared,
in its own queue).

- A name is resolved, planned and loaded through r1local.session, as `r1local run` does: the
  store (store name, catalog tag, alias), or a path to a .gguf where the NamePolicy (names.py)
  lets requests name one. Engines are keyed by the resolved file, so "7b" and "7b:Q4_K_M"
  share one.
- Each model has a FIFO queue (asyncio.Lock wakes waiters in order): none is lost; when
  `max_queue` requests already wait, the next gets 503.
- A request's context never changes what later requests get: a num_ctx no larger than the
  loaded context runs inside it, bounded to num_ctx (window()); a larger one reloads with
  it. A request without num_ctx is bounded to the model's default context (--ctx, else the
  planner's), whatever context an earlier request made it load with. /api/ps shows the
  context really loaded.
- After a request the model stays loaded for its keep_alive (Ollama semantics: < 0 forever,
  0 unload now); the sweeper unloads expired idle models. Loading beyond `max_loaded`
  evicts the least recently used idle model.
- Loading and closing run in worker threads so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from r1local.planner import pad_ctx

log = logging.getLogger("r1local.server")  # `r1local serve` prints it on stderr
from r1local.server.errors import ApiError, from_r1local, not_found
from r1local.server.names import NamePolicy, canonical, shown

if TYPE_CHECKING:
    from r1local.engine import Engine
    from r1local.session import ModelFile

SWEEP_SECONDS = 0.2


def key_of(model: "ModelFile") -> str:
    """Engines are keyed by the file itself, so "7b" and "7b:Q4_K_M" share one."""
    return str(model.path.resolve())


@dataclass
class Loaded:
    """One loaded model."""

    key: str
    name: str
    model: "ModelFile"
    engine: "Engine"
    plan: Any
    loaded_at: float  # time.time()
    last_used: float  # time.monotonic()
    expires_at: float | None = None  # time.monotonic(); None while in use or kept forever
    keep_alive: float = 300.0
    pinned: bool = False  # the --model given at start: never expires
    default_ctx: int = 0  # the context a request without num_ctx gets (<= engine.n_ctx)
    leased: int = 0  # requests given the engine now: generating, or staged in its scheduler
    free: asyncio.Semaphore = field(default_factory=asyncio.Semaphore)  # leases left
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set while none is leased

    def __post_init__(self) -> None:
        # A batched engine also takes one prepared request per decode slot into its own
        # queue: it starts there in the very step a reply ends, where a request woken only
        # then would miss that step (its template and tokens still to make).
        self.free = asyncio.Semaphore(self.parallel * (2 if _batched(self.engine) else 1))
        self.idle.set()

    @property
    def parallel(self) -> int:
        return max(1, int(getattr(self.engine, "n_parallel", 1) or 1))

    @property
    def active(self) -> int:
        """Requests generating now (at most the engine's n_parallel); the rest of those
        leased wait in its scheduler, and count as waiting."""
        return min(self.leased, self.parallel)

    @property
    def size(self) -> int:
        try:
            return self.model.size  # every part of a split model
        except OSError:
            return 0

    @property
    def vram_bytes(self) -> int:
        return int(getattr(self.plan, "vram_bytes", 0) or 0) if self.plan is not None else 0


def _batched(engine: Any) -> bool:
    """Whether the engine decodes through a batching.Scheduler (which queues what waits)."""
    return getattr(engine, "_scheduler", None) is not None


@dataclass
class Loading:
    """A model's load as llama.cpp reports it (the web chat shows it): kept after the load
    ends, until the next load of the same file replaces it."""

    name: str
    fractions: list[float] = field(default_factory=list)  # 0..1, at least 1% apart, then 1.0
    done: bool = False
    error: str = ""  # why it failed (done and no error: loaded)

    @property
    def progress(self) -> float:
        return self.fractions[-1] if self.fractions else 0.0

    def report(self, fraction: float) -> None:
        """llama.cpp's callback, on the loading thread (a list append is atomic)."""
        last = self.fractions[-1] if self.fractions else -1.0
        if fraction > last and (fraction >= 1.0 or fraction - last >= 0.01):
            self.fractions.append(min(fraction, 1.0))


@dataclass
class Lease:
    """The right to use one engine until release()."""

    slot: Loaded
    load_seconds: float  # spent loading for this request (0 when it was loaded already)
    queued_seconds: float
    released: bool = False

    @property
    def engine(self) -> "Engine":
        return self.slot.engine


@dataclass
class _Queue:
    # held while a request is admitted (its load, then its wait for a decode slot), so
    # requests get their slots in arrival order; not held while they generate
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pending: int = 0  # waiting + running


def loaded_line(slot: Loaded) -> str:
    """What the operator is told when a model loads: its context, its parallel sequences and,
    over RPC workers, where its layers went."""
    engine = slot.engine
    n = engine.n_parallel
    split = getattr(engine, "rpc_split", None)
    return (f"loaded {slot.name} (context {engine.n_ctx}"
            + (f", {n} requests decoded together" if n > 1 else "") + ")"
            + (f": {split.line()}" if split is not None else ""))


def resolve_name(name: str) -> "ModelFile":
    """A model name -> file on disk (blocking: call from a worker thread). The server
    checks a request's names with its NamePolicy first; `serve --model` comes here as given."""
    from r1local import session
    from r1local.errors import ModelFileError, R1LocalError, UnknownModelError
    from r1local.store import looks_like_path

    if not name:
        raise ApiError(400, "the request names no model (field \"model\")", param="model")
    try:
        return session.locate(name)
    except UnknownModelError as err:
        raise not_found(f"model '{shown(name)}' not found: {err}") from None
    except ModelFileError as err:
        if looks_like_path(name):  # the client named a file that is no model: its mistake
            raise ApiError(400, str(err), code="model_load_failed", param="model") from None
        raise from_r1local(err) from None
    except R1LocalError as err:
        raise from_r1local(err) from None
    except (OSError, ValueError, RuntimeError):  # too long, a NUL, "~nosuchuser/": no file
        raise not_found(f"model '{shown(name)}' not found") from None


def _load_error(err: Exception, n_ctx: int | None) -> ApiError:
    """A failed load as the client should see it: a context it asked for that does not fit
    is its request to change (400); any other plan that does not fit is 507."""
    from r1local.errors import DoesNotFitError

    if n_ctx and isinstance(err, DoesNotFitError):
        return ApiError(400, f"num_ctx {n_ctx}: {err.message}; ask for a smaller "
                        "num_ctx", code="insufficient_memory", param="num_ctx")
    return from_r1local(err)


def planned_ctx(model: "ModelFile") -> int:
    """The context the planner gives this model on this machine now (blocking)."""
    from r1local import session

    plan = session.plan_model(model, session.machine(None, model.path.parent))
    return pad_ctx(int(plan.n_ctx))


def load_engine(model: "ModelFile", n_ctx: int | None, n_threads: int | None = None,
                progress: Callable[[float], None] | None = None,
                rpc: "Sequence[str]" = (),
                parallel: int | None = 1, experts_on: str = "auto") -> tuple["Engine", Any]:
    """Load with the planner's settings (blocking); ``progress``: llama.cpp's fraction.
    ``rpc``: RPC workers (`serve --rpc`, else $R1LOCAL_RPC). A model that
    does not fit this machine alone loads over them, in a child process (rpc_child), so that
    a lost worker fails its requests, not the server, and its next request loads it again;
    one that fits stays here (a worker serves one process at a time, and the network only
    slows a model that fits). ``experts_on``: where a MoE model's routed experts go."""
    from r1local import session

    workers = list(rpc)
    if workers and not session.plan_model(
            model, session.machine(None, model.path.parent), ctx=n_ctx,
            experts_on=experts_on).fits:
        from r1local import rpc_child

        engine, plan, _ = rpc_child.open_model(model, rpc=workers, ctx=n_ctx, threads=n_threads,
                                               progress=progress, experts_on=experts_on)
        return engine, plan
    if parallel is None:  # serve's default: as many sequences as the memory allows
        parallel = session.choose_parallel(model, session.machine(None, model.path.parent), n_ctx)
    engine, plan, _ = session.open_model(model, ctx=n_ctx, threads=n_threads,
                                         progress=progress, parallel=parallel,
                                         experts_on=experts_on)
    return engine, plan


class ModelManager:
    def __init__(self, *, keep_alive: float = 300.0, max_queue: int = 512, max_loaded: int = 3,
                 n_ctx: int | None = None, n_threads: int | None = None,
                 names: NamePolicy | None = None, parallel: int | None = 1,
                 rpc: "Sequence[str]" = (), experts_on: str = "auto") -> None:
        self.keep_alive = keep_alive
        self.names = names or NamePolicy()
        self.max_queue = max_queue
        self.max_loaded = max(1, max_loaded)
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.parallel = parallel  # sequences each model decodes together (None: the planner's)
        self.rpc = tuple(rpc)  # RPC workers for the models that do not fit here
        self.experts_on = experts_on  # where MoE models' routed experts go (`--experts-on`)
        self.loaded: dict[str, Loaded] = {}
        self._queues: dict[str, _Queue] = {}
        self._sweeper: asyncio.Task | None = None
        # running engine calls: (cancel Event, future done when the worker thread ends)
        self.running: set[tuple[Any, asyncio.Future]] = set()
        self.loads = 0  # engines loaded since start (tests and /api/ps watchers)
        self.loading: dict[str, Loading] = {}  # by key: the running or the last load

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            try:
                await self._sweeper
            except asyncio.CancelledError:
                pass
            self._sweeper = None
        # never close an engine under a running token loop: cancel and wait for each
        for cancel, done in list(self.running):
            cancel.set()
        for _cancel, done in list(self.running):
            try:
                await asyncio.shield(done)
            except Exception:
                pass
        for key in list(self.loaded):
            await self._close(key)

    async def preload(self, name: str) -> Loaded:
        """Load the --model at start and keep it (it never expires)."""
        lease = await self.acquire(name, keep_alive=-1)
        lease.slot.pinned = True
        self.release(lease)
        return lease.slot

    # ---- the queue ---------------------------------------------------------------------

    async def resolve(self, name: str) -> "ModelFile":
        name = canonical(name)  # "micro:latest" is "micro"
        if name:
            self.names.check(name)  # before the loaded models: a path must be allowed too
        for slot in self.loaded.values():  # a name already loaded: no disk look-up
            if name in (slot.name, slot.key):
                return slot.model
        return await asyncio.to_thread(resolve_name, name)

    async def acquire(self, name: str, *, keep_alive: float | None = None,
                      n_ctx: int | None = None) -> Lease:
        """Wait for this model's turn (FIFO), loading it if needed. Raises ApiError 404/503/500."""
        t0 = time.monotonic()
        res = await self.resolve(name)
        key = key_of(res)
        q = self._queues.setdefault(key, _Queue())
        loaded = self.loaded.get(key)
        running = max(1, loaded.active if loaded is not None else 0)
        if q.pending - running >= self.max_queue:  # what runs + max_queue waiting
            raise ApiError(503, f"server busy: {q.pending - running} requests already wait for "
                           f"'{name}' (--max-queue {self.max_queue}); retry later",
                           code="queue_full")
        q.pending += 1
        try:
            await q.lock.acquire()
        except BaseException:
            q.pending -= 1
            raise
        try:
            queued = time.monotonic() - t0
            slot = self.loaded.get(key)
            load_seconds = 0.0
            if slot is not None and n_ctx and pad_ctx(n_ctx) > slot.engine.n_ctx:
                await self._close(key)  # a larger num_ctx reloads (once the running end)
                slot = None
            if slot is None:
                await self._make_room(key)
                t1 = time.monotonic()
                loading = self.loading[key] = Loading(canonical(name))
                try:
                    default, want_ctx = await asyncio.to_thread(self._load_ctx, res, n_ctx)
                    engine, plan = await asyncio.to_thread(load_engine, res, want_ctx,
                                                           self.n_threads, loading.report,
                                                           self.rpc, self.parallel,
                                                           self.experts_on)
                except ApiError as err:
                    loading.error = err.message
                    raise
                except Exception as err:  # R1LocalError and llama.cpp's own
                    api = _load_error(err, n_ctx)
                    loading.error = api.message
                    raise api from None
                finally:  # no await until the slot is in self.loaded: watchers see both
                    loading.done = True
                load_seconds = time.monotonic() - t1
                now = time.monotonic()
                slot = Loaded(key=key, name=canonical(name), model=res,
                              engine=engine, plan=plan, loaded_at=time.time(), last_used=now,
                              keep_alive=self.keep_alive,
                              default_ctx=min(default or engine.n_ctx, engine.n_ctx))
                self.loaded[key] = slot
                self.loads += 1
                log.info("%s", loaded_line(slot))
            slot.expires_at = None  # in use
            await slot.free.acquire()  # a decode slot: the lock keeps the order
            slot.leased += 1
            slot.idle.clear()
            return Lease(slot, load_seconds, queued)
        except BaseException:
            q.pending -= 1
            raise
        finally:
            q.lock.release()

    def _load_ctx(self, res: "ModelFile", n_ctx: int | None) -> tuple[int | None, int | None]:
        """(the model's default context, the context to load with; None: the planner's).
        A num_ctx below the default loads the default, so that the next request without
        num_ctx needs no reload."""
        default = pad_ctx(self.n_ctx) if self.n_ctx else None
        if not n_ctx:
            return default, default
        if default is None:
            default = planned_ctx(res)
        return default, max(default, pad_ctx(n_ctx))

    def window(self, engine: "Engine", n_ctx: int | None) -> int:
        """The context one request may use on a loaded engine: its num_ctx, else the
        model's default, never more than is loaded."""
        slot = next((s for s in self.loaded.values() if s.engine is engine), None)
        want = n_ctx or (slot.default_ctx if slot is not None else 0) or engine.n_ctx
        return min(want, engine.n_ctx)

    def release(self, lease: Lease, keep_alive: float | None = None) -> None:
        """End a request: set the model's expiry, wake the next in line. Runs on the loop."""
        if lease.released:
            return
        lease.released = True
        slot = lease.slot
        ka = self.keep_alive if keep_alive is None else keep_alive
        now = time.monotonic()
        slot.last_used = now
        slot.keep_alive = ka
        if slot.pinned:
            slot.expires_at = None
        else:
            slot.expires_at = None if ka < 0 else now + ka
        slot.leased -= 1
        slot.free.release()
        if slot.leased == 0:
            slot.idle.set()
        q = self._queues[slot.key]
        q.pending -= 1
        if getattr(slot.engine, "lost", False) and not slot.pinned:
            # over RPC workers, and one was lost: not loaded any more (/api/ps), and the
            # next request loads it the usual way, its progress and its errors with it
            asyncio.get_running_loop().create_task(self._close(slot.key))
        elif slot.expires_at is not None and ka <= 0 and q.pending == 0:
            asyncio.get_running_loop().create_task(self._expire(slot.key))

    # ---- unloading ---------------------------------------------------------------------

    async def unload(self, name: str) -> bool:
        """Unload now (keep_alive 0 with no prompt). False when it was not loaded."""
        return await self.unload_key(key_of(await self.resolve(name)))

    async def unload_key(self, key: str) -> bool:
        """Unload the engine of this file once no request uses it; False when not loaded."""
        if key not in self.loaded:
            return False
        q = self._queues.setdefault(key, _Queue())
        async with q.lock:
            await self._close(key)
        return True

    def _idle(self, key: str) -> bool:
        q = self._queues.get(key)
        return q is None or q.pending == 0

    async def _expire(self, key: str) -> None:
        slot = self.loaded.get(key)
        if slot is None or not self._idle(key) or slot.expires_at is None:
            return
        if slot.expires_at <= time.monotonic():
            await self._close(key)

    async def _close(self, key: str) -> None:
        slot = self.loaded.get(key)
        if slot is None:
            return
        await slot.idle.wait()  # never close an engine under a running request
        if self.loaded.get(key) is slot:
            del self.loaded[key]
            await asyncio.to_thread(slot.engine.close)

    async def _make_room(self, key: str) -> None:
        while len(self.loaded) >= self.max_loaded:
            idle = [s for k, s in self.loaded.items() if k != key and self._idle(k) and not s.pinned]
            if not idle:
                return  # everything is busy: load anyway rather than fail the request
            await self._close(min(idle, key=lambda s: s.last_used).key)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            now = time.monotonic()
            for key, slot in list(self.loaded.items()):
                if slot.expires_at is not None and slot.expires_at <= now and self._idle(key):
                    await self._close(key)
            for key in [k for k, q in self._queues.items()
                        if q.pending == 0 and k not in self.loaded]:
                self._queues.pop(key, None)
