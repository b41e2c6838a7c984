"""A rich progress bar (bytes, rate, ETA) per phase, or nothing when progress is off."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator, Protocol


class Advance(Protocol):
    def __call__(self, nbytes: int) -> None: ...


@contextmanager
def phase(label: str, total: int, enabled: bool) -> Iterator[Advance]:
    if not enabled:
        yield lambda nbytes: None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(file=sys.stderr), transient=False) as bar:
        task = bar.add_task(label, total=total)
        yield lambda nbytes: bar.advance(task, nbytes)
        bar.update(task, completed=total)
