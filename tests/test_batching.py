"""Continuous batching (r1local/batching.py) on real llama.cpp: several sequences decoded
together give what each gives alone, leave and join independently, share a prompt's
evaluation, and keep their own reasoning rules; majority voting over samples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from micro_reasoner import FACTS
from r1local.engine import Engine, GenerationSettings
from r1local.vote import extract_answer, majority

ROOT = Path(__file__).resolve().parent.parent
POEM = [{"role": "user", "content": "Write a short poem about the sea."}]
SKY_Q, SKY_THINK, SKY_ANSWER = FACTS[0]


def text(chunks) -> str:
    return "".join(c.text for c in chunks)


def parts(chunks) -> tuple[str, str]:
    got = {"thinking": "", "answer": ""}
    for c in chunks:
        got[c.kind] += c.text
    return got["thinking"], got["answer"]


@pytest.fixture(scope="module")
def smol_alone(smollm2):
    with Engine.load(smollm2, n_ctx=512, n_threads=2) as engine:
        yield engine


@pytest.fixture(scope="module")
def smol_batched(smollm2):
    with Engine.load(smollm2, n_ctx=512, n_threads=2, n_parallel=4) as engine:
        yield engine


def test_each_sequence_has_its_own_context_of_the_size_asked(smol_batched):
    assert smol_batched.n_parallel == 4
    assert smol_batched.n_ctx == 512


def test_seeded_samples_together_equal_separate_runs_and_share_the_prompt(smol_alone,
                                                                          smol_batched):
    settings = [GenerationSettings(temperature=0.9, seed=s, max_tokens=24) for s in (11, 12, 13, 14)]
    alone = [text(smol_alone.chat(POEM, s)) for s in settings]
    prompt_tokens = smol_alone.last_stats.prompt_tokens
    streams = smol_batched.chat_samples(POEM, settings)
    together = [text(s) for s in streams]
    assert together == alone
    assert len(set(alone)) > 1  # the seeds really sampled different replies
    # the prompt was evaluated once, by the first sequence; the others copied its KV
    assert [s.stats.prompt_eval_tokens for s in streams] == [prompt_tokens, 0, 0, 0]
    assert all(s.stats.completion_tokens == 24 for s in streams)


def test_samples_whose_prompt_cannot_be_copied_read_it_each(smol_alone, smol_batched,
                                                            monkeypatch):
    """Should llama.cpp refuse to copy a sequence's cells (it returns 0 when the destination
    stream has no room), every sample still gets its reply, reading the prompt itself."""
    import llama_cpp

    settings = [GenerationSettings(temperature=0.9, seed=s, max_tokens=12) for s in (21, 22, 23)]
    alone = [text(smol_alone.chat(POEM, s)) for s in settings]
    prompt_tokens = smol_alone.last_stats.prompt_tokens
    smol_batched._scheduler.forget()
    monkeypatch.setattr(llama_cpp, "llama_state_seq_set_data", lambda *args: 0)
    streams = smol_batched.chat_samples(POEM, settings)
    assert [text(s) for s in streams] == alone
    assert [s.stats.prompt_eval_tokens for s in streams] == [prompt_tokens] * 3


def test_greedy_replies_to_different_prompts_joining_at_different_times(smol_alone,
                                                                        smol_batched):
    prompts = [[{"role": "user", "content": q}] for q in
               ("Name three fruits.", "What is the capital of Italy?", "Say hi to Bob.")]
    greedy = GenerationSettings(temperature=0.0, max_tokens=20)
    alone = [text(smol_alone.chat(p, greedy)) for p in prompts]
    results: dict[int, str] = {}
    first = smol_batched.chat(prompts[0], greedy)
    head = next(first).text  # the first is decoding before the others arrive

    def worker(i: int) -> None:
        results[i] = text(smol_batched.chat(prompts[i], greedy))

    threads = [threading.Thread(target=worker, args=(i,)) for i in (1, 2)]
    for t in threads:
        t.start()
    results[0] = head + text(first)
    for t in threads:
        t.join(timeout=120)
    assert [results[i] for i in range(3)] == alone


def test_a_long_prompt_is_read_inside_the_decode_steps_of_running_replies(smol_alone,
                                                                          smol_batched):
    """With a batch of 24 tokens, a prompt of ~90 joins in pieces that share each step's
    llama_decode with the running replies' tokens, and the running reply is not held up."""
    sched = smol_batched._scheduler
    greedy = GenerationSettings(temperature=0.0, max_tokens=40)
    long = [{"role": "user", "content": "Here is a list of animals: cat, dog, horse, cow, "
             "sheep, goat, pig, duck, goose, hen, rabbit, mouse, rat, fox, wolf, bear, deer, "
             "moose, otter, seal. Which of them can fly?"}]
    short = [{"role": "user", "content": "Say hi to Bob."}]
    alone = [text(smol_alone.chat(p, greedy)) for p in (short, long)]
    assert smol_alone.last_stats.prompt_tokens > 3 * 24
    old_batch, sched.n_batch = sched.n_batch, 24
    try:
        sched.forget()
        mixed = sched.mixed
        first = smol_batched.chat(short, greedy)
        head = next(first).text  # decoding when the long prompt arrives
        second = smol_batched.chat(long, greedy)
        got = [head + text(first), text(second)]
    finally:
        sched.n_batch = old_batch
    # the running reply is untouched; the long prompt's reply starts as it does alone (a
    # prompt read in pieces is multiplied in other shapes than read whole, which can move a
    # logit's last bits, README's serving section: SmolLM2's "is"/"lies" six tokens in is
    # such a near-tie, decided either way by which slots the two replies were given)
    assert got[0] == alone[0]
    assert got[1].split()[:5] == alone[1].split()[:5] == "The answer to this question".split()
    # every piece of the long prompt went beside the first reply's token (23 rows left in
    # each batch of 24), none in a llama_decode of its own, while the first kept decoding
    pieces = -(-second.stats.prompt_eval_tokens // 23)
    assert second.stats.prompt_eval_tokens > 2 * 23  # (the chat template's head was copied)
    assert first.stats.completion_tokens > pieces + 2  # it was running all along
    assert sched.mixed - mixed == pieces


def test_cancelling_one_sequence_leaves_the_others_running(smol_alone, smol_batched):
    settings = [GenerationSettings(temperature=0.9, seed=s, max_tokens=30) for s in (1, 2, 3)]
    alone = [text(smol_alone.chat(POEM, s)) for s in settings]
    cancel = threading.Event()
    streams = smol_batched.chat_samples(POEM, settings[:1])  # one reply on its own ...
    others = smol_batched.chat_samples(POEM, settings[1:])  # ... and two sharing a prompt
    victim = smol_batched.chat(POEM, GenerationSettings(temperature=0.9, seed=99,
                                                        max_tokens=200), cancel=cancel)
    next(victim)
    cancel.set()
    text(victim)
    assert victim.stats.finish_reason == "cancelled"
    assert victim.stats.completion_tokens < 200
    assert [text(s) for s in streams + others] == alone


def test_a_reply_given_up_while_it_waits_for_a_slot_never_takes_one(smol_alone, smol_batched):
    """Every slot busy, one more reply queued and then cancelled: it ends without reading a
    token of its prompt (no slot's cache is spent on it) and the others run as alone."""
    sched = smol_batched._scheduler
    settings = [GenerationSettings(temperature=0.9, seed=s, max_tokens=20) for s in (5, 6, 7, 8)]
    alone = [text(smol_alone.chat(POEM, s)) for s in settings]
    cancel = threading.Event()
    moon = [{"role": "user", "content": "Tell me about the moon, at length."}]
    with sched._cv:  # all queued before the loop looks: the last waits for a slot
        streams = [smol_batched.chat(POEM, s) for s in settings]
        late = smol_batched.chat(moon, GenerationSettings(max_tokens=50), cancel=cancel)
    cancel.set()
    assert text(late) == ""
    assert late.stats.finish_reason == "cancelled" and late.stats.prompt_eval_tokens == 0
    assert [text(s) for s in streams] == alone


def test_a_later_reply_keeps_the_cached_prefix_of_an_earlier_one(smol_batched):
    chat = [{"role": "user", "content": "Tell me about the moon."}]
    greedy = GenerationSettings(temperature=0.0, max_tokens=8)
    first = smol_batched.chat(chat, greedy)
    reply = text(first)
    again = chat + [{"role": "assistant", "content": reply},
                    {"role": "user", "content": "And the sun?"}]
    second = smol_batched.chat(again, greedy)
    text(second)
    # only the new turn was evaluated: the first turn's tokens were still in a slot's KV
    new = second.stats.prompt_tokens - first.stats.prompt_tokens
    assert 0 < second.stats.prompt_eval_tokens <= new


def test_prompts_that_arrive_together_are_read_in_one_decode(smol_alone, smol_batched):
    sched = smol_batched._scheduler
    prompts = [[{"role": "user", "content": q}] for q in
               ("Name three fruits.", "What is the capital of Italy?", "Say hi to Bob.")]
    greedy = GenerationSettings(temperature=0.0, max_tokens=12)
    alone = [text(smol_alone.chat(p, greedy)) for p in prompts]
    sched.forget()  # every prompt is read whole: nothing cached to keep
    decodes = sched.decodes
    with sched._cv:  # the loop waits until all three are queued
        streams = [smol_batched.chat(p, greedy) for p in prompts]
    assert [text(s) for s in streams] == alone
    assert all(s.stats.prompt_eval_tokens == s.stats.prompt_tokens for s in streams)
    # one decode read the three prompts (each reply's first token came from it), then one
    # per further token of the longest reply; read one by one it would take two more
    longest = max(s.stats.completion_tokens for s in streams)
    assert sched.decodes - decodes == longest


def test_replies_in_any_order_of_slots_decode_in_one_pass_a_step(smol_alone, smol_batched):
    """Over several KV streams llama.cpp makes one pass over the weights of a batch only
    for consecutive sequence ids in batch order. Replies admitted in the reverse order of
    their slots are still one pass a step: seen in llama.cpp's graph reuse, since a pass
    reuses the graph of the one before only if the same sequences make it up (one pass per
    sequence, each on another sequence than the last, reuses none)."""
    import llama_cpp

    sched = smol_batched._scheduler
    prompts = [[{"role": "user", "content": q}] for q in
               ("Name a color.", "Name a planet.", "Name a river.", "Name a tree.")]
    greedy = GenerationSettings(temperature=0.0, max_tokens=24, loop_guard=False)
    alone = [text(smol_alone.chat(p, greedy)) for p in prompts]
    sched.forget()
    seq_of = []  # each prompt cached in a slot of its own
    for p in prompts:
        text(smol_batched.chat(p, GenerationSettings(temperature=0.0, max_tokens=1)))
        seq_of.append(max(sched._slots, key=lambda s: s.last_used).seq)
    assert sorted(seq_of) == [0, 1, 2, 3]
    order = sorted(range(4), key=lambda i: -seq_of[i])  # the last slot's prompt first
    ctx = sched.ctx.ctx
    reused, steps = llama_cpp.llama_perf_context(ctx).n_reused, sched.steps
    with sched._cv:  # the loop waits until all four are queued
        streams = [smol_batched.chat(prompts[i], greedy) for i in order]
    assert [text(s) for s in streams] == [alone[i] for i in order]
    reused = llama_cpp.llama_perf_context(ctx).n_reused - reused
    steps = sched.steps - steps
    # every step reuses the last one's graph but where a reply has just ended (and the
    # first, after the prompts' last tokens); one pass per sequence would reuse none
    assert steps > 10 and reused >= steps - 5, (reused, steps)


def test_a_seeded_reply_keeps_a_cached_prefix_and_its_text(smol_alone, smol_batched):
    seeded = GenerationSettings(temperature=0.9, seed=5, max_tokens=16)
    alone = text(smol_alone.chat(POEM, seeded))
    sched = smol_batched._scheduler
    sched.forget()
    first = smol_batched.chat(POEM, seeded)
    assert text(first) == alone
    assert first.stats.prompt_eval_tokens == first.stats.prompt_tokens
    text(smol_batched.chat([{"role": "user", "content": "Write a short poem about rain."}],
                           GenerationSettings(temperature=0.0, max_tokens=4)))
    again = smol_batched.chat(POEM, seeded)
    assert text(again) == alone  # the same seed, the same reply ...
    # ... from the cached prompt: only its last token evaluated again
    assert again.stats.prompt_eval_tokens == 1


@pytest.fixture(scope="module")
def micro_batched(micro_reasoner):
    with Engine.load(micro_reasoner, n_ctx=512, n_threads=2, n_parallel=3) as engine:
        yield engine


def test_reasoning_split_and_budget_hold_per_sequence(micro_reasoner, micro_batched):
    ask = [{"role": "user", "content": SKY_Q}]
    free = GenerationSettings(temperature=0.0)
    budget = GenerationSettings(temperature=0.0, think_budget=3)
    with Engine.load(micro_reasoner, n_ctx=512, n_threads=2) as alone:
        want_free = parts(alone.chat(ask, free))
        want_budget = parts(alone.chat(ask, budget))
    assert want_free == (SKY_THINK, SKY_ANSWER)
    a = micro_batched.chat(ask, free)
    b = micro_batched.chat(ask, budget)
    c = micro_batched.chat(ask, free)
    assert [parts(a), parts(b), parts(c)] == [want_free, want_budget, want_free]
    assert b.stats.forced_answer and b.stats.thinking_tokens == 3
    assert not a.stats.forced_answer and a.stats.thinking_tokens > 3


def test_more_samples_than_slots_run_one_after_another(micro_batched):
    ask = [{"role": "user", "content": "What is 3+4?"}]
    streams = micro_batched.chat_samples(ask, [GenerationSettings(temperature=0.0)] * 5)
    answers = [parts(s)[1] for s in streams]
    assert answers == ["3 + 4 = **7**."] * 5
    assert all(s.stats.finish_reason == "stop" for s in streams)


# ---- voting -------------------------------------------------------------------------

@pytest.mark.parametrize("reply, answer", [
    ("so the result is \\boxed{42}.", "42"),
    ("\\boxed{\\frac{1}{2}} and then \\boxed{x^{2}}", "x^{2}"),
    ("3 + 4 = **7**.", "7"),
    ("It costs 1,250.50 dollars", "1250.5"),
    ("The capital of France is **Paris**.", "the capital of france is paris"),
    ("", ""),
])
def test_the_answer_of_a_sample(reply, answer):
    assert extract_answer(reply) == answer


def test_the_majority_wins_and_ties_go_to_the_first_seen():
    vote = majority(["x = \\boxed{7}", "it is 8", "7.0", "no idea", "so 7"])
    assert (vote.answer, vote.votes, vote.samples) == ("7", 3, 5)
    assert vote.line() == "7  (3 of 5 samples)"
    assert majority(["8", "7", "7", "8"]).answer == "8"
    assert majority(["", ""]).votes == 0


def test_run_samples_prints_the_majority_with_its_votes(micro_reasoner):
    p = subprocess.run([sys.executable, "-m", "r1local", "run", str(micro_reasoner),
                        "What is 3+4?", "--samples", "3", "--temperature", "0", "--ctx", "512",
                        "--json"], cwd=ROOT, env=os.environ.copy(), capture_output=True,
                       text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["vote"] == {"answer": "7", "votes": 3, "samples": 3, "answers": ["7"] * 3}
    assert [s["answer"] for s in out["samples"]] == ["3 + 4 = **7**."] * 3
    assert all(s["thinking"] for s in out["samples"])
    # decoded together: only the first sample evaluated the prompt
    assert [s["stats"]["prompt_eval_tokens"] == 0 for s in out["samples"]] == [False, True, True]
    plain = subprocess.run([sys.executable, "-m", "r1local", "run", str(micro_reasoner),
                            "What is 3+4?", "--samples", "3", "--temperature", "0", "--ctx",
                            "512"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                           stdin=subprocess.DEVNULL)
    assert plain.returncode == 0 and plain.stdout == "7  (3 of 3 samples)\n", plain.stderr


def test_samples_without_a_prompt_is_one_line(micro_reasoner):
    p = subprocess.run([sys.executable, "-m", "r1local", "run", str(micro_reasoner),
                        "hi", "--samples", "0"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, stdin=subprocess.DEVNULL)
    assert p.returncode != 0 and p.stderr.startswith("r1local: error: --samples must be 1 to")
    assert "Traceback" not in p.stderr
