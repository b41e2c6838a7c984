"""Every llama.cpp decode of the process runs on one thread (r1local/compute.py), whatever
thread asks: llama.cpp's OpenMP keeps a thread team per calling thread, and teams that
share the cores slow each other down."""

from __future__ import annotations

import os
import threading

import pytest

from r1local import compute
from r1local.engine import Engine, GenerationSettings


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_the_work_runs_on_one_thread_and_its_errors_come_back():
    seen = []

    def where() -> str:
        seen.append(threading.current_thread().name)
        return seen[-1]

    threads = [threading.Thread(target=compute.run, args=(where,)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert compute.run(where) == "r1local-compute" and set(seen) == {"r1local-compute"}
    with pytest.raises(ZeroDivisionError):
        compute.run(lambda: 1 / 0)
    assert compute.run(lambda a, b: a + b, 2, 3) == 5  # still serving after an error


def test_chats_from_several_threads_share_one_thread_team(smollm2):
    """Four threads that each chat (and stay alive, as a server's request threads do) add
    themselves and at most one team of 3 OpenMP workers, not a team each (12)."""
    msgs = [{"role": "user", "content": "Say hi."}]
    greedy = GenerationSettings(temperature=0.0, max_tokens=4)
    with Engine.load(smollm2, n_ctx=256, n_threads=4) as engine:
        before = os_threads()
        hold = threading.Event()
        done = threading.Semaphore(0)
        replies = []

        def chat() -> None:
            replies.append("".join(c.text for c in engine.chat(msgs, greedy)))
            done.release()
            hold.wait()

        threads = [threading.Thread(target=chat) for _ in range(4)]
        for t in threads:  # one after another: the engine takes one reply at a time
            t.start()
            done.acquire()
        grown = os_threads() - before
        hold.set()
        for t in threads:
            t.join()
    assert len(set(replies)) == 1 and replies[0]
    assert grown <= 4 + 1 + 3, grown  # the four, the compute thread, one team
