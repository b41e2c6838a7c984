"""The engine on real llama.cpp: the R1 stand-in (real R1 tokenizer and template, random
weights) and SmolLM2 (a real chat model)."""

from __future__ import annotations

import shutil
import threading

import pytest

from r1local.engine import Engine, GenerationSettings
from r1local.errors import ContextFullError, ModelFileError


@pytest.fixture(scope="module")
def r1(r1_standin):
    e = Engine.load(r1_standin, n_ctx=1024, n_threads=2)
    yield e
    e.close()


@pytest.fixture(scope="module")
def smol(smollm2):
    e = Engine.load(smollm2, n_ctx=1024, n_threads=2)
    yield e
    e.close()


PARIS = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


def text_of(chunks, kind):
    return "".join(c.text for c in chunks if c.kind == kind)


def test_r1_prompt_follows_deepseek_recommendations(r1):
    assert r1.is_reasoning
    prompt = r1.format_chat([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "<think>\nprivate\n</think>\n\nHello!"},
        {"role": "user", "content": "2+2?"},
    ])
    assert prompt == ("<｜begin▁of▁sentence｜><｜User｜>Be brief.\n\nhi<｜Assistant｜>Hello!"
                      "<｜end▁of▁sentence｜><｜User｜>2+2?<｜Assistant｜><think>\n")
    # one BOS, not two: the template prints it and llama.cpp must not add another
    toks = r1._prompt_tokens(prompt)
    assert toks[0] == r1._bos and toks[1] != r1._bos


def test_smollm2_uses_its_own_template_and_keeps_system(smol):
    assert not smol.is_reasoning
    prompt = smol.format_chat([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
    assert prompt.startswith("<|im_start|>system\nS<|im_end|>")
    assert prompt.endswith("<|im_start|>assistant\n")


def test_chat_streams_reasoning_then_stats(r1):
    msgs = [{"role": "user", "content": "What is 2+2?"}]
    s = GenerationSettings(seed=7, max_tokens=24, answer_reserve=0)  # no room kept for an answer
    a = list(r1.chat(msgs, s))
    st = r1.last_stats
    assert st.finish_reason == "length" and st.completion_tokens == 24
    assert st.prompt_tokens == len(r1._prompt_tokens(r1.format_chat(msgs)))
    # the stand-in never closes <think>: everything it says is reasoning
    assert text_of(a, "thinking") and not text_of(a, "answer")
    assert st.thinking_tokens == 24 and st.decode_tok_s > 0 and st.prompt_seconds > 0
    # same seed, same output: a seeded call evaluates its whole prompt again, since a
    # cached prefix plus a shorter batch gives llama.cpp slightly different numbers
    b = list(r1.chat(msgs, s))
    assert [(c.kind, c.text) for c in a] == [(c.kind, c.text) for c in b]
    assert r1.last_stats.prompt_eval_tokens == st.prompt_tokens
    # with the answer's reserve (a quarter of 24 tokens here) the reasoning is closed in time
    kept = list(r1.chat(msgs, GenerationSettings(seed=7, max_tokens=24)))
    assert r1.last_stats.answer_reserve == 6 and r1.last_stats.forced_answer
    assert text_of(kept, "answer") and r1.last_stats.thinking_tokens == 24 - 6


def test_a_seed_gives_the_same_text_whatever_the_cache_holds(smol):
    """A shared prefix in the cache (a previous turn) must not change a seeded reply."""
    s = GenerationSettings(seed=11, max_tokens=24, temperature=1.0, loop_guard=False)
    prompt = "Once upon a time, in a village by the sea, there lived"
    smol.reset()
    cold = "".join(c.text for c in smol.complete(prompt, s))
    list(smol.complete(prompt + " a fisherman and his", GenerationSettings(max_tokens=4)))
    warm = "".join(c.text for c in smol.complete(prompt, s))
    assert smol.last_stats.prompt_eval_tokens == smol.last_stats.prompt_tokens
    assert warm == cold and len(cold) > 20


def test_think_budget_forces_an_answer(r1):
    out = list(r1.chat([{"role": "user", "content": "Why?"}],
                       GenerationSettings(seed=3, max_tokens=40, think_budget=6, loop_guard=False)))
    st = r1.last_stats
    assert st.forced_answer and st.thinking_tokens == 6
    assert st.completion_tokens == 40
    assert text_of(out, "thinking") and text_of(out, "answer")
    kinds = [c.kind for c in out]
    assert kinds.index("answer") > max(i for i, k in enumerate(kinds) if k == "thinking")
    # the context really holds the close tag the budget injected
    ctx = r1._llm.detokenize(list(r1._llm.input_ids[: r1.context_used])).decode("utf-8", "replace")
    assert "\n</think>\n\n" in ctx


def test_think_budget_zero_skips_reasoning(r1):
    out = list(r1.chat([{"role": "user", "content": "Hi"}],
                       GenerationSettings(seed=3, max_tokens=10, think_budget=0)))
    assert not text_of(out, "thinking") and text_of(out, "answer")
    assert r1.last_stats.thinking_tokens == 0


def test_loop_guard_stops_a_repeating_model(r1):
    # greedy decoding on random weights falls into a short cycle, like small distills do
    list(r1.chat([{"role": "user", "content": "Count to ten."}],
                 GenerationSettings(temperature=0, max_tokens=900)))
    st = r1.last_stats
    assert st.finish_reason == "loop" and st.completion_tokens < 900


def test_cancel_stops_between_tokens(smol):
    cancel = threading.Event()
    got = []
    for chunk in smol.chat([{"role": "user", "content": "Tell me a long story."}],
                           GenerationSettings(seed=1, max_tokens=200), cancel=cancel):
        got.append(chunk)
        if len(got) == 3:
            cancel.set()
    assert smol.last_stats.finish_reason == "cancelled"
    assert smol.last_stats.completion_tokens == 3


def test_abandoning_the_stream_counts_as_cancelled(smol):
    it = smol.chat([{"role": "user", "content": "Hello"}], GenerationSettings(seed=1, max_tokens=50))
    next(it)
    it.close()
    assert smol.last_stats.finish_reason == "cancelled"


def test_smollm2_answers_and_stops_on_its_own(smol):
    out = list(smol.chat(PARIS,
                         GenerationSettings(temperature=0, max_tokens=200)))
    assert smol.last_stats.finish_reason == "stop"
    assert "Paris" in text_of(out, "answer")


def test_stop_strings_cut_the_answer(smol):
    s = GenerationSettings(temperature=0, max_tokens=200)
    full = text_of(smol.chat(PARIS, s), "answer")
    word = full.split()[2]
    s.stop = (word,)
    cut = text_of(smol.chat(PARIS, s), "answer")
    assert cut == full[: full.index(word)]
    assert smol.last_stats.finish_reason == "stop"


def test_complete_is_raw(smol):
    out = list(smol.complete("The capital of France is", GenerationSettings(temperature=0, max_tokens=5)))
    assert all(c.kind == "answer" for c in out)
    assert "Paris" in text_of(out, "answer")
    assert smol.last_stats.prompt_tokens == smol.count_tokens("The capital of France is") + (
        1 if smol._llm.tokenize(b"x", add_bos=True)[0] == smol._bos else 0)


def test_prompt_larger_than_context_is_refused(smol):
    with pytest.raises(ContextFullError, match="context holds 1024"):
        smol.chat([{"role": "user", "content": "word " * 2000}], GenerationSettings())


def test_bad_files_are_refused_before_llama_cpp(tmp_path, r1_standin):
    trunc = tmp_path / "trunc.gguf"
    trunc.write_bytes(r1_standin.read_bytes()[: r1_standin.stat().st_size // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        Engine.load(trunc)
    text = tmp_path / "notes.gguf"
    text.write_text("hello, not a model\n" * 10)
    with pytest.raises(ModelFileError, match="not a GGUF"):
        Engine.load(text)
    with pytest.raises(ModelFileError, match="does not exist"):
        Engine.load(tmp_path / "missing.gguf")


def test_load_takes_the_plan_and_overrides(smollm2):
    from types import SimpleNamespace

    plan = SimpleNamespace(n_ctx=768, n_gpu_layers=0, n_threads=1, n_batch=128, n_ubatch=64,
                           flash_attn=False, kv_type="q8_0", use_mmap=False)
    e = Engine.load(smollm2, plan, n_threads=2)
    try:
        assert (e.n_ctx, e.n_threads, e.n_batch, e.kv_type) == (768, 2, 128, "q8_0")
        assert e.flash_attn  # a quantized V cache needs flash attention in llama.cpp
        out = list(e.chat([{"role": "user", "content": "Hi"}], GenerationSettings(seed=1, max_tokens=8)))
        assert out and e.last_stats.completion_tokens <= 8
    finally:
        e.close()


def test_reset_forgets_the_cached_prompt(smol):
    s = GenerationSettings(max_tokens=2)  # unseeded: the cached prefix is reused
    list(smol.complete("One two three four five", s))
    list(smol.complete("One two three four five", s))
    assert smol.last_stats.prompt_eval_tokens == 1  # all but one token reused
    smol.reset()
    list(smol.complete("One two three four five", s))
    assert smol.last_stats.prompt_eval_tokens == smol.last_stats.prompt_tokens > 1


def test_small_context_is_rounded_up_like_llama_cpp(r1_standin):
    # llama.cpp rounds 64 up to 256; a prompt longer than 64 tokens must then just work
    engine = Engine.load(r1_standin, n_ctx=64)
    try:
        assert engine.n_ctx == 256
        out = list(engine.complete("word " * 100, GenerationSettings(max_tokens=4, seed=1)))
        assert out and engine.last_stats.prompt_tokens > 64
    finally:
        engine.close()
