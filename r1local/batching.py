"""Many replies decoded together: continuous batching over one llama.cpp context.

On a CPU decoding is bound by memory bandwidth, so one pass over the weights can advance
several sequences for little more than the cost of one. The Scheduler owns a context
made for ``n_slots`` sequences, each in its own KV stream (llama.cpp's non-unified cache:
a sequence sees exactly the cells a single-sequence run would). Its numbers are then the
ones it gets alone, but for the last bits when a piece of a prompt shares a llama_decode
with other sequences' tokens (measured on the 1 GiB F16 model: up to 0.03 in a logit), so
greedy and seeded replies repeat their text, not always their bits, under load. A cached
or copied prefix measured bit-identical to evaluating it again, so every reply keeps one,
seeded or not (llama-server does the same). One thread runs the loop:

- a new reply takes a free slot, keeping the longest prefix cached in that slot or
  copying the cells of another slot's stream that shares more;
- every step is one llama_decode: one token for every running reply, each sampled at its
  own row through its own rules (r1local.reply), and in the room the batch has left the
  next pieces of the prompts still being read (oldest first), so a long prompt joins
  without stalling the running replies for more than a batch, and without a pass of its
  own, and requests that arrive together are read together;
- a group of replies on one prompt (`--samples K`, OpenAI's `n`) evaluates it once: the
  others copy the first one's stream and sample from the same logits;
- a finished or cancelled reply leaves between steps; its slot keeps its tokens as cache.

Replies reach their callers through a Stream per reply (an iterator of Chunks with the
reply's Stats), consumed from any thread.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from r1local import compute
from r1local.errors import R1LocalError

if TYPE_CHECKING:
    from r1local.engine import Engine, Stats
    from r1local.reasoning import Chunk
    from r1local.reply import Reply

_END = object()
MAX_PARALLEL = 64  # sequences one context decodes together (a decode step fits one batch)
DEFAULT_PARALLEL = 4  # serve's default when the memory allows it (llama-server's too)
SLOT_CTX = 8192  # each sequence's default context: room for a long reasoning and its answer


class Stream:
    """One reply's chunks as they come, from the scheduler's thread to the caller's.
    Closing it early (or setting its cancel Event) cancels the reply."""

    def __init__(self, reply: "Reply", cancel: threading.Event | None) -> None:
        self.stats: "Stats" = reply.stats
        self.cancel = cancel or threading.Event()
        self._q: queue.SimpleQueue = queue.SimpleQueue()

    def __iter__(self) -> Iterator["Chunk"]:
        return self

    def __next__(self) -> "Chunk":
        item = self._q.get()
        if item is _END:
            self._q.put(_END)  # stays ended for any further next()
            raise StopIteration
        if isinstance(item, BaseException):
            self._q.put(_END)
            raise item
        return item

    def close(self) -> None:
        """Cancel the reply if it still runs, and wait for its end: its Stats are final."""
        self.cancel.set()
        try:
            for _ in self:
                pass
        except Exception:  # its error was for the consumer, who has stopped listening
            pass

    def __del__(self) -> None:
        self.cancel.set()


@dataclass
class _Slot:
    seq: int
    tokens: list[int] = field(default_factory=list)  # what this sequence's KV holds
    job: "_Job | None" = None
    last_used: float = 0.0


@dataclass
class _Job:
    reply: "Reply"
    stream: Stream
    slot: _Slot | None = None
    todo: list[int] = field(default_factory=list)  # prompt tokens still to evaluate
    feed: list[int] = field(default_factory=list)  # tokens to decode next
    followers: list["_Job"] = field(default_factory=list)  # same prompt, sample from ours
    done: bool = False


class Scheduler:
    """Continuous batching over ``engine``'s model, ``n_slots`` sequences of ``slot_ctx``
    tokens each. Created by Engine.load; its context replaces the single-sequence one."""

    def __init__(self, engine: "Engine", n_slots: int, slot_ctx: int) -> None:
        import llama_cpp
        from llama_cpp import _internals

        llm = engine._llm
        params = type(llm.context_params).from_buffer_copy(llm.context_params)
        params.n_ctx = n_slots * slot_ctx
        params.n_seq_max = n_slots
        params.kv_unified = False  # a stream per sequence: each sees only its own cells
        old = llm._ctx
        old.close()  # its KV was sized for one sequence: free it before the larger one
        try:
            ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=llm.verbose)
        except ValueError:
            raise R1LocalError(f"llama.cpp could not make a context for {n_slots} sequences "
                               f"of {slot_ctx} tokens; use a smaller --parallel or --ctx") from None
        llm._ctx = ctx
        llm._stack.enter_context(contextlib.closing(ctx))
        self.engine = engine
        self.ctx = ctx
        self.n_slots = n_slots
        self.slot_ctx = int(llama_cpp.llama_n_ctx_seq(ctx.ctx))
        self.n_batch = engine.n_batch
        self._mem = ctx.memory
        self._batch = llama_cpp.llama_batch_init(max(self.n_batch, n_slots * 8), 0, 1)
        self._slots = [_Slot(seq=i) for i in range(n_slots)]
        self._waiting: list[list[_Job]] = []  # groups not yet admitted, in order
        self._jobs: list[_Job] = []  # admitted, not done
        self._cv = threading.Condition()
        self._stop = False
        self._forget = False
        self._thread: threading.Thread | None = None
        self.decodes = 0  # llama_decode calls (tests and benches)
        self.steps = 0  # of those, the ones that advanced running replies
        self.mixed = 0  # of those, the ones that also read a piece of a prompt

    # ---- the callers' side -------------------------------------------------------------

    def submit(self, replies: Sequence["Reply"],
               cancels: Sequence[threading.Event | None]) -> list[Stream]:
        """Queue replies; more than one must share one prompt (they evaluate it once)."""
        if len(replies) > self.n_slots:
            raise R1LocalError(f"{len(replies)} sequences at once, but the model was loaded "
                               f"for {self.n_slots}; load it with --parallel {len(replies)}")
        jobs = [_Job(r, Stream(r, c)) for r, c in zip(replies, cancels)]
        with self._cv:
            if self._stop:
                raise R1LocalError("the model was closed")
            self._waiting.append(jobs)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="r1local-batch",
                                                daemon=True)
                self._thread.start()
            self._cv.notify()
        return [j.stream for j in jobs]

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join()
        for group in self._waiting:
            for job in group:
                self._end(job, R1LocalError("the model was closed"))
        if self._batch is not None:
            import llama_cpp

            llama_cpp.llama_batch_free(self._batch)
            self._batch = None

    def forget(self) -> None:
        """Drop every slot's cached tokens (the next reply evaluates its whole prompt).
        Done by the loop's thread, the only one that touches the context."""
        with self._cv:
            self._forget = True

    @property
    def busy(self) -> int:
        return sum(1 for s in self._slots if s.job is not None)

    # ---- the loop ----------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cv:
                while (not self._stop and not self._jobs and not self._admissible()
                       and not self._forget):
                    self._cv.wait()
                if self._stop:
                    for job in self._jobs:
                        self._end(job, R1LocalError("the model was closed"))
                    self._jobs = []
                    return
                if self._forget and not self._jobs:
                    for slot in self._slots:
                        self._rm(slot.seq, 0)
                        slot.tokens = []
                    self._forget = False
                self._admit()
            try:
                self._step()
            except Exception as err:  # llama.cpp refused a batch: end what was in it
                fail = R1LocalError(f"generation failed: {err}")
                for job in self._jobs:
                    self._end(job, fail)
                self._jobs = []

    def _admissible(self) -> bool:
        free = sum(1 for s in self._slots if s.job is None)
        return bool(self._waiting) and len(self._waiting[0]) <= free

    def _admit(self) -> None:
        for group in [g for g in self._waiting if all(j.stream.cancel.is_set() for j in g)]:
            self._waiting.remove(group)  # given up while it waited: no slot's cache spent
            for job in group:
                job.reply.cancelled()
                self._finish(job)
        while self._admissible():
            group = self._waiting.pop(0)
            lead = group[0]
            self._place(lead)
            for job in group[1:]:
                job.slot = self._free_slot(())
                job.slot.job = job
                lead.followers.append(job)
            self._jobs.extend(group)

    def _free_slot(self, prompt: Sequence[int]) -> _Slot:
        """The free slot whose cache loses least to ``prompt`` (its tokens past the common
        prefix), then the one sharing most, then the least recently used: a new chat goes
        to an empty slot and copies the shared head, rather than overwrite another chat."""
        def key(s: _Slot) -> tuple[int, int, float]:
            common = _common(s.tokens, prompt)
            return (common - len(s.tokens), common, -s.last_used)

        return max((s for s in self._slots if s.job is None), key=key)

    def _place(self, job: _Job) -> None:
        """A slot for ``job``, keeping the longest cached prefix of its prompt: its own
        slot's, or a copy of another stream's that shares more."""
        prompt = job.reply.prompt
        slot = job.slot = self._free_slot(prompt)
        slot.job = job
        limit = len(prompt) - 1  # evaluate at least one token: its logits start the reply
        keep = min(_common(slot.tokens, prompt), limit)
        donor = max(self._slots, key=lambda s: _common(s.tokens, prompt))
        share = min(_common(donor.tokens, prompt), limit)
        if donor is not slot and share > keep:
            copied = self._cp(donor.seq, [slot.seq])
            slot.tokens = list(donor.tokens) if copied else []
            keep = share if copied else 0
        self._rm(slot.seq, keep)
        slot.tokens = slot.tokens[:keep]
        job.todo = list(prompt[keep:])
        job.reply.stats.prompt_eval_tokens = len(job.todo)

    def _step(self) -> None:
        """One llama_decode: a token for every running reply and, in the same batch, the
        next pieces of the prompts still being read, oldest first (what room is left)."""
        for job in list(self._jobs):
            if job.stream.cancel.is_set():
                job.reply.cancelled()
                self._finish(job)
        reading = [j for j in self._jobs if j.todo]
        running = [j for j in self._jobs if j.feed and not j.done]
        alone = [j for j in running if len(j.feed) > 1]  # the thinking close: its own batch
        together = [j for j in running if len(j.feed) == 1]
        for job in alone:
            self._decode([job], [])
        if reading and self.n_batch - len(together) < 1:
            self._decode([], reading)  # no room beside the running replies: alone
            reading = []
        if together or reading:
            self._decode(together, reading)
        self._jobs = [j for j in self._jobs if not j.done]

    def _decode(self, jobs: list[_Job], reading: list[_Job]) -> None:
        """``jobs``' next tokens and pieces of ``reading``'s prompts, in one llama_decode."""
        parts = [(job, job.feed, True) for job in jobs]
        n = sum(len(job.feed) for job in jobs)
        pieces = 0
        for job in reading:
            room = self.n_batch - n
            if room < 1:
                break
            chunk, job.todo = job.todo[:room], job.todo[room:]
            parts.append((job, chunk, not job.todo))
            n += len(chunk)
            pieces += 1
        # Over several KV streams llama.cpp cuts a batch into ubatches of consecutive
        # sequence ids in batch order (llama_batch_allocr::split_equal), each one more pass
        # over the weights: so the batch goes in sequence order. Replies in the order they
        # came made 6.4 passes of a 16-sequence step.
        parts.sort(key=lambda p: p[0].slot.seq)
        entries = [(job.slot, tokens, logits) for job, tokens, logits in parts]
        row: dict[int, int] = {}  # id(job) -> the batch row of its last token
        n = 0
        for job, tokens, _ in parts:
            n += len(tokens)
            row[id(job)] = n - 1
        # the prompts that end in this batch, at their row
        read = [(job, row[id(job)]) for job in reading[:pieces] if not job.todo]
        rows = [row[id(job)] for job in jobs]
        t0 = time.perf_counter()
        self._fill(entries)
        self._run_batch()
        self.decodes += 1
        if jobs:
            self.steps += 1
            self.mixed += pieces > 0
        for job, idx in zip(jobs, rows):
            self._advance(job, idx)
        spent = time.perf_counter() - t0
        for job in reading[:pieces]:
            job.reply.stats.prompt_seconds += spent
        for job, idx in read:
            self._prompt_read(job, idx)

    def _prompt_read(self, job: _Job, idx: int) -> None:
        """``job``'s prompt is in its stream, with its last token's logits at row ``idx``:
        every member of its group samples its first token from there."""
        members = [job, *(f for f in job.followers if not f.done)]
        job.followers = []
        # the same prompt: copy its cells, skip the work
        if len(members) > 1 and not self._cp(job.slot.seq, [f.slot.seq for f in members[1:]]):
            for follower in members[1:]:  # not copied: each reads the prompt itself
                follower.slot.tokens = []
                follower.todo = list(follower.reply.prompt)
                follower.reply.stats.prompt_eval_tokens = len(follower.todo)
            members = [job]
        for follower in members[1:]:
            follower.slot.tokens = list(job.slot.tokens)
            follower.reply.stats.prompt_eval_tokens = 0
            follower.reply.stats.prompt_seconds = job.reply.stats.prompt_seconds
        for member in members:
            self._advance(member, idx)

    def _fill(self, entries: list[tuple[_Slot, list[int], bool]]) -> None:
        """The batch: each slot's tokens at its next positions, logits on its last token
        where asked."""
        b = self._batch
        i = 0
        for slot, tokens, logits in entries:
            pos = len(slot.tokens)
            for k, tok in enumerate(tokens):
                b.token[i] = tok
                b.pos[i] = pos + k
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = slot.seq
                b.logits[i] = logits and k == len(tokens) - 1
                i += 1
            slot.tokens.extend(tokens)
            slot.last_used = time.monotonic()
        b.n_tokens = i

    def _run_batch(self) -> None:
        import llama_cpp

        rc = compute.run(llama_cpp.llama_decode, self.ctx.ctx, self._batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def _advance(self, job: _Job, idx: int) -> None:
        reply = job.reply
        token = reply.sample(self.ctx, idx)
        out, feed = reply.advance(token, len(job.slot.tokens))
        for c in out:
            job.stream._q.put(c)
        if feed is None:
            self._finish(job)
        else:
            job.feed = feed

    def _finish(self, job: _Job) -> None:
        if job.done:
            return
        if job.followers:  # ended before its prompt was read: the next member reads it
            lead, *rest = job.followers
            job.followers = []
            lead.followers = rest
            self._rm(lead.slot.seq, 0)
            lead.slot.tokens = []
            lead.todo = list(lead.reply.prompt)
            lead.reply.stats.prompt_eval_tokens = len(lead.todo)
        try:
            for c in job.reply.finish():
                job.stream._q.put(c)
        finally:
            self._end(job, None)

    def _end(self, job: _Job, error: BaseException | None) -> None:
        job.done = True
        job.todo = []
        job.feed = []
        if job.slot is not None:
            job.reply.settle(len(job.slot.tokens))
            job.slot.job = None
            if error is not None:  # what the failed batch left in the cache is not trusted
                self._rm(job.slot.seq, 0)
                job.slot.tokens = []
        if error is not None:
            job.reply.stats.finish_reason = "error"
            job.stream._q.put(error)
        job.stream._q.put(_END)

    # ---- the KV cache ------------------------------------------------------------------

    def _rm(self, seq: int, p0: int) -> None:
        import llama_cpp

        llama_cpp.llama_memory_seq_rm(self._mem, seq, p0, -1)

    def _cp(self, src: int, dsts: list[int]) -> bool:
        """The cells ``src`` holds copied into each of ``dsts`` (their own cells dropped first);
        False if llama.cpp could not, and then every one of ``dsts`` is left empty.
        Through llama.cpp's per-sequence state, which holds only the cells in use:
        llama_memory_seq_cp across streams copies the whole stream's buffers, a slot's full
        context of KV (45 MiB for SmolLM2's 2048 tokens; 1 GiB for an 8B model's 8192)."""
        import ctypes

        import llama_cpp

        ctx = self.ctx.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, src)
        buf = (ctypes.c_uint8 * size).from_buffer(bytearray(size))
        n = llama_cpp.llama_state_seq_get_data(ctx, buf, size, src)
        if n and all(llama_cpp.llama_state_seq_set_data(ctx, buf, n, dst) for dst in dsts):
            return True
        for dst in dsts:
            self._rm(dst, 0)
        return False


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
