"""One reply as a token-level state machine: the rules every generated sequence follows.

The reasoning splitter, the thinking budget and the answer's reserve, stop strings, the
loop guard, the grammar that binds only the answer, and the sequence's own sampler and
seed all live here, so that the engine's single-sequence loop and the batch scheduler
(r1local/batching.py) drive exactly the same rules: sample a token, `advance` with it,
feed what it returns, until it returns None.

No llama.cpp calls of its own: the engine gives it a sampler and a detokenizer.
"""

from __future__ import annotations

import codecs
import time
from typing import TYPE_CHECKING, Any, Callable

from r1local.reasoning import ANSWER, BUDGET_CLOSE, Chunk, LoopGuard, StopMatcher, ThinkSplitter

if TYPE_CHECKING:
    from r1local.engine import GenerationSettings, Stats


class Reply:
    """One sequence: its prompt, its rules, its Stats.

    ``make_sampler(grammar)`` builds this reply's sampler (seeded from its settings);
    ``detokenize(token) -> bytes``; ``is_eog(token)``; ``close`` the tokens of
    BUDGET_CLOSE; ``n_ctx`` the context this reply may fill."""

    def __init__(self, tokens: list[int], s: "GenerationSettings", stats: "Stats", *,
                 splitter: ThinkSplitter | None, grammar: Any, close: list[int], n_ctx: int,
                 reserve: Callable[[int], int], make_sampler: Callable[[Any], Any],
                 detokenize: Callable[[int], bytes], is_eog: Callable[[int], bool]) -> None:
        self.s = s
        self.stats = stats
        self.splitter = splitter
        self.n_ctx = n_ctx
        self.close = close
        self._grammar = grammar
        self._make_sampler = make_sampler
        self._detokenize = detokenize
        self._is_eog = is_eog
        self.t_call = time.perf_counter()
        self.t_first = self.t_last = 0.0
        if (splitter is not None and s.think_budget is not None and s.think_budget <= 0
                and splitter.in_thinking):
            splitter.feed(BUDGET_CLOSE)  # no reasoning at all: close it in the prompt
            tokens = tokens + close
            stats.forced_answer = True
        self.prompt = tokens
        self._stops = StopMatcher(s.stop)
        self._guard = LoopGuard() if s.loop_guard else None
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.max_new = s.max_tokens if s.max_tokens is not None else n_ctx
        if splitter is not None and splitter.in_thinking:
            stats.answer_reserve = reserve(min(self.max_new, n_ctx - len(tokens)))
        # the grammar binds the answer only: while the model reasons it samples freely, and
        # the grammar's sampler takes over (from its start state) once the reasoning closes
        self._constrained = grammar is not None and (splitter is None or not splitter.in_thinking)
        self.sampler = make_sampler(grammar if self._constrained else None)

    def sample(self, ctx: Any, idx: int) -> int:
        return self.sampler.sample(ctx, idx)

    def _emit(self, chunks: list[Chunk]) -> list[Chunk]:
        out = []
        for c in chunks:
            if c.kind == ANSWER and self.s.stop:
                c = Chunk(ANSWER, self._stops.feed(c.text))
                if self._stops.stopped:
                    self.stats.finish_reason = "stop"
            if c.text:
                out.append(c)
        return out

    def advance(self, token: int, n_past: int) -> tuple[list[Chunk], list[int] | None]:
        """The sampled ``token`` (``n_past`` tokens are in this sequence's context before
        it): the chunks to deliver, and the tokens to feed next (None: the reply is over,
        stats.finish_reason says why)."""
        st, s, splitter = self.stats, self.s, self.splitter
        self.t_last = time.perf_counter()
        if not self.t_first:
            self.t_first = self.t_last
            st.ttft_seconds = self.t_first - self.t_call
        if self._is_eog(token):
            st.finish_reason = "stop"
            return [], None
        st.completion_tokens += 1
        if splitter is not None and not splitter.thinking_closed and not splitter.in_answer:
            st.thinking_tokens += 1
        text = self._decoder.decode(self._detokenize(token))
        out = self._emit(splitter.feed(text) if splitter is not None else [Chunk(ANSWER, text)])
        if self._stops.stopped:
            return out, None
        if self._guard is not None and self._guard.add(token):
            st.finish_reason = "loop"
            return out, None
        if st.completion_tokens >= self.max_new or n_past + 2 >= self.n_ctx:
            st.finish_reason = "length"
            return out, None
        feed = [token]
        # what the context can still take once this token is in, and what an answer begun
        # now could have of it (max_tokens counts the answer, not the close)
        ctx_room = self.n_ctx - 3 - n_past
        answer_room = min(self.max_new - st.completion_tokens, ctx_room - len(self.close))
        budget = s.think_budget
        if (splitter is not None and splitter.in_thinking and (
                (budget is not None and st.thinking_tokens >= budget)
                or 0 < answer_room <= st.answer_reserve)):
            # budget spent, or only the answer's room left: close the reasoning in the
            # context, then the answer follows
            if ctx_room > len(self.close):
                feed += self.close
                out += self._emit(splitter.feed(BUDGET_CLOSE))
                st.forced_answer = True
                if self._guard is not None:
                    self._guard.reset()
        if (splitter is not None and self._grammar is not None and not self._constrained
                and not splitter.in_thinking):
            self.sampler = self._make_sampler(self._grammar)
            self._constrained = True
        return out, feed

    def finish(self) -> list[Chunk]:
        """What is still held back once the reply is over (call once, not when cancelled)."""
        tail = self._decoder.decode(b"", final=True)
        splitter = self.splitter
        chunks = (splitter.feed(tail) + splitter.flush()) if splitter is not None else [Chunk(ANSWER, tail)]
        out = self._emit(chunks)
        rest = self._stops.flush()
        if rest:
            out.append(Chunk(ANSWER, rest))
        return out

    def cancelled(self) -> None:
        self.stats.finish_reason = "cancelled"

    def settle(self, context_tokens: int) -> None:
        """The timings and the context's fill, once the reply is over (however it ended)."""
        self.stats.decode_seconds = (self.t_last - self.t_first) if self.t_first else 0.0
        self.stats.context_tokens = int(context_tokens)
