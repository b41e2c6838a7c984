"""The <think> splitter, stop matcher, loop guard and history helpers, over every way a
stream can be cut into tokens (hypothesis) plus the real shapes R1 models produce."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from r1local.reasoning import (
    BUDGET_CLOSE, LoopGuard, StopMatcher, ThinkSplitter, fold_system, split_reasoning,
    strip_reasoning,
)


def reference(text: str, started: bool) -> tuple[str, str]:
    """What the splitter must produce, written independently over the whole string."""
    if not started:
        stripped = text.lstrip()
        if not stripped.startswith("<think>"):
            return "", text.strip()
        text = stripped[len("<think>"):]
    if "</think>" in text:
        thinking, answer = text.split("</think>", 1)
        return thinking.strip(), answer.strip()
    return text.strip(), ""


def run_cut(text: str, cuts: list[int], started: bool) -> tuple[str, str, list]:
    s = ThinkSplitter(started=started)
    pieces, prev = [], 0
    for c in sorted(set(cuts)) + [len(text)]:
        pieces.append(text[prev:c])
        prev = c
    chunks = []
    for p in pieces:
        chunks += s.feed(p)
    chunks += s.flush()
    thinking = "".join(c.text for c in chunks if c.kind == "thinking")
    answer = "".join(c.text for c in chunks if c.kind == "answer")
    return thinking, answer, chunks


# text drawn from the pieces tags are made of, so partial tags and near-misses are common
ALPHABET = st.sampled_from(["<", ">", "/", "think", "thin", "k", "</", "<think>", "</think>",
                            " ", "\n", "a", "答", "x y", "</thi", "nk>", "<th"])
TEXTS = st.lists(ALPHABET, max_size=30).map("".join)


@settings(max_examples=400, deadline=None)
@given(text=TEXTS, data=st.data(), started=st.booleans())
def test_split_is_independent_of_how_the_stream_is_cut(text, data, started):
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=len(text) + 1))
    thinking, answer, chunks = run_cut(text, cuts, started)
    assert (thinking, answer) == reference(text, started)
    # the kinds come in order: all thinking, then all answer
    kinds = [c.kind for c in chunks]
    assert kinds == sorted(kinds, key=lambda k: k == "answer")
    assert all(c.text for c in chunks)


def test_every_single_cut_of_a_real_r1_completion():
    text = "<think>\nThe user asks 2+2. That is 4.\n</think>\n\nThe answer is **4**."
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1, 7):
            assert run_cut(text, [i, j], False)[:2] == (
                "The user asks 2+2. That is 4.", "The answer is **4**.")


def test_prompt_already_opened_think():
    assert split_reasoning("Let me think.\n</think>\n\n42", started=True) == ("Let me think.", "42")


def test_model_that_never_closes_think_is_all_reasoning():
    assert split_reasoning("<think>\nhmm hmm </thi", started=False) == ("hmm hmm </thi", "")


def test_non_reasoning_output_is_all_answer():
    assert split_reasoning("Hello <think> there") == ("", "Hello <think> there")


def test_budget_close_ends_the_reasoning():
    s = ThinkSplitter(started=True)
    s.feed("partial thought </thi")
    s.feed(BUDGET_CLOSE)
    assert s.in_answer and s.thinking_closed
    out = s.feed("Answer") + s.flush()
    assert [(c.kind, c.text) for c in out] == [("answer", "Answer")]


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="ab\nXY", max_size=40), stop=st.sampled_from(["XY", "\nb", "aaa"]),
       data=st.data())
def test_stop_matcher_cuts_at_first_stop_whatever_the_pieces(text, stop, data):
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(text)), max_size=10))))
    m = StopMatcher([stop])
    out, prev = "", 0
    for c in cuts + [len(text)]:
        out += m.feed(text[prev:c])
        prev = c
    out += m.flush()
    assert out == text.split(stop)[0]
    assert m.stopped == (stop in text)


def test_loop_guard_stops_repeated_sentence_not_varied_text():
    g = LoopGuard()
    sentence = list(range(100, 130))  # a 30-token sentence
    fired_at = None
    for i, t in enumerate(sentence * 10):
        if g.add(t):
            fired_at = i
            break
    # 4 full cycles of the sentence, and at least min_span tokens
    assert fired_at == 4 * 30 - 1
    assert g.period == 30

    g = LoopGuard()
    import random

    rng = random.Random(0)
    assert not any(g.add(rng.randrange(50)) for _ in range(5000))


def test_loop_guard_single_token_needs_a_long_run():
    g = LoopGuard()
    results = [g.add(7) for _ in range(200)]
    assert results.index(True) == 95  # 96 identical tokens


def test_strip_reasoning_from_history():
    msgs = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "<think>\nsecret\n</think>\n\nA1", "reasoning_content": "x"},
        {"role": "assistant", "content": "<think> never closed"},
        {"role": "user", "content": "q2"},
    ]
    out = strip_reasoning(msgs)
    assert out[1] == {"role": "assistant", "content": "A1"}
    assert out[2]["content"] == ""
    assert out[0] == msgs[0] and msgs[1]["content"].startswith("<think>")  # input untouched


def test_fold_system_into_first_user_turn():
    out = fold_system([{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                       {"role": "user", "content": "U2"}])
    assert out == [{"role": "user", "content": "S\n\nU"}, {"role": "user", "content": "U2"}]
    assert fold_system([{"role": "system", "content": "S"}]) == [{"role": "user", "content": "S"}]
