"""What a pull reports while it works: to a rich bar on stderr, to a callback, or nowhere.

The callback gets Ollama-style dicts (``{"status"}``, and ``digest``/``total``/``completed``
while a file downloads): the server's /api/pull relays them as they are.
"""

from __future__ import annotations

import sys
import time
from typing import Any, BinaryIO, Callable

Reporter = Callable[[dict[str, Any]], None]
CALLBACK_INTERVAL = 0.2  # seconds between two byte counts sent to a callback


class Progress:
    """``progress=True`` draws on stderr, a callable receives the events, False is silent."""

    def __init__(self, progress: bool | Reporter) -> None:
        self.callback: Reporter | None = progress if callable(progress) else None
        self.terminal = progress is True
        self._bar: Any = None  # a rich Progress while a file downloads
        self._task: Any = None
        self._last = 0.0
        self._event: dict[str, Any] = {}

    def say(self, text: str) -> None:
        if self.callback is not None:
            self.callback({"status": text})
        elif self.terminal:
            if self._bar is not None:  # above the bar, not through it
                self._bar.console.print(text, highlight=False, markup=False)
            else:
                print(text, file=sys.stderr, flush=True)

    def start(self, label: str, total: int, done: int, digest: str | None = None) -> None:
        """A file's download begins (or resumes at ``done`` bytes)."""
        self._event = {"status": f"pulling {label}", "total": total, "completed": done}
        if digest:
            self._event["digest"] = f"sha256:{digest}"
        if self.callback is not None:
            self.callback(dict(self._event))
        if self.terminal:
            # rich only now: `--help` and the quiet paths never load it
            from rich.console import Console
            from rich.progress import (BarColumn, DownloadColumn, TextColumn,
                                       TimeRemainingColumn, TransferSpeedColumn)
            from rich.progress import Progress as Bar

            if self._bar is None:
                self._bar = Bar(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                TransferSpeedColumn(), TimeRemainingColumn(),
                                console=Console(stderr=True), transient=False)
                self._bar.start()
            self._task = self._bar.add_task(label, total=total, completed=done)

    def advance(self, n: int) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, n)
        if self.callback is not None and self._event:
            self._event["completed"] += n
            now = time.monotonic()
            # a callback per network chunk would flood a streaming client: a few a second
            if now - self._last >= CALLBACK_INTERVAL or \
                    self._event["completed"] >= self._event["total"]:
                self._last = now
                self.callback(dict(self._event))

    def rewind(self) -> None:
        """The server ignored Range: the count starts again from zero."""
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=0)
        if self._event:
            self._event["completed"] = 0

    def done(self) -> None:
        """One file finished (or stopped): end its bar so later lines print below it."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
            self._task = None

    close = done  # the pull is over, however it ended


class CountingFile:
    """The file huggingface_hub's http_get writes into, counting bytes for ``progress``."""

    def __init__(self, f: BinaryIO, progress: Progress) -> None:
        self._f, self._p = f, progress

    def write(self, data: bytes) -> int:
        n = self._f.write(data)
        # to the OS at once: a killed process loses nothing it had received (the kernel keeps
        # what was written; fsync would only add power cuts, after which the sha256 check
        # catches a bad partial)
        self._f.flush()
        self._p.advance(len(data))
        return n

    def truncate(self, size: int | None = None) -> int:
        # http_get truncates when the server answers 200 to a Range request
        self._p.rewind()
        return self._f.truncate(size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)
