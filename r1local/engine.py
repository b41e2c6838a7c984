"""Load a GGUF with a Plan and stream chat or raw completions from llama.cpp.

The only runtime module that imports llama_cpp (lazily, inside Engine.load, so importing
this module for its dataclasses stays cheap). The token loop is our own, over llama.cpp's
eval and sampler: that is what lets the thinking budget put `</think>` into the context,
the loop guard stop a repeating model, and Ctrl-C cancel between tokens.

Generation is not thread-safe: callers serialize use of one Engine.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from r1local import compute
from r1local.errors import ContextFullError, ModelFileError, R1LocalError, UsageError
from r1local.reasoning import (
    BUDGET_CLOSE, THINK_OPEN, Chunk, ThinkSplitter,
    fold_system, is_reasoning_model, strip_reasoning,
)
from r1local.reply import Reply
from r1local.tool_calls import ToolError, family_of
from r1local.tool_calls import prepare as prepare_tools

if TYPE_CHECKING:
    from typing import Callable

    from r1local.ggufinfo import GGUFHeader
    from r1local.planner import Plan

__all__ = ["Chunk", "Engine", "GenerationSettings", "Stats"]

DEFAULT_CTX = 4096  # without a plan: enough for a few reasoning turns, cheap in KV memory
RANDOM_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: llama.cpp picks a random seed
ANSWER_LEAD = r"[ \t\n]{0,3}"  # GBNF: whitespace a grammar-bound answer may open with

# Used only when a GGUF carries no chat template (ChatML, the most common fallback).
FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class GenerationSettings:
    temperature: float = 0.6  # DeepSeek's recommendation for R1 (0.5-0.7)
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    seed: int | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()  # applies to the answer, not to the reasoning
    think_budget: int | None = None  # reasoning tokens before `</think>` is forced
    # tokens kept for the answer: the reasoning is closed when only this much room is left
    # (None: the plan's answer reserve; 0: never, the reasoning may use everything)
    answer_reserve: int | None = None
    loop_guard: bool = True
    # GBNF (start rule "root") the answer must match, e.g. r1local.structured's JSON grammar;
    # a reasoning model's reasoning stays free, the grammar starts once `</think>` is out
    grammar: str | None = None

    def for_samples(self, n: int) -> "list[GenerationSettings]":
        """Settings for ``n`` samples of one prompt (chat_samples): a seed S makes them S,
        S+1, ... (repeatable); without one each sampler seeds itself."""
        return [replace(self, seed=None if self.seed is None else self.seed + i)
                for i in range(n)]


@dataclass
class Stats:
    prompt_tokens: int
    completion_tokens: int
    thinking_tokens: int
    prompt_seconds: float
    decode_seconds: float  # from the first generated token to the last
    load_seconds: float
    finish_reason: str  # "stop" | "length" | "cancelled" | "loop"
    prompt_eval_tokens: int = 0  # prompt tokens actually evaluated (the rest were cached)
    ttft_seconds: float = 0.0  # from the call to the first generated token
    context_tokens: int = 0  # tokens in the context after this call
    n_ctx: int = 0
    forced_answer: bool = False  # the thinking budget or the answer reserve closed the reasoning
    answer_reserve: int = 0  # the room kept for the answer in this reply

    @property
    def prompt_tok_s(self) -> float:
        n = self.prompt_eval_tokens or self.prompt_tokens
        return n / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        # n tokens span n-1 decode steps between the first and the last
        steps = self.completion_tokens - 1
        return steps / self.decode_seconds if steps > 0 and self.decode_seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["prompt_tok_s"] = round(self.prompt_tok_s, 2)
        d["decode_tok_s"] = round(self.decode_tok_s, 2)
        return d


def _default_threads() -> int:
    """Threads when neither a plan nor the caller says: every CPU the OS reports. (The
    planner knows the physical cores; the engine does not probe the machine itself.)"""
    return max(1, os.cpu_count() or 1)


@dataclass
class _LoadParams:
    n_ctx: int
    n_gpu_layers: int
    n_threads: int
    n_batch: int = 512
    n_ubatch: int = 512
    flash_attn: bool = False
    kv_type: str = "f16"
    use_mmap: bool = True


class Engine:
    name: str
    path: Path
    plan: "Plan | None"
    n_ctx: int
    is_reasoning: bool
    last_stats: Stats | None

    def __init__(self) -> None:  # use Engine.load
        self.last_stats = None
        self.rpc_split: Any = None  # planner.RpcSplit when loaded over RPC workers (session)
        self._llm: Any = None
        self._one: Any = None  # the single-token batch of the decode loop
        self._scheduler: Any = None  # batching.Scheduler when loaded with n_parallel > 1
        self._sampler_lock = threading.Lock()
        self.n_parallel = 1

    # ---- loading ---------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path | str, plan: "Plan | None" = None, *, n_ctx: int | None = None,
             n_gpu_layers: int | None = None, n_threads: int | None = None,
             verbose: bool | None = None,
             header: "GGUFHeader | None" = None,
             tensor_split: Sequence[float] | None = None,
             progress: "Callable[[float], None] | None" = None,
             n_parallel: int = 1, cpu_tensors: Sequence[str] = ()) -> "Engine":
        """Validate the GGUF, then load it with the plan's settings (overrides win).
        ``header``: the file's read_model_header, where the caller has it already.
        ``tensor_split``: the offloaded layers' share of each llama.cpp device, RPC workers
        (r1local.rpc.connect, registered before this) first (planner.plan_rpc).
        ``progress``: called with llama.cpp's own load fraction (0 to 1, per tensor, ending
        at 1.0), on the loading thread.
        ``n_parallel``: sequences decoded together (r1local.batching), each with a context of
        its own of n_ctx tokens (the KV cache holds n_parallel times that).
        ``cpu_tensors``: name patterns of tensors kept in host RAM whatever their layer's
        device (Plan.cpu_tensors: a MoE model's routed experts; r1local.model_params)."""
        from r1local.ggufinfo import ggml_type_id, read_model_header
        from r1local.planner import check_ctx, pad_ctx

        path = Path(path)
        # llama.cpp may crash on a bad file: check magic, extents, architecture and every
        # part of a split model first
        header = header or read_model_header(path)
        train_ctx = header.arch_value("context_length")
        params = _params_from(plan, train_ctx)
        if n_ctx is not None:
            params.n_ctx = n_ctx
        if n_gpu_layers is not None:
            params.n_gpu_layers = n_gpu_layers
        if n_threads is not None:
            params.n_threads = n_threads
        check_ctx(params.n_ctx)
        # llama.cpp rounds the context up to a multiple of 256 but llama-cpp-python sizes
        # its token buffer by the number asked for: ask for the rounded size ourselves
        params.n_ctx = pad_ctx(params.n_ctx)
        if verbose is None:
            verbose = bool(os.environ.get("R1LOCAL_VERBOSE"))

        import llama_cpp

        self = cls()
        self.path = path
        self.plan = plan
        self._header_meta = {k: v for k, v in header.metadata.items()
                             if isinstance(v, (str, int, float, bool))}
        self.name = str(header.get("general.name") or path.stem)
        kv = ggml_type_id(params.kv_type)
        # llama.cpp needs flash attention for a quantized V cache
        flash = params.flash_attn or params.kv_type.lower() != "f16"
        Llama = llama_cpp.Llama
        edits = []  # what llama_cpp.Llama cannot set in llama_model_params (model_params.py)
        if progress is not None or cpu_tensors:
            from r1local import model_params

            if progress is not None:
                edits.append(model_params.load_progress(progress))
            if cpu_tensors:
                edits.append(model_params.tensors_in_ram(cpu_tensors))
            Llama = model_params.with_model_params(Llama, edits)
        t0 = time.perf_counter()
        try:
            self._llm = Llama(
                model_path=str(path), n_ctx=params.n_ctx, n_gpu_layers=params.n_gpu_layers,
                n_threads=params.n_threads, n_threads_batch=params.n_threads,
                n_batch=params.n_batch, n_ubatch=params.n_ubatch, flash_attn=flash,
                type_k=kv, type_v=kv, use_mmap=params.use_mmap, verbose=verbose,
                tensor_split=list(tensor_split) if tensor_split else None,
            )
        except (ValueError, RuntimeError) as err:
            raise ModelFileError(f"llama.cpp could not load {path.name}: {err}") from None
        self.load_seconds = time.perf_counter() - t0
        self.n_ctx = self._llm.n_ctx()
        self.n_threads = params.n_threads
        self.n_gpu_layers = params.n_gpu_layers
        self.n_batch = params.n_batch
        self.kv_type = params.kv_type
        self.flash_attn = flash
        self._setup_vocab(header)
        if n_parallel > 1:
            from r1local.batching import Scheduler

            try:
                self._scheduler = Scheduler(self, n_parallel, self.n_ctx)
            except BaseException:
                self.close()
                raise
            self.n_ctx = self._scheduler.slot_ctx
        self.n_parallel = n_parallel
        return self

    def _setup_vocab(self, header: Any) -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        llm = self._llm
        self._vocab = llm._model.vocab
        bos, eos = llm.token_bos(), llm.token_eos()
        self._bos = bos
        self._bos_text = llm.detokenize([bos], special=True).decode("utf-8", "replace") if bos >= 0 else ""
        eos_text = llm.detokenize([eos], special=True).decode("utf-8", "replace") if eos >= 0 else ""
        template = header.get("tokenizer.chat_template")
        self.chat_template = template if isinstance(template, str) and template else FALLBACK_TEMPLATE
        self._formatter = Jinja2ChatFormatter(self.chat_template, eos_text, self._bos_text)
        self.is_reasoning = is_reasoning_model(template if isinstance(template, str) else None,
                                               lambda: len(self.tokenize(THINK_OPEN)) == 1)
        self.tool_family = family_of(template if isinstance(template, str) else None)

    def _decode_one(self, token: int) -> None:
        """llm.eval([token]) without its per-call cache trim and Python batch fill: one
        reused single-token batch straight to llama_decode, and the same bookkeeping
        (input_ids, n_tokens) that eval keeps, so prefix reuse sees the token."""
        import llama_cpp

        llm = self._llm
        b = self._one
        if b is None:
            b = self._one = llama_cpp.llama_batch_init(1, 0, 1)
            b.n_tokens = 1
            b.n_seq_id[0] = 1
            b.seq_id[0][0] = 0
            b.logits[0] = True
        pos = llm.n_tokens
        b.token[0] = token
        b.pos[0] = pos
        rc = compute.run(llama_cpp.llama_decode, llm._ctx.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        llm.input_ids[pos] = token
        llm.n_tokens = pos + 1

    def close(self) -> None:
        if self._scheduler is not None:
            self._scheduler.close()
            self._scheduler = None
        if self._one is not None:
            import llama_cpp

            llama_cpp.llama_batch_free(self._one)
            self._one = None
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- text <-> tokens -------------------------------------------------------------

    def tokenize(self, text: str, *, add_bos: bool = False) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def reset(self) -> None:
        """Forget the cached context: the next call evaluates its whole prompt."""
        if self._scheduler is not None:
            self._scheduler.forget()
        elif self._llm is not None:
            self._llm.reset()
            self._llm._ctx.kv_cache_seq_rm(-1, 0, -1)

    @property
    def context_used(self) -> int:
        """Tokens in the KV cache now (the last prompt and its completion; batched: the
        last reply's)."""
        if self._scheduler is not None:
            return self.last_stats.context_tokens if self.last_stats is not None else 0
        return int(self._llm.n_tokens) if self._llm is not None else 0

    def prepare_messages(self, messages: Sequence[dict]) -> list[dict]:
        """History as the model should see it: earlier reasoning stripped and, for
        reasoning models, the system prompt folded into the first user turn."""
        msgs = strip_reasoning(messages)
        return fold_system(msgs) if self.is_reasoning else msgs

    def format_chat(self, messages: Sequence[dict], *, tools: Sequence[dict] | None = None,
                    tool_choice: str | None = None) -> str:
        """The exact prompt the model sees, ending (for reasoning models) in `<think>\\n`.
        ``tools``: definitions (r1local.tool_calls.check_tools), placed as the model's
        family expects; assistant messages may carry `tool_calls` (ToolCall lists)."""
        try:
            msgs, template_tools = prepare_tools(self.tool_family, strip_reasoning(messages),
                                                 tools, tool_choice)
        except ToolError as err:
            raise UsageError(str(err)) from None
        if self.is_reasoning:
            msgs = fold_system(msgs)
        try:
            prompt = self._formatter(messages=msgs, tools=template_tools).prompt
        except Exception as err:  # a template error is the caller's input problem
            raise R1LocalError(f"the model's chat template failed on these messages: {err}") from None
        if self.is_reasoning and not prompt.rstrip(" ").endswith(THINK_OPEN):
            prompt += THINK_OPEN + "\n"  # DeepSeek: make the output start with <think>\n
        return prompt

    def _prompt_tokens(self, prompt: str) -> list[int]:
        # templates print the BOS text themselves: then llama.cpp must not add another
        has_bos = bool(self._bos_text) and prompt.startswith(self._bos_text)
        return self._llm.tokenize(prompt.encode("utf-8"), add_bos=not has_bos, special=True)

    # ---- generation ------------------------------------------------------------------

    def chat(self, messages: list[dict], settings: GenerationSettings | None = None, *,
             cancel: threading.Event | None = None, tools: Sequence[dict] | None = None,
             tool_choice: str | None = None) -> Iterator[Chunk]:
        prompt = self.format_chat(messages, tools=tools, tool_choice=tool_choice)
        started = self.is_reasoning and prompt.rstrip().endswith(THINK_OPEN)
        return self._generate(self._prompt_tokens(prompt), settings or GenerationSettings(),
                              cancel, ThinkSplitter(started=started) if self.is_reasoning else None)

    def complete(self, prompt: str, settings: GenerationSettings | None = None, *,
                 cancel: threading.Event | None = None) -> Iterator[Chunk]:
        return self._generate(self._prompt_tokens(prompt), settings or GenerationSettings(),
                              cancel, None)

    def _reserve(self, s: GenerationSettings, room: int) -> int:
        """The answer's share of ``room`` (the new tokens this reply may have): the plan's
        reserve, or the setting, but never more than a quarter of the room, so that a short
        --max-tokens still leaves the reasoning most of it."""
        from r1local.planner import answer_reserve

        want = s.answer_reserve if s.answer_reserve is not None else answer_reserve(self.n_ctx)
        return max(0, min(want, room // 4))

    def _is_eog(self, token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def _reuse_prefix(self, tokens: list[int], *, reuse: bool = True) -> int:
        """Keep the cached KV of the longest common prefix (the previous turns). With
        ``reuse`` False the whole prompt is evaluated again: llama.cpp's numbers differ
        slightly between one batch and a cached prefix plus a shorter batch, so a seeded
        request is only reproducible when its prompt is always evaluated the same way."""
        llm = self._llm
        cached = llm.input_ids[: llm.n_tokens]
        n = 0
        limit = min(len(cached), len(tokens) - 1) if reuse else 0  # evaluate >= 1 token
        while n < limit and cached[n] == tokens[n]:
            n += 1
        if n > 0 and llm._ctx.kv_cache_seq_rm(-1, n, -1):
            llm.n_tokens = n
            return n
        llm.reset()
        return 0

    def _generate_check(self, tokens: list[int]) -> None:
        if self._llm is None:
            raise R1LocalError("the model was closed")
        if len(tokens) >= self.n_ctx:
            raise ContextFullError(
                f"the prompt is {len(tokens)} tokens but the context holds {self.n_ctx}",
                hint="shorten it, drop earlier turns, or load with a larger --ctx")

    def _generate(self, tokens: list[int], s: GenerationSettings,
                  cancel: threading.Event | None, splitter: ThinkSplitter | None) -> Iterator[Chunk]:
        self._generate_check(tokens)
        grammar = (self._grammar(s.grammar, after_reasoning=splitter is not None)
                   if s.grammar is not None else None)
        if self._scheduler is None:
            return self._run(tokens, s, cancel, splitter, grammar)
        reply = self._reply(tokens, s, splitter, grammar, self.n_ctx)
        self.last_stats = reply.stats
        return self._scheduler.submit([reply], [cancel])[0]

    def chat_samples(self, messages: list[dict], settings: Sequence[GenerationSettings], *,
                     cancel: threading.Event | None = None, tools: Sequence[dict] | None = None,
                     tool_choice: str | None = None) -> list[Iterator[Chunk]]:
        """One reply per settings (their seeds tell them apart) to the same chat. Loaded with
        n_parallel >= their number, they decode together and the prompt is evaluated once;
        otherwise they run one after another. Each iterator has its Stats as ``.stats`` once
        started; consume them in order (every one to its end, or close it)."""
        prompt = self.format_chat(messages, tools=tools, tool_choice=tool_choice)
        started = self.is_reasoning and prompt.rstrip().endswith(THINK_OPEN)
        tokens = self._prompt_tokens(prompt)

        def splitter() -> ThinkSplitter | None:
            return ThinkSplitter(started=started) if self.is_reasoning else None

        sched = self._scheduler
        if sched is None or len(settings) > sched.n_slots or len(settings) < 2:
            return [_Later(self, lambda s=s: self._generate(tokens, s, cancel, splitter()))
                    for s in settings]
        self._generate_check(tokens)
        replies = []
        for s in settings:
            grammar = (self._grammar(s.grammar, after_reasoning=self.is_reasoning)
                       if s.grammar is not None else None)
            replies.append(self._reply(tokens, s, splitter(), grammar, self.n_ctx))
        if len({tuple(r.prompt) for r in replies}) > 1:  # different budgets: no shared prompt
            return [sched.submit([r], [cancel])[0]
                    for r, s in zip(replies, settings)]
        return sched.submit(replies, [cancel] * len(replies))

    def _grammar(self, text: str, *, after_reasoning: bool) -> Any:
        """A checked LlamaGrammar: llama.cpp's parser must accept the text here, since
        the sampler it would go into cannot report a failure. After reasoning the answer
        may open with the blank line R1 models put after `</think>` (the splitter strips
        it from the reply), so it is not forced against the model's habit."""
        import llama_cpp
        from llama_cpp.llama_grammar import LlamaGrammar

        root = "root"
        if after_reasoning:
            root = "r1local-after-think"
            text = f"{root} ::= {ANSWER_LEAD} root\n{text}"
        probe = llama_cpp.llama_sampler_init_grammar(self._vocab, text.encode("utf-8"),
                                                     root.encode())
        if not probe:
            raise UsageError("llama.cpp refused the grammar made from this JSON schema; "
                             "simplify the schema (see `r1local.structured`)")
        llama_cpp.llama_sampler_free(probe)
        grammar = LlamaGrammar.from_string(text)
        grammar._root = root  # what llama-cpp-python's add_grammar passes as the start rule
        return grammar

    def _sampler(self, s: GenerationSettings, grammar: Any = None) -> Any:
        # llama-cpp-python seeds a new sampler's dist stage from llm._seed, which replies
        # being set up on other threads (batching) must not change in between
        with self._sampler_lock:
            self._llm.set_seed(RANDOM_SEED if s.seed is None else int(s.seed) & 0xFFFFFFFF)
            return self._llm._init_sampler(top_k=s.top_k, top_p=s.top_p, min_p=s.min_p,
                                           temp=s.temperature, repeat_penalty=s.repeat_penalty,
                                           grammar=grammar)

    def _detokenize(self, token: int) -> bytes:
        return self._llm.detokenize([token])

    def _reply(self, tokens: list[int], s: GenerationSettings, splitter: ThinkSplitter | None,
               grammar: Any, n_ctx: int) -> Reply:
        """One sequence's rules (r1local.reply) over this engine's vocabulary."""
        stats = Stats(prompt_tokens=len(tokens), completion_tokens=0, thinking_tokens=0,
                      prompt_seconds=0.0, decode_seconds=0.0, load_seconds=self.load_seconds,
                      finish_reason="stop", n_ctx=n_ctx)
        return Reply(tokens, s, stats, splitter=splitter, grammar=grammar,
                     close=self.tokenize(BUDGET_CLOSE) if splitter is not None else [], n_ctx=n_ctx,
                     reserve=lambda room: self._reserve(s, room),
                     make_sampler=lambda g: self._sampler(s, g),
                     detokenize=self._detokenize, is_eog=self._is_eog)

    def _run(self, tokens: list[int], s: GenerationSettings,
             cancel: threading.Event | None, splitter: ThinkSplitter | None,
             grammar: Any = None) -> Iterator[Chunk]:
        llm = self._llm
        reply = self._reply(tokens, s, splitter, grammar, self.n_ctx)
        self.last_stats = stats = reply.stats
        try:
            prompt = reply.prompt
            reused = self._reuse_prefix(prompt, reuse=s.seed is None)
            rest = prompt[reused:]
            stats.prompt_eval_tokens = len(rest)
            t0 = time.perf_counter()
            for i in range(0, len(rest), self.n_batch):  # batches: cancellable between them
                if cancel is not None and cancel.is_set():
                    reply.cancelled()
                    return
                compute.run(llm.eval, rest[i:i + self.n_batch])
            stats.prompt_seconds = time.perf_counter() - t0
            while True:
                if cancel is not None and cancel.is_set():
                    reply.cancelled()
                    break
                out, feed = reply.advance(reply.sample(llm._ctx, -1), llm.n_tokens)
                if out:
                    yield from out
                if feed is None:
                    break
                if len(feed) == 1:
                    self._decode_one(feed[0])
                else:
                    compute.run(llm.eval, feed)
            yield from reply.finish()
        except GeneratorExit:
            reply.cancelled()
            raise
        finally:
            reply.settle(llm.n_tokens)


class _Later:
    """An iterator that starts its generation when first asked (the samples that run one
    after another), with that generation's Stats as ``.stats``."""

    def __init__(self, engine: "Engine", start: Any) -> None:
        self._engine = engine
        self._start = start
        self._it: Any = None
        self.stats: Stats | None = None

    def __iter__(self) -> "_Later":
        return self

    def __next__(self) -> Chunk:
        if self._it is None:
            self._it = self._start()
        try:
            return next(self._it)
        finally:  # the engine's loop makes its Stats when it starts
            self.stats = getattr(self._it, "stats", None) or self._engine.last_stats

    def close(self) -> None:
        if self._it is not None and hasattr(self._it, "close"):
            self._it.close()


def _params_from(plan: "Plan | None", train_ctx: Any) -> _LoadParams:
    if plan is not None:
        return _LoadParams(
            n_ctx=int(plan.n_ctx), n_gpu_layers=int(plan.n_gpu_layers),
            n_threads=int(plan.n_threads) or _default_threads(),
            n_batch=int(plan.n_batch) or 512, n_ubatch=int(plan.n_ubatch) or 512,
            flash_attn=bool(plan.flash_attn), kv_type=str(plan.kv_type),
            use_mmap=bool(plan.use_mmap),
        )
    ctx = DEFAULT_CTX
    if isinstance(train_ctx, int) and train_ctx > 0:
        ctx = min(ctx, train_ctx)
    return _LoadParams(n_ctx=ctx, n_gpu_layers=0, n_threads=_default_threads())
