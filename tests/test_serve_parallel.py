"""`serve --parallel N`: requests decoded together on one loaded model (r1local.batching),
each with its own context; OpenAI's `n` served by the same machinery, with a vote."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import time

import httpx
import openai
import pytest

import model_fixtures
from micro_reasoner import FACTS
from r1local.server.background import BackgroundServer
from r1local.server.config import ServerConfig

FIXTURE_DIRS = (str(model_fixtures.cache_dir()), str(model_fixtures.smollm2_path().parent))
QUESTIONS = [q for q, _t, _a in FACTS]


@pytest.fixture(scope="module")
def server():
    with BackgroundServer(ServerConfig(port=0, parallel=3, allow_paths=FIXTURE_DIRS)) as srv:
        yield srv


def stream_chat(url: str, model: str, question: str, **options) -> tuple[list[float], str, str, dict]:
    """(arrival times of the chunks, thinking, answer, the final line) of one /api/chat."""
    times, thinking, answer = [], "", ""
    body = {"model": model, "messages": [{"role": "user", "content": question}],
            "options": {"temperature": 0.0, **options}, "stream": True}
    with httpx.stream("POST", f"{url}/api/chat", json=body, timeout=120) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            part = json.loads(line)
            if part["done"]:
                return times, thinking, answer, part
            times.append(time.monotonic())
            thinking += part["message"].get("thinking", "")
            answer += part["message"]["content"]
    raise AssertionError("the stream ended without done")


def test_requests_decode_together_and_each_gets_its_own_reply(server, micro_reasoner):
    model = str(micro_reasoner)
    alone = {q: stream_chat(server.url, model, q)[1:3] for q in QUESTIONS[:3]}
    assert alone[QUESTIONS[0]] == FACTS[0][1:]
    with cf.ThreadPoolExecutor(3) as pool:
        runs = list(pool.map(lambda q: stream_chat(server.url, model, q), QUESTIONS[:3]))
    assert {q: r[1:3] for q, r in zip(QUESTIONS, runs)} == alone
    first_ends = min(r[0][-1] for r in runs)
    last_starts = max(r[0][0] for r in runs)
    assert last_starts < first_ends  # all three were generating at once, none queued behind
    ps = httpx.get(f"{server.url}/api/ps").json()["models"]
    entry = next(m for m in ps if m["model"] == model)
    assert entry["parallel"] == 3 and entry["active"] == 0
    # the plan holds the KV cache of every sequence: three contexts of context_length
    assert entry["plan"]["n_ctx"] == 3 * entry["context_length"]


def test_more_requests_than_slots_wait_and_none_is_lost(server, micro_reasoner):
    model = str(micro_reasoner)
    questions = [f"What is {a}+{b}?" for a in (1, 2, 3) for b in (1, 2, 4)]
    with cf.ThreadPoolExecutor(len(questions)) as pool:
        runs = list(pool.map(lambda q: stream_chat(server.url, model, q), questions))
    answers = [r[2] for r in runs]
    assert answers == [f"{a} + {b} = **{a + b}**." for a in (1, 2, 3) for b in (1, 2, 4)]
    assert all(r[3]["done_reason"] == "stop" for r in runs)


def test_the_queue_bound_counts_the_waiting_beside_the_running(r1_standin):
    """--parallel 2 --max-queue 1: two replies run, one waits, the next is refused (503)."""
    model = str(r1_standin)  # random weights: a reply runs until its num_predict
    long = {"num_predict": 100000, "temperature": 1.0, "top_k": 100}
    with BackgroundServer(ServerConfig(port=0, parallel=2, max_queue=1,
                                       allow_paths=FIXTURE_DIRS)) as srv:
        httpx.post(f"{srv.url}/api/generate", json={"model": model, "keep_alive": -1},
                   timeout=120).raise_for_status()
        key = str(r1_standin.resolve())
        with contextlib.ExitStack() as stack:
            holds = [stack.enter_context(httpx.stream(
                "POST", f"{srv.url}/api/generate", timeout=60,
                json={"model": model, "prompt": f"Story {i}.", "options": long}))
                for i in range(2)]
            lines = [h.iter_lines() for h in holds]
            for it in lines:
                next(it)  # both are generating at once
            assert srv.manager.loaded[key].active == 2
            waiting = cf.ThreadPoolExecutor(1).submit(
                httpx.post, f"{srv.url}/api/generate", timeout=120,
                json={"model": model, "prompt": "hi", "stream": False,
                      "options": {"num_predict": 3}})
            deadline = time.monotonic() + 10
            slot = srv.manager.loaded[key]
            sched = slot.engine._scheduler
            # leased first, then (its template and tokens made) in the scheduler's queue
            while ((srv.manager._queues[key].pending < 3 or slot.leased < 3
                    or not sched._waiting) and time.monotonic() < deadline):
                time.sleep(0.02)
            # the third waits prepared in the engine's own queue, to start in the step a
            # slot frees; it counts as waiting, not as running
            assert slot.leased == 3 and slot.active == 2
            assert len(sched._waiting) == 1
            over = httpx.post(f"{srv.url}/api/generate", timeout=10, json={
                "model": model, "prompt": "hi", "options": {"num_predict": 1}})
            assert over.status_code == 503 and "busy" in over.json()["error"], over.text
            assert not waiting.done()
        assert waiting.result().json()["eval_count"] == 3  # served once a slot was free


def test_a_request_num_ctx_is_its_own(server, smollm2):
    """A small num_ctx bounds that request only: the next one gets the full context."""
    model = str(smollm2)
    text = "word " * 200
    small = httpx.post(f"{server.url}/api/generate", json={
        "model": model, "prompt": text, "options": {"num_ctx": 128}, "stream": False}, timeout=120)
    assert small.status_code == 400 and "128" in small.json()["error"]
    big = httpx.post(f"{server.url}/api/generate", json={
        "model": model, "prompt": text, "options": {"num_predict": 2}, "stream": False},
        timeout=120)
    assert big.status_code == 200, big.text
    assert big.json()["prompt_eval_count"] > 128


def test_openai_n_returns_the_choices_of_separate_seeded_requests_and_a_vote(server, smollm2):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none")
    ask = [{"role": "user", "content": "What is 2 + 2? Reply with the number only."}]
    one = [client.chat.completions.create(model=str(smollm2), messages=ask, seed=40 + i,
                                          temperature=1.0, max_tokens=12)
           for i in range(3)]
    many = client.chat.completions.create(model=str(smollm2), messages=ask, seed=40, n=3,
                                          temperature=1.0, max_tokens=12)
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert [c.message.content for c in many.choices] == [r.choices[0].message.content for r in one]
    assert many.usage.completion_tokens == sum(r.usage.completion_tokens for r in one)
    vote = many.model_extra["vote"]
    assert vote["samples"] == 3 and 1 <= vote["votes"] <= 3
    assert vote["answer"] in vote["answers"]


def test_openai_n_streams_every_choice_with_its_index(server, micro_reasoner):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none")
    stream = client.chat.completions.create(
        model=str(micro_reasoner), messages=[{"role": "user", "content": "What is 3+4?"}],
        n=2, temperature=0.0, stream=True)
    content = {0: "", 1: ""}
    reasoning = {0: "", 1: ""}
    finish = {}
    vote = None
    for chunk in stream:
        if not chunk.choices:
            vote = (chunk.model_extra or {}).get("vote", vote)
            continue
        c = chunk.choices[0]
        content[c.index] += c.delta.content or ""
        reasoning[c.index] += (c.delta.model_extra or {}).get("reasoning_content") or ""
        if c.finish_reason:
            finish[c.index] = c.finish_reason
    assert content == {0: "3 + 4 = **7**.", 1: "3 + 4 = **7**."}
    assert all(reasoning.values()) and finish == {0: "stop", 1: "stop"}
    assert vote == {"answer": "7", "votes": 2, "samples": 2, "answers": ["7", "7"]}


def test_n_beyond_what_batching_serves_is_400(server, smollm2):
    r = httpx.post(f"{server.url}/v1/chat/completions", json={
        "model": str(smollm2), "messages": [{"role": "user", "content": "hi"}], "n": 65},
        timeout=60)
    assert r.status_code == 400 and "n must be 1 to 64" in r.json()["error"]["message"]


def test_parallel_out_of_range_is_one_line():
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "r1local", "serve", "--parallel", "0"],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode != 0 and p.stderr.strip() == "r1local: error: --parallel must be 1 to 64"
