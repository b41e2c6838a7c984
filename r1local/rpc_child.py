"""A model over RPC workers, run in a child process so that a lost worker cannot take
r1local down.

llama.cpp's RPC client aborts its whole process when a worker's connection drops. So a
model that uses workers is opened (through session.open_model) in `python -m
r1local.rpc_child`, and this process talks to it over a socket pair: requests go down,
reasoning/answer Chunks and the final Stats come back. RemoteEngine is the parent's side
and looks like an Engine to run, the repl and the server. When the child dies, the worker
that no longer answers is named in a WorkerLostError; the next call opens the model again
(in a new child), so a server loads it again on the next request once the worker is back.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from r1local.rpc import RpcError, spin_briefly

if TYPE_CHECKING:
    from r1local.engine import Chunk, GenerationSettings, Stats
    from r1local.session import ModelFile

# what a parent waits for a child to end after asking it to, before it is killed
CLOSE_WAIT_S = 10.0
POLL_S = 0.1  # how often a waiting reply looks at its cancel Event
# copied from the child's Engine once it has loaded (what run, the repl and the server read)
ENGINE_FIELDS = ("name", "n_ctx", "is_reasoning", "tool_family", "chat_template", "n_threads",
                 "n_gpu_layers", "n_batch", "kv_type", "flash_attn", "load_seconds",
                 "rpc_split", "n_parallel")


class WorkerLostError(RpcError):
    """A worker went away while a model used it (its process was lost with it)."""


def open_model(ref: "str | ModelFile", *, rpc: Sequence[str],
               warn: Callable[[str], None] | None = None, verbose: bool | None = None,
               **options: Any) -> tuple["RemoteEngine", Any, Any]:
    """session.open_model for a model over ``rpc`` workers, loaded in a child process: the
    same arguments (``options`` go to the child's session.open_model as they are) and the
    same (engine, plan, stored)."""
    from r1local import session

    model = session.locate(ref) if isinstance(ref, str) else ref
    engine = RemoteEngine(model, list(rpc), warn=warn, verbose=verbose, options=options)
    return engine, engine.plan, model.stored


class RemoteEngine:
    """An Engine in a child process: the same calls, one at a time (a lock)."""

    def __init__(self, model: "ModelFile", endpoints: list[str], *,
                 warn: Callable[[str], None] | None, verbose: bool | None,
                 options: dict[str, Any]) -> None:
        self.path = model.path
        self.endpoints = endpoints
        self.last_stats: "Stats | None" = None
        self._warn = warn
        # llama.cpp's load fraction, reported by the child as it loads
        self._progress = options.pop("progress", None)
        self._verbose = bool(verbose if verbose is not None else os.environ.get("R1LOCAL_VERBOSE"))
        self._options = options
        # one call at a time; a reply holds it from its start to its end, which may be on
        # another thread (the server starts a reply in one and streams it in another)
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._log: Any = None
        self._closed = False
        self._cancel_sent = False  # for the reply under way: the child was told to stop
        self._start()

    # ---- the child -------------------------------------------------------------------

    def _start(self) -> None:
        """Start a child and open the model there; its errors are raised here as they were
        raised there."""
        parent, child = _socketpair()
        # the child's stdout is never ours (it is the answer in `run`); its stderr is kept
        # for the error message unless --verbose shows llama.cpp's log as it comes
        self._log = None if self._verbose else tempfile.TemporaryFile()
        env = spin_briefly({**os.environ, "GGML_NO_BACKTRACE": "1"})  # GGML_...: no debugger on an abort
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "r1local.rpc_child", str(child.fileno())],
            pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
            stdout=2 if self._verbose else subprocess.DEVNULL, stderr=self._log, env=env)
        child.close()
        self._conn = parent
        try:
            info = self._request("open", path=str(self.path), endpoints=self.endpoints,
                                 verbose=self._verbose, progress=self._progress is not None,
                                 **self._options)
        except BaseException:
            self._stop()  # the child ends by itself after a failed open
            raise
        for name in ENGINE_FIELDS:
            setattr(self, name, info[name])
        self.n_parallel = self.n_parallel or 1  # one reply at a time through the child
        self.plan = info["plan"]

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def lost(self) -> bool:
        """Its child ended without being asked (a worker lost): the next call opens it again."""
        return not self._closed and not self._alive()

    def _ensure(self) -> None:
        """A child to talk to: the model opened again after its child was lost."""
        if self._closed:
            raise RpcError("the model was closed")
        if not self._alive():
            self._stop()
            self._start()

    def _send(self, msg: tuple) -> None:
        try:
            self._conn.send(msg)
        except OSError:
            raise self._lost() from None

    def _recv(self, cancel: threading.Event | None = None) -> tuple:
        """The child's next message; a lost child is raised as WorkerLostError."""
        try:
            # the cancel goes out as soon as it is set, even while chunks are still queued
            # in the pipe (a slow reader would otherwise let the child finish the reply)
            while True:
                if cancel is not None and cancel.is_set() and not self._cancel_sent:
                    self._conn.send(("cancel",))
                    self._cancel_sent = True
                if self._conn.poll(POLL_S):
                    break
            msg = self._conn.recv()
        except (EOFError, OSError):
            raise self._lost() from None
        if msg[0] in ("warn", "progress"):
            tell = self._warn if msg[0] == "warn" else self._progress
            if tell is not None:
                tell(msg[1])
            return self._recv(cancel)
        if msg[0] == "err":
            raise _rebuild(*msg[1:])
        return msg

    def _request(self, op: str, *args: Any, **kwargs: Any) -> Any:
        self._send((op, args, kwargs))
        return self._recv()[1]

    def _call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        """One request to the child (opened again first, if it was lost)."""
        with self._lock:
            self._ensure()
            return self._request(op, *args, **kwargs)

    def _lost(self) -> RpcError:
        """What ended the child, in one line: the worker that no longer answers, else how
        the child ended and the last thing it said."""
        proc = self._proc
        try:
            proc.wait(timeout=CLOSE_WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for ep in self.endpoints:
            why = _unreachable(ep)
            if why:
                port = ep.rpartition(":")[2]
                fix = ("check that machine and the network to it (a pulled cable looks like this)"
                       if why.startswith("did not answer") else
                       f"start `r1local worker --port {port}` there again")
                return WorkerLostError(
                    f"lost RPC worker {ep} while running {self.path.name}: {why}",
                    hint=f"{fix}; the model loads again on the next prompt or request")
        said = _last_line(self._log)
        code = proc.returncode
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return RpcError(f"the process running {self.path.name} over RPC workers ended "
                        f"({how}{': ' + said if said else ''})",
                        hint="run with --verbose to see llama.cpp's log")

    def _stop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=CLOSE_WAIT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    # ---- the Engine's calls ----------------------------------------------------------

    def tokenize(self, text: str, *, add_bos: bool = False) -> list[int]:
        return self._call("tokenize", text, add_bos=add_bos)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def format_chat(self, messages: Sequence[dict], *, tools: Sequence[dict] | None = None,
                    tool_choice: str | None = None) -> str:
        return self._call("format_chat", list(messages), tools=tools, tool_choice=tool_choice)

    def prepare_messages(self, messages: Sequence[dict]) -> list[dict]:
        return self._call("prepare_messages", list(messages))

    def reset(self) -> None:
        with self._lock:
            if self._alive():
                self._request("reset")

    @property
    def context_used(self) -> int:
        with self._lock:
            return self._request("context_used") if self._alive() else 0

    def chat(self, messages: list[dict], settings: "GenerationSettings | None" = None, *,
             cancel: threading.Event | None = None, tools: Sequence[dict] | None = None,
             tool_choice: str | None = None) -> Iterator["Chunk"]:
        return self._generate("chat", (list(messages), settings),
                              {"tools": tools, "tool_choice": tool_choice}, cancel)

    def chat_samples(self, messages: list[dict], settings: Sequence["GenerationSettings"], *,
                     cancel: threading.Event | None = None, tools: Sequence[dict] | None = None,
                     tool_choice: str | None = None) -> list[Iterator["Chunk"]]:
        """Engine.chat_samples, one reply after another (the child decodes one at a time):
        each starts when first asked, with its Stats as ``.stats``; consume them in order."""
        return [_Later(self, lambda s=s: self.chat(messages, s, cancel=cancel, tools=tools,
                                                   tool_choice=tool_choice))
                for s in settings]

    def complete(self, prompt: str, settings: "GenerationSettings | None" = None, *,
                 cancel: threading.Event | None = None) -> Iterator["Chunk"]:
        return self._generate("complete", (prompt, settings), {}, cancel)

    def _generate(self, op: str, args: tuple, kwargs: dict,
                  cancel: threading.Event | None) -> Iterator["Chunk"]:
        """As Engine's: a bad request is raised now, the chunks come from the iterator. The
        lock is held until the stream ends, so nothing else talks to the child meanwhile."""
        self._lock.acquire()
        try:
            self._ensure()
            self.last_stats = None
            self._cancel_sent = False
            self._send((op, args, kwargs))
            self._recv()  # ("started",): the prompt was accepted
        except BaseException:
            self._lock.release()
            raise
        return _Reply(self, cancel)

    def _drain(self) -> None:
        """The consumer stopped early: cancel the reply and read it to its end, so that
        the next call does not get this one's chunks."""
        try:
            self._conn.send(("cancel",))
            while True:
                msg = self._conn.recv()
                if msg[0] == "done":
                    self.last_stats = msg[1]
                    return
                if msg[0] == "err":
                    return
        except (EOFError, OSError):
            pass  # lost meanwhile: the next call starts a new child

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._alive():
                try:
                    self._conn.send(("close", (), {}))
                except OSError:
                    pass
            self._stop()

    def __enter__(self) -> "RemoteEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Reply:
    """One reply's chunks as they come from the child. It holds the engine's lock from its
    start until it ends, is closed, or is dropped unread (a generator that never started
    would never release it)."""

    def __init__(self, engine: RemoteEngine, cancel: threading.Event | None) -> None:
        self._engine, self._cancel = engine, cancel
        self._open = True

    def __iter__(self) -> "_Reply":
        return self

    def __next__(self) -> "Chunk":
        from r1local.errors import R1LocalError

        if not self._open:
            raise StopIteration
        try:
            msg = self._engine._recv(self._cancel)
        except (R1LocalError, RuntimeError):
            self._end(drain=False)  # the child is gone, or it said the reply failed
            raise
        except BaseException:
            self._end(drain=True)  # Ctrl-C while waiting: the child is still replying
            raise
        if msg[0] == "done":
            self._engine.last_stats = msg[1]
            self._end(drain=False)
            raise StopIteration
        return msg[1]

    def close(self) -> None:
        if self._open:
            self._end(drain=True)

    def __del__(self) -> None:
        self.close()

    def _end(self, drain: bool) -> None:
        self._open = False
        try:
            if drain:
                self._engine._drain()
        finally:
            self._engine._lock.release()


class _Later:
    """A reply that starts when first asked, with its Stats as ``.stats`` once it ends."""

    def __init__(self, engine: RemoteEngine, start: Callable[[], Iterator["Chunk"]]) -> None:
        self._engine, self._start = engine, start
        self._it: Iterator["Chunk"] | None = None
        self.stats: "Stats | None" = None

    def __iter__(self) -> "_Later":
        return self

    def __next__(self) -> "Chunk":
        if self._it is None:
            self._it = self._start()
        try:
            return next(self._it)
        except StopIteration:
            self.stats = self._engine.last_stats
            raise

    def close(self) -> None:
        if self._it is not None:
            self._it.close()
            self.stats = self._engine.last_stats


def _socketpair() -> tuple[Connection, Connection]:
    import socket

    a, b = socket.socketpair()
    # the Connections own the descriptors from here
    return Connection(a.detach()), Connection(b.detach())


def _unreachable(endpoint: str) -> str:
    """Why ``endpoint`` does not answer llama.cpp's hello now ("" when it does: a worker
    that lost its client goes back to taking the next one). The hello, not a bare connect:
    an SSH tunnel's local end takes connections whether or not the worker behind it lives."""
    from r1local import rpc

    try:
        rpc.hello(endpoint, timeout=2.0)
        return ""
    except RpcError as err:
        why = err.message
    for prefix in (f"cannot reach RPC worker {endpoint}: ", f"RPC worker {endpoint} "):
        if why.startswith(prefix):
            return why[len(prefix):].lower()
    return why


def _last_line(log: Any) -> str:
    if log is None:
        return ""
    try:
        log.seek(0)
        lines = [x.strip() for x in log.read().decode("utf-8", "replace").splitlines() if x.strip()]
    except (OSError, ValueError):
        return ""
    return lines[-1][:300] if lines else ""


def _describe(err: BaseException) -> tuple[str, str, str, str | None]:
    """An exception as (module, class, message, hint), to raise again on the other side."""
    from r1local.errors import R1LocalError

    cls = type(err)
    if isinstance(err, R1LocalError):
        return cls.__module__, cls.__qualname__, err.message, err.hint
    return "builtins", "RuntimeError", f"{cls.__name__}: {err}", None


def _rebuild(module: str, name: str, message: str, hint: str | None) -> BaseException:
    import importlib

    from r1local.errors import R1LocalError

    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        cls = R1LocalError
    if isinstance(cls, type) and issubclass(cls, R1LocalError):
        try:
            return cls(message, hint=hint)
        except TypeError:
            return R1LocalError(message, hint=hint)
    return RuntimeError(message)


# ---------------------------------------------------------------------------
# The child's side

def _serve(conn: Connection) -> None:
    """Open the model, then answer calls until told to close (or the parent is gone)."""
    import queue

    from r1local import rpc_liveness, session

    inbox: queue.Queue = queue.Queue()
    cancel = threading.Event()
    send_lock = threading.Lock()

    def send(msg: tuple) -> None:
        with send_lock:
            conn.send(msg)

    def read() -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                os._exit(0)  # the parent is gone: so is the reason to hold the workers
            if msg[0] == "cancel":
                cancel.set()
            else:
                inbox.put(msg)

    threading.Thread(target=read, name="r1local-rpc-child-read", daemon=True).start()
    engine = None
    while True:
        op, args, kw = inbox.get()
        try:
            if op == "open":
                model = session.locate(kw.pop("path"))
                if kw.pop("progress"):
                    kw["progress"] = lambda f: send(("progress", f))
                endpoints = kw.pop("endpoints")
                # a worker behind a pulled cable ends its connection (and so this process)
                # instead of leaving the reply waiting for ever
                rpc_liveness.watch(rpc_liveness.to_workers(endpoints))
                engine, plan, _ = session.open_model(
                    model, rpc=endpoints, warn=lambda t: send(("warn", t)), **kw)
                info = {name: getattr(engine, name, None) for name in ENGINE_FIELDS}
                send(("ok", {**info, "plan": plan}))
            elif op == "close":
                break
            elif op in ("chat", "complete"):
                cancel.clear()  # a cancel for an earlier reply was read before this request
                chunks = getattr(engine, op)(*args, cancel=cancel, **kw)
                send(("started",))
                for chunk in chunks:
                    send(("chunk", chunk))
                send(("done", engine.last_stats))
            elif op == "context_used":
                send(("ok", engine.context_used))
            else:  # tokenize, format_chat, prepare_messages, reset
                send(("ok", getattr(engine, op)(*args, **kw)))
        except Exception as err:
            send(("err", *_describe(err)))
            if engine is None:
                break  # the model did not open: nothing to serve
    if engine is not None:
        engine.close()


def main(argv: Sequence[str]) -> int:
    import signal

    # Ctrl-C at the terminal reaches the whole process group: the parent cancels the reply
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(int(argv[0]))
    _serve(conn)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
