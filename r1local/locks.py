"""Advisory file locks (fcntl; none on Windows, where renames are still atomic): one writer
per store manifest and per download in progress."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO, Callable, Iterator

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]


def _still_at(f: IO[bytes], path: Path) -> bool:
    """Is the open lock file ``f`` still the file at ``path`` (not deleted or replaced)?"""
    try:
        return os.path.samestat(os.fstat(f.fileno()), os.stat(path))
    except OSError:
        return False


@contextlib.contextmanager
def file_lock(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if need be) for the block;
    ``on_wait`` is called once if another process holds it first. Whoever holds a lock may
    delete its file when tidying up, so a lock won on a file that is no longer at ``path``
    is not the lock: it is taken again on the new file."""
    if fcntl is None:
        yield
        return
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            f = open(path, "a+b")
        except FileNotFoundError:  # the folder was tidied away between the two calls
            continue
        with f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait()
                    on_wait = None
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            if _still_at(f, path):
                yield
                return


def try_lock(path: Path) -> IO[bytes] | None:
    """The lock on an existing ``path`` if it is free now: the open file that holds it
    (closing it lets go), or None when someone holds it or it is gone."""
    try:
        f = open(path, "r+b")
    except OSError:
        return None
    if fcntl is not None:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            return None
    if not _still_at(f, path):
        f.close()
        return None
    return f
