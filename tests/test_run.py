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
            timeout: int = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {})}
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
    assert "--ctx of 0 tokens is too small" in one_line_error(
        r1local("run", str(micro_reasoner), "hi", "--ctx", "0"))
    assert "nothing to answer" in one_line_error(r1local("run", str(micro_reasoner), stdin=""))


# ---- the plan says no: refused, unless --force -----------------------------------------------

def test_a_model_that_does_not_fit_is_refused_and_force_loads_it(micro_reasoner, tmp_path):
    # --ram plans for a machine with that much RAM: 64 MiB leaves nothing once the OS's
    # share is set aside, so the ~100 MiB this model needs cannot fit
    args = ("run", str(micro_reasoner), "What is 3+4?", "--temperature", "0", "--ram", "64M")
    line = one_line_error(r1local(*args, home=tmp_path))
    assert "does not fit this machine with 64.0 MiB of RAM (--ram)" in line
    assert "more than the 0 B RAM it may use" in line and "add --force" in line

    forced = r1local(*args, "--force", home=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout == "3 + 4 = **7**.\n"
    assert "loading it anyway (--force)" in forced.stderr

    # planned for a machine it fits on, the same model runs without a word about fitting
    roomy = r1local("run", str(micro_reasoner), "What is 3+4?", "--temperature", "0",
                    "--ram", "4G", home=tmp_path)
    assert roomy.returncode == 0, roomy.stderr
    assert roomy.stdout == "3 + 4 = **7**.\n" and "fit" not in roomy.stderr


def test_bad_ram_size(micro_reasoner):
    assert "cannot read size '4Q'" in one_line_error(
        r1local("run", str(micro_reasoner), "hi", "--ram", "4Q"))


# ---- no model named: the planner's recommendation --------------------------------------------

RAM = "4G"  # keeps the recommendation to a small variant on any machine


def expected_recommendation() -> str:
    """What the planner recommends here with RAM capped at RAM, as `run --ram` plans."""
    from dataclasses import replace

    from r1local.catalog import load_catalog
    from r1local.hardware import probe
    from r1local.units import parse_size
    from r1local.quant_choice import recommend

    m = probe()
    cap = parse_size(RAM)
    m = replace(m, ram_total=min(m.ram_total, cap), ram_available=min(m.ram_available, cap))
    plan = recommend(load_catalog(), m)
    assert plan.fits
    return f"{plan.model}:{plan.quant}"


@pytest.fixture
def standin_hub(tmp_path, loopback_hub, r1_standin):
    """A hub serving the R1 stand-in under every catalog variant's (one-file) quants, so a
    pull of whatever is recommended would succeed: a silent download would go unnoticed
    but for the hub's log. Returns (hub, env for r1local)."""
    from loopback_hub import layout_variant, unpinned_catalog

    from r1local.catalog import load_catalog

    for variant in load_catalog():
        layout_variant(loopback_hub, variant, r1_standin)
    env = {"HF_ENDPOINT": loopback_hub.url, "HF_HOME": str(tmp_path / "hf"),
           "R1LOCAL_HOME": str(tmp_path / "r1"), "HF_HUB_DISABLE_TELEMETRY": "1",
           # run's pull cannot say --trust-hub: a catalog that pins nothing takes the stand-in
           "R1LOCAL_CATALOG": str(unpinned_catalog(tmp_path / "models.toml"))}
    return loopback_hub, env


def stored_names(env: dict) -> list[str]:
    manifest = Path(env["R1LOCAL_HOME"]) / "models" / "manifest.json"
    return sorted(json.loads(manifest.read_text())["models"]) if manifest.exists() else []


def test_no_model_given_a_script_pulls_the_recommendation_then_uses_it(standin_hub):
    hub, env = standin_hub
    ref = expected_recommendation()
    # a prompt in place of the tag: nobody to ask, so it pulls (saying what and how big)
    p = r1local("run", "What is 3+4?", "--ram", RAM, "--json", "--max-tokens", "4",
                "--seed", "1", env=env, timeout=180)
    assert p.returncode == 0, p.stderr
    assert f"pulling {ref} (" in p.stderr and "the recommended model for this machine" in p.stderr
    assert stored_names(env) == [ref] and hub.body_gets()
    assert json.loads(p.stdout)["stats"]["completion_tokens"] > 0

    hub.log.clear()  # then a prompt, and piped stdin, both use the stored file: no hub at all
    for args, stdin in ((["What is 3+4?"], None), ([], "What is 3+4?\n")):
        p = r1local("run", *args, "--ram", RAM, "--json", "--max-tokens", "4", "--seed", "1",
                    stdin=stdin, env=env, timeout=120)
        assert p.returncode == 0, p.stderr
        assert f"using {ref}, the recommended model for this machine" in p.stderr
        out = json.loads(p.stdout)
        assert out["model"].startswith("DeepSeek R1 stand-in")  # the stored file was loaded
        assert out["stats"]["completion_tokens"] > 0
    assert hub.requests() == []


def test_no_model_fits_says_so(tmp_path):
    # the quoted prompt in place of the tag goes to the planner, not to the store
    line = one_line_error(r1local("run", "What is 3+4?", "--ram", "64M", home=tmp_path))
    assert "no R1 model fits this machine" in line and "r1local hw" in line


# ---- no model named, at a terminal: asked before a download ----------------------------------

def spawn_run(env: dict, *args: str):
    import signal

    import pexpect

    def default_sigint() -> None:  # a runner started with `cmd &` ignores SIGINT
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    return pexpect.spawn(sys.executable, ["-m", "r1local", "run", *args], cwd=str(ROOT),
                         env={**os.environ, **env, "PROMPT_TOOLKIT_NO_CPR": "1",
                              "TERM": "xterm", "COLUMNS": "120", "LINES": "40"},
                         encoding="utf-8", timeout=60, dimensions=(40, 120),
                         preexec_fn=default_sigint)


def closed(child) -> tuple[int, str]:
    """Wait for the end; (exit status, everything it wrote after the last expect)."""
    import pexpect

    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus, child.before


QUESTION = "Download it now? [Y/n]"
PROMPT_ON = "\x1b[?2004h"  # prompt_toolkit turns bracketed paste on at each chat prompt


def test_no_model_given_at_a_terminal_asks_before_pulling(standin_hub):
    hub, env = standin_hub
    ref = expected_recommendation()

    child = spawn_run(env, "--ram", RAM)
    try:
        child.expect_exact(QUESTION)
        assert f"The recommended model for this machine is {ref} (" in child.before
        child.sendline("n")
        status, rest = closed(child)
    finally:
        child.terminate(force=True)
    assert status != 0 and "Traceback" not in rest
    assert f"{ref} not downloaded" in rest and f"`r1local pull {ref}`" in rest

    child = spawn_run(env, "--ram", RAM)
    try:
        child.expect_exact(QUESTION)
        child.sendeof()  # Ctrl-D at the question: a no, not a traceback
        status, rest = closed(child)
    finally:
        child.terminate(force=True)
    assert status != 0 and "Traceback" not in rest and "not downloaded" in rest
    assert hub.requests() == [] and stored_names(env) == []

    child = spawn_run(env, "--ram", RAM)
    try:
        child.expect_exact(QUESTION)
        child.sendline("")  # Enter: yes
        child.expect_exact(PROMPT_ON, timeout=120)  # pulled, loaded, chatting
        child.sendeof()
        status, rest = closed(child)
    finally:
        child.terminate(force=True)
    assert status == 0, rest
    assert stored_names(env) == [ref]
    assert hub.body_gets()  # the file came from the hub

    # next time it is in the store: no question, straight to the chat
    hub.log.clear()
    child = spawn_run(env, "--ram", RAM)
    try:
        child.expect_exact(PROMPT_ON)
        assert QUESTION not in child.before and f"using {ref}" in child.before
        child.sendeof()
        status, _ = closed(child)
    finally:
        child.terminate(force=True)
    assert status == 0 and hub.requests() == []


def test_a_missing_gguf_with_a_space_is_a_path_not_a_prompt(tmp_path):
    # several words in place of the tag are a prompt, but not a .gguf name
    line = one_line_error(r1local("run", str(tmp_path / "my models" / "x.gguf"), "hi"))
    assert "my models/x.gguf does not exist" in line


# ---- numbers llama.cpp trusts: refused before it sees them ----------------------------------

@pytest.mark.parametrize("key, value, words", [
    ("attention.layer_norm_rms_epsilon", float("nan"), "attention.layer_norm_rms_epsilon is nan"),
    ("attention.layer_norm_rms_epsilon", -1.0, "attention.layer_norm_rms_epsilon is -1.0"),
    ("block_count", 0, "block_count is 0, outside 1..512"),
    ("block_count", 2 ** 31, "block_count is 2147483648"),
    ("context_length", 2 ** 32 - 1, "context_length is 4294967295"),
    ("attention.head_count", 0, "attention.head_count is 0 in every layer"),
    ("attention.head_count_kv", 3, "attention.head_count_kv (3) does not divide"),
])
def test_a_header_llama_cpp_would_abort_on_is_one_line(r1_standin, key, value, words):
    from model_fixtures import rewrite_gguf

    bad = rewrite_gguf(r1_standin, f"standin-{key}-{value}", values={f"qwen2.{key}": value})[0]
    line = one_line_error(r1local("run", str(bad), "hi", "--max-tokens", "2", timeout=60))
    assert f"{bad.name} cannot be loaded: its {words}" in line


# ---- an answer always arrives, or the reason why not -----------------------------------------

def test_reasoning_that_never_closes_still_gets_an_answer(r1_standin):
    # the stand-in's random weights never write </think>: without the reserve they would
    # reason until the context is full and print nothing on stdout
    p = r1local("run", str(r1_standin), "Why is the sky blue?", "--ctx", "512", "--json",
                "--seed", "1")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    st = out["stats"]
    assert out["finish_reason"] == "length" and st["forced_answer"]
    assert out["answer"].strip() and out["thinking"].strip()
    assert st["answer_reserve"] == out["plan"]["answer_reserve"] == 64  # an eighth of 512
    assert st["completion_tokens"] - st["thinking_tokens"] >= st["answer_reserve"] - 8


def test_no_room_for_an_answer_is_one_line_and_a_failure(r1_standin):
    p = r1local("run", str(r1_standin), "Why is the sky blue?", "--ctx", "512", "--seed", "1",
                "--answer-reserve", "0")
    assert p.returncode == 1 and p.stdout == ""
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("r1local: error: the reply reached its context of 512 tokens "
                           "before any answer (")
    assert "--ctx" in last and "--think-budget" in last
    p = r1local("run", str(r1_standin), "Why?", "--max-tokens", "40", "--answer-reserve", "0",
                "--hide-thinking")
    assert p.returncode == 1 and p.stdout == "" and p.stderr.startswith(
        "r1local: error: the reply reached --max-tokens 40 tokens before any answer")


def test_the_reserve_leaves_a_short_reasoning_alone(micro_reasoner):
    p = r1local("run", str(micro_reasoner), "What is 3+4?", "--temperature", "0", "--ctx", "256",
                "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["answer"] == "3 + 4 = **7**." and not out["stats"]["forced_answer"]
    assert out["stats"]["answer_reserve"] > 0
