"""Reasoning-model stream handling: split `<think>…</think>` from the answer as text streams in.

Everything here is pure Python over text and token ids (no llama.cpp), shared by the engine,
the REPL and the server:

- ThinkSplitter: streaming splitter, robust to tags cut anywhere across tokens, to a prompt
  that already opened `<think>` (output starts inside the reasoning) and to a model that
  never closes it.
- StopMatcher: stop strings over a stream, holding back text that might begin one.
- LoopGuard: detects the endless repetition loops small distills fall into.
- strip_reasoning / fold_system: DeepSeek's history recommendations (earlier turns'
  reasoning left out; no system prompt, a given one goes into the first user turn).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
# What the engine puts into the context when the thinking budget runs out: the same
# shape the R1 models use to end their reasoning, so the answer follows naturally.
BUDGET_CLOSE = "\n" + THINK_CLOSE + "\n\n"

THINKING = "thinking"
ANSWER = "answer"

_START, _THINK, _ANSWER = "start", "think", "answer"


def is_reasoning_model(chat_template: str | None, think_is_one_token: Callable[[], bool]) -> bool:
    """The one rule for "this model reasons in <think> blocks": its chat template names
    <think> or </think> (R1's only names </think>, to strip earlier reasoning), or, where
    the template says nothing (a file without one), its vocabulary has <think> as a single
    token. ``think_is_one_token`` is asked only then: callers check it their own way."""
    template = chat_template or ""
    if THINK_OPEN in template or THINK_CLOSE in template:
        return True
    return bool(think_is_one_token())


@dataclass
class Chunk:
    kind: str  # "thinking" | "answer"
    text: str


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def _merge(chunks: Iterable[Chunk]) -> list[Chunk]:
    out: list[Chunk] = []
    for c in chunks:
        if not c.text:
            continue
        if out and out[-1].kind == c.kind:
            out[-1] = Chunk(c.kind, out[-1].text + c.text)
        else:
            out.append(c)
    return out


class ThinkSplitter:
    """Split a streamed completion into thinking and answer chunks.

    The result does not depend on how the stream is cut: text that might be the start of
    a tag, and whitespace that might turn out to be trailing, are held back until the next
    piece decides. Reasoning and answer are each reported without surrounding whitespace.
    Only a `<think>` at the very start (after whitespace) opens reasoning; a later one is
    answer text. With ``started=True`` the prompt already opened `<think>`.
    """

    def __init__(self, *, started: bool = False) -> None:
        self._state = _THINK if started else _START
        self._buf = ""  # undecided text
        self._emitted_any = {THINKING: False, ANSWER: False}
        self.thinking_closed = False

    @property
    def in_thinking(self) -> bool:
        return self._state == _THINK

    @property
    def in_answer(self) -> bool:
        return self._state == _ANSWER

    def feed(self, text: str) -> list[Chunk]:
        self._buf += text
        out: list[Chunk] = []
        while True:
            if self._state == _START:
                rest = self._buf.lstrip()
                if rest.startswith(THINK_OPEN):
                    self._buf = rest[len(THINK_OPEN):]
                    self._state = _THINK
                    continue
                if THINK_OPEN.startswith(rest):  # empty, or a piece of the tag: wait
                    return out
                self._state = _ANSWER
                continue
            if self._state == _THINK:
                idx = self._buf.find(THINK_CLOSE)
                if idx >= 0:
                    out.append(self._emit(THINKING, self._buf[:idx], final=True))
                    self._buf = self._buf[idx + len(THINK_CLOSE):]
                    self._state = _ANSWER
                    self.thinking_closed = True
                    continue
                keep = _partial_suffix(self._buf, THINK_CLOSE)
                body = self._buf[: len(self._buf) - keep]
                ready = body.rstrip()
                self._buf = self._buf[len(ready):]
                out.append(self._emit(THINKING, ready))
                return _merge(out)
            # answer: everything but trailing whitespace goes out
            ready = self._buf.rstrip()
            self._buf = self._buf[len(ready):]
            out.append(self._emit(ANSWER, ready))
            return _merge(out)

    def flush(self) -> list[Chunk]:
        """The end of the stream: whatever was held back, as the kind it turned out to be."""
        text, self._buf = self._buf, ""
        if self._state == _START:
            self._state = _ANSWER
        kind = THINKING if self._state == _THINK else ANSWER
        return _merge([self._emit(kind, text.rstrip())])

    def _emit(self, kind: str, text: str, final: bool = False) -> Chunk:
        if final:
            text = text.rstrip()
        if not self._emitted_any[kind]:
            text = text.lstrip()
            if text:
                self._emitted_any[kind] = True
        return Chunk(kind, text)


def split_reasoning(text: str, *, started: bool = False) -> tuple[str, str]:
    """(thinking, answer) of a whole completion; the streaming splitter in one call."""
    s = ThinkSplitter(started=started)
    parts = s.feed(text) + s.flush()
    return ("".join(c.text for c in parts if c.kind == THINKING),
            "".join(c.text for c in parts if c.kind == ANSWER))


class StopMatcher:
    """Cut a stream at the first stop string; text that may begin one is held back."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._buf = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        if not self.stops:
            return text
        self._buf += text
        hits = [i for i in (self._buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self._buf = self._buf[: min(hits)], ""
            self.stopped = True
            return out
        keep = max(_partial_suffix(self._buf, s) for s in self.stops)
        out = self._buf[: len(self._buf) - keep]
        self._buf = self._buf[len(out):]
        return out

    def flush(self) -> str:
        out, self._buf = ("" if self.stopped else self._buf), ""
        return out


class LoopGuard:
    """Detect a token stream stuck repeating itself.

    A loop is the last tokens repeating with some period p (1..max_period) over at least
    ``min_repeats`` whole cycles and at least ``min_span`` tokens: long enough that real
    text (a row of dashes, a repeated table line) does not trip it, short enough to stop a
    distill paraphrasing "Wait, let me check again" forever. For each period we keep how
    many recent tokens matched the token p back, so each new token costs O(max_period).
    """

    def __init__(self, max_period: int = 200, min_repeats: int = 4, min_span: int = 96) -> None:
        self.max_period = max_period
        self.min_repeats = min_repeats
        self.min_span = min_span
        self.reset()

    def reset(self) -> None:
        self._tokens: list[int] = []
        self._runs = [0] * (self.max_period + 1)
        self.period: int | None = None

    def add(self, token: int) -> bool:
        toks = self._tokens
        toks.append(token)
        n = len(toks)
        runs = self._runs
        for p in range(1, min(self.max_period, n - 1) + 1):
            if toks[n - 1 - p] == token:
                runs[p] += 1
                # run counts tokens equal to the one p back: cycles = (run + p) / p
                if runs[p] >= max((self.min_repeats - 1) * p, self.min_span - p):
                    self.period = p
                    return True
            else:
                runs[p] = 0
        if n > 4 * (self.max_period + self.min_span):  # keep memory bounded
            del toks[: n - 2 * (self.max_period + 1)]
        return False


def strip_reasoning(messages: Sequence[dict]) -> list[dict]:
    """Messages with earlier assistant turns' reasoning removed (DeepSeek's advice):
    `<think>…</think>` in the content and any separate reasoning field."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("role") == "assistant":
            for key in ("reasoning_content", "thinking", "reasoning"):
                m.pop(key, None)
            content = m.get("content")
            if isinstance(content, str):
                if THINK_CLOSE in content:
                    content = content.split(THINK_CLOSE)[-1]
                elif content.lstrip().startswith(THINK_OPEN):
                    content = ""  # reasoning that never closed: no answer to keep
                m["content"] = content.strip()
        out.append(m)
    return out


def fold_system(messages: Sequence[dict]) -> list[dict]:
    """No system prompt (DeepSeek's advice for R1): system text goes before the first
    user turn's content instead."""
    system = "\n\n".join(str(m.get("content") or "") for m in messages
                         if m.get("role") == "system" and m.get("content"))
    rest = [dict(m) for m in messages if m.get("role") != "system"]
    if not system:
        return rest
    for m in rest:
        if m.get("role") == "user":
            m["content"] = f"{system}\n\n{m.get('content') or ''}"
            return rest
    return [{"role": "user", "content": system}, *rest]
