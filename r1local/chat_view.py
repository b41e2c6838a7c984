"""Terminal rendering of a streamed reply: the reasoning live and dimmed, collapsed to
"Thought for 7.2 s" when it ends, then the answer rendered as Markdown as it streams.

Only rich is used here; the line editor lives in repl.py.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.markdown import Markdown
from rich.segment import Segment
from rich.text import Text

THINK_STYLE = "dim italic"
NOTE_STYLE = "dim"
REFRESH_PER_SECOND = 8


class Tail:
    """The last lines of a renderable that fit the screen, so a live view of a long
    reasoning or answer shows what is being written now instead of scrolling."""

    def __init__(self, inner: Any, reserve: int = 2) -> None:
        self.inner = inner
        self.reserve = reserve

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        lines = console.render_lines(self.inner, options.update(height=None), pad=False)
        keep = max(1, console.height - self.reserve)
        for line in lines[-keep:]:
            yield from line
            yield Segment.line()


class ReplyView:
    """Renders one reply from chunks; call feed(chunk) for each, then close()."""

    def __init__(self, console: Console, *, show_thinking: bool = True) -> None:
        self.console = console
        self.show_thinking = show_thinking
        self.thinking = ""
        self.answer = ""
        self._live: Live | None = None
        self._phase = "none"  # none | thinking | answer
        self._think_start = 0.0
        self.think_seconds: float | None = None

    # live regions are transient: their final form is printed once, in full, when done
    def _start_live(self, renderable: Any) -> None:
        self._live = Live(renderable, console=self.console, transient=True,
                          refresh_per_second=REFRESH_PER_SECOND, auto_refresh=True)
        self._live.start()

    def _stop_live(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _thinking_renderable(self) -> Any:
        return Tail(Text("Thinking…\n" + self.thinking, style=THINK_STYLE))

    def feed(self, kind: str, text: str) -> None:
        if kind == "thinking":
            if self._phase == "none":
                self._phase = "thinking"
                self._think_start = time.monotonic()
                self._start_live(self._thinking_renderable())
            self.thinking += text
            if self._live is not None:
                self._live.update(self._thinking_renderable())
            return
        if self._phase == "thinking":
            self._end_thinking()
        if self._phase != "answer":
            self._phase = "answer"
            self._start_live(Tail(Markdown(self.answer)))
        self.answer += text
        if self._live is not None:
            self._live.update(Tail(Markdown(self.answer)))

    def _end_thinking(self) -> None:
        self._stop_live()
        self.think_seconds = time.monotonic() - self._think_start
        if self.show_thinking and self.thinking:
            self.console.print(Text(self.thinking, style=THINK_STYLE))
        self.console.print(Text(f"Thought for {self.think_seconds:.1f} s", style=NOTE_STYLE))
        self.console.print()

    def close(self, note: str | None = None) -> None:
        """End of the reply (finished, cancelled or cut): print its final form."""
        if self._phase == "thinking":
            self._end_thinking()
        self._stop_live()
        if self.answer:
            self.console.print(Markdown(self.answer))
        if note:
            self.console.print(Text(note, style=NOTE_STYLE))
