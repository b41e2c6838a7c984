"""`r1local run MODEL "prompt"` end to end: the real CLI in a subprocess, real llama.cpp."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def r1local(*args: str, stdin: str | None = None, home: Path | None = None,
            timeout: int = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if home is not None:
        env["R1LOCAL_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "r1local", *args], cwd=ROOT, env=env,
                          input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(p: subprocess.CompletedProcess) -> str:
    assert p.returncode != 0 and p.stdout == ""
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("r1local: error: ")
    return lines[0]


def test_prompt_answer_on_stdout_reasoning_on_stderr(micro_reasoner):
    p = r1local("run", str(micro_reasoner), "What is 3+4?", "--temperature", "0")
    assert p.returncode == 0, p.stderr
    assert p.stdout == "3 + 4 = **7**.\n"
    assert "I need to add 3 and 4. three plus four is seven." in p.stderr


def test_hide_thinking_and_piped_stdin(micro_reasoner):
    p = r1local("run", str(micro_reasoner), "--hide-thinking", "--seed", "5",
                stdin="What is the capital of France?\n")
    assert p.returncode == 0, p.stderr
    assert p.stdout == "The capital of France is **Paris**.\n"
    assert p.stderr == ""


def test_json_output(micro_reasoner):
    p = r1local("run", str(micro_reasoner), "What color is the sky?", "--json", "--seed", "1")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["thinking"] == "The sky looks blue on a clear day."
    assert out["answer"] == "The sky is **blue**."
    assert out["finish_reason"] == "stop"
    st = out["stats"]
    assert st["thinking_tokens"] > 0 and st["completion_tokens"] > st["thinking_tokens"]
    assert st["decode_tok_s"] > 0 and st["prompt_tokens"] > 0


def test_think_budget_from_the_command_line(micro_reasoner):
    p = r1local("run", str(micro_reasoner), "What is 3+4?", "--json", "--temperature", "0",
                "--think-budget", "4")
    out = json.loads(p.stdout)
    assert out["stats"]["forced_answer"] and out["stats"]["thinking_tokens"] == 4
    assert out["thinking"] == "I need to add"  # I · need · to · add
    assert out["answer"]  # the model answered after the forced </think>


def test_non_reasoning_model_and_max_tokens(smollm2):
    p = r1local("run", str(smollm2), "Write a long poem about the sea.", "--max-tokens", "12",
                "--temperature", "0")
    assert p.returncode == 0 and p.stdout.strip()
    assert "token limit" in p.stderr


@pytest.mark.parametrize("make, expected", [
    (lambda d, s: d / "missing.gguf", "does not exist"),
    (lambda d, s: (d / "notes.gguf").write_text("not a model\n" * 9) and d / "notes.gguf", "not a GGUF"),
    (lambda d, s: (d / "half.gguf").write_bytes(s.read_bytes()[: s.stat().st_size // 3])
     and d / "half.gguf", "truncated"),
    (lambda d, s: d, "is a directory"),
])
def test_bad_files_give_one_clear_line(tmp_path, r1_standin, make, expected):
    path = make(tmp_path, r1_standin)
    assert expected in one_line_error(r1local("run", str(path), "hi"))


def test_unknown_tag_suggests(tmp_path):
    line = one_line_error(r1local("run", "7bb", "hi", home=tmp_path))
    assert "unknown model '7bb'" in line and "7b" in line


def test_bad_numbers_and_empty_stdin(micro_reasoner):
    assert "--ctx must be a positive" in one_line_error(
        r1local("run", str(micro_reasoner), "hi", "--ctx", "0"))
    assert "nothing to answer" in one_line_error(r1local("run", str(micro_reasoner), stdin=""))
