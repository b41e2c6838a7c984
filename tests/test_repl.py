"""The real REPL (`r1local run MODEL`) driven in a pseudo-terminal with pexpect."""

from __future__ import annotations

import json
import os
import signal
import re
import sys
from pathlib import Path

import pexpect
import pytest

ROOT = Path(__file__).resolve().parent.parent
PROMPT = ">>>"
# prompt_toolkit switches bracketed paste on when a prompt starts and off when it is
# accepted: the reply is what comes between, whatever the line editor redraws
PROMPT_ON, PROMPT_OFF = "\x1b[?2004h", "\x1b[?2004l"


def default_sigint() -> None:
    # a test runner started in the background (`cmd &`) ignores SIGINT, and children
    # inherit that: give the REPL the default handler a terminal user's shell would
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn(model: Path, home: Path, *args: str, timeout: int = 30) -> pexpect.spawn:
    env = dict(os.environ, R1LOCAL_HOME=str(home), PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm",
               COLUMNS="120", LINES="40")
    child = pexpect.spawn(sys.executable, ["-m", "r1local", "run", str(model), *args],
                          cwd=str(ROOT), env=env, encoding="utf-8", timeout=timeout,
                          dimensions=(40, 120), preexec_fn=default_sigint)
    child.expect_exact(PROMPT_ON)
    child.start_text = clean(child.before)
    child.expect(PROMPT)
    return child


def finish(child: pexpect.spawn) -> int:
    child.sendeof()  # Ctrl-D at the prompt leaves
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


class session:
    """Spawned REPL that is always stopped; Ctrl-D on success must exit 0."""

    def __init__(self, *args, **kw) -> None:
        self.child = spawn(*args, **kw)

    def __enter__(self) -> pexpect.spawn:
        return self.child

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.child.terminate(force=True)
            return
        assert finish(self.child) == 0


def clean(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def wait_prompt(child: pexpect.spawn) -> str:
    """Everything printed until the next prompt."""
    child.expect_exact(PROMPT_ON)
    child.raw = child.before
    out = clean(child.before)
    child.expect(PROMPT)
    return out


def printed_before_thought(child: pexpect.spawn) -> str:
    """What stays on screen above "Thought for": the live view is erased (ESC[2K) when
    the reasoning ends, so only text printed after the last erase remains."""
    raw = child.raw[: child.raw.index("Thought for")]
    return clean(raw[raw.rfind("\x1b[2K"):])


def ask(child: pexpect.spawn, text: str) -> str:
    child.sendline(text)
    child.expect_exact(PROMPT_OFF)
    return wait_prompt(child)


def test_conversation_settings_stats_multiline_save_load(micro_reasoner, tmp_path):
    with session(micro_reasoner, tmp_path, "--seed", "1") as child:
        # the start line: what was loaded and how
        assert "layers on GPU" in child.start_text and "context 4096" in child.start_text
        out = ask(child, "What is 3+4?")
        assert "Thought for" in out and "3 + 4 = 7" in out
        assert "I need to add 3 and 4" in printed_before_thought(child)  # shown by default
        out = ask(child, "/think hide")
        out = ask(child, "What color is the sky?")
        assert "The sky is blue" in out and "Thought for" in out
        assert "looks blue on a clear day" in out  # live while it streams...
        assert "looks blue" not in printed_before_thought(child)  # ...then collapsed
        assert "temperature = 0.0" in ask(child, "/set temperature 0")
        assert "think-budget = 3" in ask(child, "/set think-budget 3")
        assert "cannot set" in ask(child, "/set nonsense 1")
        # the budget closes the reasoning after 3 tokens: "France is a"
        assert "cleared" in ask(child, "/clear")
        out = ask(child, "What is the capital of France?")
        assert "France is a" in out and "Its capital" not in out and "Thought for" in out
        assert "think-budget = None" in ask(child, "/set think-budget off")
        out = ask(child, "/stats")
        assert re.search(r"reply\s+\d+ tokens \(\d+ reasoning\) at [\d.]+ tok/s", out)
        assert re.search(r"context\s+\d+ of 4096 tokens", out)
        # multi-line input between """: three lines, one message
        for line in ('"""', "What is 2+3?"):
            child.sendline(line)
            child.expect_exact(PROMPT_OFF)
            child.expect_exact(PROMPT_ON)
            child.expect_exact("...")
        assert "2 + 3 = 5" in ask(child, '"""')
        out = ask(child, "/show")
        assert "micro-reasoner" in out and "temperature 0.0" in out
        assert re.search(r"\d+ tokens kept for the answer", out)
        save = tmp_path / "chat.json"
        assert "saved 4 messages" in ask(child, f"/save {save}")
        data = json.loads(save.read_text())
        assert [m["role"] for m in data["messages"]] == ["user", "assistant"] * 2
        assert data["messages"][2]["content"] == "What is 2+3?"
        assert data["messages"][3]["content"] == "2 + 3 = **5**."
        assert ask(child, "/clear").count("cleared") == 1
        assert "loaded 4 messages" in ask(child, f"/load {save}")
        assert "not a saved conversation" in ask(child, f"/load {ROOT / 'README.md'}")
        out = ask(child, "/retry")
        assert "2 + 3 = 5" in out
        assert "unknown command" in ask(child, "/frobnicate")
    # input history is kept across sessions
    history = (tmp_path / "history").read_text()
    assert "What is 3+4?" in history and "/stats" in history


def test_ctrl_c_stops_generation_and_returns_to_the_prompt(r1_standin, tmp_path):
    # the stand-in never closes <think> and never stops: only Ctrl-C ends the reply
    with session(r1_standin, tmp_path, "--ctx", "4096", "--temperature", "1.0") as child:
        child.sendline("Tell me everything.")
        child.expect("Thinking")
        child.sendintr()
        assert "(stopped)" in wait_prompt(child)
        out = ask(child, "/stats")
        assert "finish   cancelled" in out
        # the session still works after the interrupt; Ctrl-C at the prompt does not leave
        child.sendintr()
        assert "Ctrl-D or /bye" in wait_prompt(child)
        assert "temperature = 0.5" in ask(child, "/set temperature 0.5")


def test_context_fills_oldest_turns_dropped(micro_reasoner, tmp_path):
    with session(micro_reasoner, tmp_path, "--ctx", "256", "--seed", "1") as child:
        long_q = "What is 3+4? " + "please " * 60
        ask(child, long_q)
        ask(child, long_q)
        out = ask(child, long_q)
        assert "context is full: dropped" in out
        out = ask(child, "word " * 400)
        assert "the context holds 256" in out
        assert "context = 512" in ask(child, "/set context 512")
        assert "4 + 1 = 5" in ask(child, "What is 4+1?")


def test_set_samples_answers_several_times_and_keeps_the_majority(micro_reasoner, tmp_path):
    with session(micro_reasoner, tmp_path, "--ctx", "512", "--temperature", "0") as child:
        out = ask(child, "/set samples 3")
        assert "reloading for 3 sequences of 512 tokens" in out and "samples = 3" in out
        out = ask(child, "What is 3+4?")
        assert "3 + 4 = 7" in out  # the first sample, shown as it comes
        assert "majority of 3 samples: 7  (3 of 3 samples) (each: 7, 7, 7)" in out
        assert "context = 512" in ask(child, "/set context 512")  # still 3 sequences after
        assert "majority of 3 samples: 5" in ask(child, "What is 4+1?")
        assert "samples = 1" in ask(child, "/set samples 1")
        assert "majority" not in ask(child, "What is 2+2?")
        assert "samples must be 1 to 64" in ask(child, "/set samples 0")


def test_smollm2_chat_and_bye(smollm2, tmp_path):
    child = spawn(smollm2, tmp_path, "--temperature", "0")
    try:
        out = ask(child, "What is the capital of France? Answer in one sentence.")
        assert "Paris" in out and "Thought for" not in out  # not a reasoning model
        out = ask(child, "Hi!")
        assert out.strip()
        # the second turn reuses the first turn's KV cache: few prompt tokens evaluated
        m = re.search(r"prompt\s+(\d+) tokens \((\d+) evaluated\)", ask(child, "/stats"))
        assert m and int(m.group(2)) < int(m.group(1)) / 2
    finally:
        child.sendline("/bye")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
