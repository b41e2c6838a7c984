"""`r1local pull` through the CLI, against the loopback hub with the real huggingface-hub.

Each test runs r1local in a subprocess with HF_ENDPOINT at a hub on 127.0.0.1, and HF_HOME
and R1LOCAL_HOME in temporary folders; the hub's request log shows what was fetched.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from model_fixtures import rewrite_gguf
from r1local.catalog import load_catalog

TAG = "7b"
VARIANT = load_catalog().resolve(TAG).variant
REPO = VARIANT.gguf_repo
Q4_FILE = VARIANT.quants["Q4_K_M"].files[0]
SPLIT = load_catalog().resolve("70b:Q6_K")
SPLIT_FILES = SPLIT.variant.quants["Q6_K"].files


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def env(tmp_path, loopback_hub):
    return dict(os.environ, HF_ENDPOINT=loopback_hub.url, HF_HOME=str(tmp_path / "hf"),
                R1LOCAL_HOME=str(tmp_path / "r1"), HF_HUB_DISABLE_TELEMETRY="1",
                NO_COLOR="1", COLUMNS="100")


@pytest.fixture
def hub(loopback_hub, r1_standin):
    """The R1 stand-in served under the real 7b repo and every 7b quant's file name."""
    from loopback_hub import layout_variant

    layout_variant(loopback_hub, VARIANT, r1_standin)
    return loopback_hub


def r1local(env: dict, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "r1local", *args], env=env, text=True,
                          capture_output=True, timeout=timeout)


# The stand-in is not the file the catalog pins for 7b's quants: tests whose point is not the
# catalog's hash take the hub's file, as a user would after a publisher's re-upload.
TRUST = "--trust-hub"


def pull(env: dict, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`r1local pull ARGS --trust-hub`."""
    return r1local(env, "pull", *args, TRUST, timeout=timeout)


def pull_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "r1local", "pull", *args, TRUST]


def stored_file(env: dict, name: str = "7b:Q4_K_M") -> Path:
    return Path(env["R1LOCAL_HOME"]) / "models" / manifest(env)[name]["files"][0]


def manifest(env: dict) -> dict:
    path = Path(env["R1LOCAL_HOME"]) / "models" / "manifest.json"
    return json.loads(path.read_text())["models"] if path.exists() else {}


def error_line(p: subprocess.CompletedProcess) -> str:
    """The one line an error must be: no traceback, non-zero exit."""
    assert p.returncode != 0, p.stdout + p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    lines = [line for line in p.stderr.splitlines() if line.startswith("r1local: error:")]
    assert len(lines) == 1, p.stderr
    return lines[0]


# ---- a full pull, then nothing fetched again ------------------------------------------------

def test_full_pull_registers_verified_file_and_second_pull_fetches_nothing(env, hub, r1_standin):
    p = pull(env, f"{TAG}:q4_k_m")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "7b:Q4_K_M"
    entry = manifest(env)["7b:Q4_K_M"]
    stored = Path(env["R1LOCAL_HOME"]) / "models" / entry["files"][0]
    assert stored.name == Q4_FILE
    assert sha256(stored) == sha256(r1_standin) == entry["sha256"][0]
    assert entry["source"] == REPO and entry["revision"] == hub.commit
    assert entry["size"] == r1_standin.stat().st_size
    gets = hub.body_gets(Q4_FILE)
    assert [(g.range_start, g.sent) for g in gets] == [(None, r1_standin.stat().st_size)]
    assert not (Path(env["R1LOCAL_HOME"]) / "models" / ".partial").exists()

    hub.log.clear()
    again = pull(env, TAG + ":Q4_K_M")
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stderr
    assert hub.body_gets() == []  # only the metadata HEAD


def test_a_file_the_catalog_does_not_pin_is_refused_unless_trust_hub(env, hub, r1_standin,
                                                                   tmp_path):
    """The catalog pins one hash, the hub (or a mirror) serves another file: refused, naming
    both hashes and the fix; with --trust-hub the pull follows the hub's hash and says so."""
    import re

    from r1local.catalog import catalog_path

    text = catalog_path().read_text()
    section = re.search(r'\[variant\."7b"\.quant\."Q4_K_M"\]\n(?:[^\[].*\n)*', text).group(0)
    pinned = "0" * 64
    if "sha256" in section:
        changed = re.sub(r'sha256 = \["[0-9a-f]{64}"\]', f'sha256 = ["{pinned}"]', section)
    else:
        changed = section + f'sha256 = ["{pinned}"]\n'
    catalog = tmp_path / "models.toml"
    catalog.write_text(text.replace(section, changed))
    env = dict(env, R1LOCAL_CATALOG=str(catalog))
    line = error_line(r1local(env, "pull", "7b:Q4_K_M"))
    served = sha256(r1_standin)
    assert served[:16] in line and pinned[:16] in line and "--trust-hub" in line, line
    assert hub.body_gets() == [] and manifest(env) == {}

    p = pull(env, "7b:Q4_K_M")
    assert p.returncode == 0, p.stderr
    assert "newer than the one the catalog lists (000000000000" in p.stderr
    assert manifest(env)["7b:Q4_K_M"]["sha256"] == [served]


def test_no_quant_asks_the_planner_and_says_why(env, hub):
    from r1local.hardware import probe
    from r1local.session import pick_quant

    expected = pick_quant(VARIANT, probe()).quant
    p = pull(env, TAG)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"7b:{expected}"
    assert f"chose 7b:{expected} for this machine:" in p.stderr
    assert list(manifest(env)) == [f"7b:{expected}"]


# ---- resumable --------------------------------------------------------------------------------

def test_killed_pull_resumes_from_the_partial(env, hub, r1_standin, tmp_path):
    """kill -9 in the middle: the partial keeps (nearly) every byte the hub sent, and the
    next pull asks for the rest only."""
    size = r1_standin.stat().st_size
    hub.throttle = 2_000_000  # bytes/s: the download takes ~5 s, long enough to kill it
    partial_dir = tmp_path / "r1" / "models" / ".partial"
    proc = subprocess.Popen(pull_cmd(TAG + ":Q4_K_M"),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        # killed at a moment of the hub's choosing, not right after a write of ours
        while hub.sent_so_far(Q4_FILE) < size // 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        if time.monotonic() >= deadline:
            pytest.fail("the download never got going")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    parts = list(partial_dir.rglob("*.partial"))
    assert len(parts) == 1
    have = parts[0].stat().st_size
    assert manifest(env) == {}  # nothing half-done is registered

    hub.throttle = None
    deadline = time.monotonic() + 10  # the hub logs the cut-off GET once it notices
    while not hub.body_gets(Q4_FILE) and time.monotonic() < deadline:
        time.sleep(0.05)
    first = hub.body_gets(Q4_FILE)
    assert [g.range for g in first] == [None]
    # what reached the socket but not the file is all a kill may cost
    assert 0 <= first[0].sent - have < 1 << 20, (first[0].sent, have)
    assert size // 4 < have < size
    p = pull(env, TAG + ":Q4_K_M")
    assert p.returncode == 0, p.stderr
    assert "resuming" in p.stderr
    second = hub.body_gets(Q4_FILE)[len(first):]
    assert [(g.range, g.status, g.sent) for g in second] == [(f"bytes={have}-", 206, size - have)]
    assert sha256(stored_file(env)) == sha256(r1_standin)


# ---- one writer per file ---------------------------------------------------------------------

def test_two_pulls_of_one_tag_at_once_leave_one_verified_file(env, hub, r1_standin):
    size = r1_standin.stat().st_size
    hub.throttle = 1_000_000  # ~11 s each: the second starts while the first downloads
    first = subprocess.Popen(pull_cmd(TAG + ":Q4_K_M"), env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while hub.sent_so_far(Q4_FILE) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        second = subprocess.Popen(pull_cmd(TAG + ":Q4_K_M"), env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        outs = [proc.communicate(timeout=60) for proc in (first, second)]
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [proc.returncode for proc in (first, second)] == [0, 0], outs
    assert "another pull of " + Q4_FILE + " is in progress; waiting" in outs[1][1], outs[1][1]
    entry = manifest(env)["7b:Q4_K_M"]
    stored = stored_file(env)
    assert stored.stat().st_size == entry["size"] == size
    assert sha256(stored) == entry["sha256"][0] == sha256(r1_standin)
    assert len(hub.body_gets(Q4_FILE)) == 1  # the second found the file in place
    assert not (Path(env["R1LOCAL_HOME"]) / "models" / ".partial").exists()


def test_tidying_up_leaves_the_files_of_a_download_in_progress(tmp_path):
    from r1local.hub.fetch import tidy
    from r1local.locks import file_lock

    folder = tmp_path / "partials"
    folder.mkdir()
    names = ("busy.gguf.partial", "busy.gguf.partial.json", "busy.gguf.partial.lock",
             "done.gguf.partial", "done.gguf.partial.json", "done.gguf.partial.lock",
             "orphan.gguf.partial.json", "staged.gguf")
    for name in names:
        (folder / name).write_bytes(b"x")
    with file_lock(folder / "busy.gguf.partial.lock"):  # another pull, as flock sees it
        tidy(folder)
        assert sorted(p.name for p in folder.iterdir()) == list(names[:3])
    tidy(folder)
    assert not folder.exists()


def test_pull_rechecks_the_stored_files_size_and_with_verify_its_sha256(env, hub, r1_standin):
    assert pull(env, TAG + ":Q4_K_M").returncode == 0
    stored = stored_file(env)
    good = stored.read_bytes()

    with open(stored, "ab") as f:  # what two writers of one partial used to leave
        f.write(b"\0" * 4096)
    hub.log.clear()
    p = pull(env, TAG + ":Q4_K_M")
    assert p.returncode == 0, p.stderr
    assert "downloading it again" in p.stderr and f"{len(good) + 4096:,} bytes" in p.stderr
    assert stored.read_bytes() == good and len(hub.body_gets(Q4_FILE)) == 1

    damaged = bytearray(good)  # the same size, one byte changed: only --verify sees it
    damaged[len(good) // 2] ^= 0xFF
    stored.write_bytes(bytes(damaged))
    hub.log.clear()
    p = pull(env, TAG + ":Q4_K_M")
    assert p.returncode == 0 and "up to date" in p.stderr, p.stderr
    assert hub.body_gets() == []
    p = pull(env, TAG + ":Q4_K_M", "--verify")
    assert p.returncode == 0, p.stderr
    assert "downloading it again" in p.stderr and "sha256" in p.stderr
    assert stored.read_bytes() == good and len(hub.body_gets(Q4_FILE)) == 1
    hub.log.clear()
    p = pull(env, TAG + ":Q4_K_M", "--verify")
    assert p.returncode == 0 and "up to date" in p.stderr, p.stderr
    assert hub.body_gets() == []


def test_a_rebuilt_manifest_entry_is_checked_by_the_next_pull_not_fetched(env, hub, r1_standin):
    """A rebuilt manifest has no sha256 for the files it found: pull hashes them against the
    hub's, downloads nothing, and records the hash."""
    assert pull(env, TAG + ":Q4_K_M").returncode == 0
    models = Path(env["R1LOCAL_HOME"]) / "models"
    (models / "manifest.json").write_bytes(b"\xff not a manifest")
    listed = r1local(env, "list", "--json")
    assert listed.returncode == 0 and "rebuilt" in listed.stderr, listed.stderr
    assert manifest(env)["7b:Q4_K_M"]["sha256"] == []
    hub.log.clear()
    p = pull(env, TAG + ":Q4_K_M")
    assert p.returncode == 0, p.stderr
    assert hub.body_gets() == [] and "already in the store" in p.stderr
    assert manifest(env)["7b:Q4_K_M"]["sha256"] == [sha256(r1_standin)]


# ---- verified -----------------------------------------------------------------------------------

def test_corrupted_download_is_deleted_and_not_registered(env, hub, r1_standin, tmp_path):
    hub.corrupt.add(f"{REPO}/{Q4_FILE}")
    p = pull(env, TAG + ":Q4_K_M")
    line = error_line(p)
    assert "damaged" in line and "deleted" in line and "sha256" in line
    assert manifest(env) == {}
    models = tmp_path / "r1" / "models"
    assert not [f for f in models.rglob("*") if f.is_file() and f.stat().st_size > 1 << 20]

    hub.corrupt.clear()
    p = pull(env, TAG + ":Q4_K_M")
    assert p.returncode == 0, p.stderr
    assert manifest(env)["7b:Q4_K_M"]["sha256"] == [sha256(r1_standin)]


def test_a_file_that_is_not_a_gguf_is_never_registered(env, hub):
    hub.add_file(REPO, VARIANT.quants["Q2_K"].files[0], os.urandom(300_000))
    line = error_line(pull(env, TAG + ":Q2_K"))
    assert "not a usable GGUF" in line and "deleted" in line
    assert manifest(env) == {}


def test_not_enough_disk_is_refused_before_a_byte_is_downloaded(env, hub):
    hub.fake_size[f"{REPO}/{Q4_FILE}"] = 1 << 50  # the hub claims a petabyte
    line = error_line(pull(env, TAG + ":Q4_K_M"))
    assert "not enough disk" in line and "1.00 PiB" in line and "free" in line
    assert hub.body_gets() == []


# ---- split models ------------------------------------------------------------------------------

def test_split_model_is_fetched_as_one_model(env, loopback_hub, r1_standin, tmp_path):
    parts = rewrite_gguf(r1_standin, "standin-split2", parts=2)
    assert len(parts) == len(SPLIT_FILES) == 2
    for name, part in zip(SPLIT_FILES, parts):
        loopback_hub.add_file(SPLIT.variant.gguf_repo, name, part)
    p = pull(env, "70b:Q6_K")
    assert p.returncode == 0, p.stderr
    assert "split in 2 parts" in p.stderr
    entry = manifest(env)["70b:Q6_K"]
    files = [tmp_path / "r1" / "models" / f for f in entry["files"]]
    assert [f.name for f in files] == [Path(n).name for n in SPLIT_FILES]
    assert entry["sha256"] == [sha256(p) for p in parts]
    assert entry["size"] == sum(p.stat().st_size for p in parts)
    assert len(loopback_hub.body_gets()) == 2


# ---- the Hugging Face cache is used -------------------------------------------------------------

def test_file_already_in_the_hf_cache_is_not_fetched_again(env, hub, r1_standin, tmp_path):
    warm = subprocess.run(
        [sys.executable, "-c", "import sys; from huggingface_hub import hf_hub_download; "
         f"print(hf_hub_download({REPO!r}, {Q4_FILE!r}))"],
        env=env, text=True, capture_output=True, timeout=60)
    assert warm.returncode == 0, warm.stderr
    blob = Path(warm.stdout.strip()).resolve()
    assert len(hub.body_gets(Q4_FILE)) == 1
    hub.log.clear()

    p = pull(env, TAG + ":Q4_K_M")
    assert p.returncode == 0, p.stderr
    assert "from the Hugging Face cache" in p.stderr
    assert hub.body_gets() == []
    stored = tmp_path / "r1" / "models" / manifest(env)["7b:Q4_K_M"]["files"][0]
    assert stored.stat().st_ino == blob.stat().st_ino  # hard-linked, not copied

    # offline, the cache alone is enough (into a fresh store)
    hub.log.clear()
    offline = dict(env, HF_HUB_OFFLINE="1", R1LOCAL_HOME=str(tmp_path / "r1-offline"))
    assert "--trust-hub" in error_line(r1local(offline, "pull", TAG + ":Q4_K_M"))  # pinned
    p = pull(offline, TAG + ":Q4_K_M")
    assert p.returncode == 0, p.stderr
    assert hub.requests() == []


# ---- errors: one line each -----------------------------------------------------------------------

def test_offline_without_the_file_says_hf_hub_offline(env, hub):
    line = error_line(r1local(dict(env, HF_HUB_OFFLINE="1"), "pull", TAG + ":Q4_K_M"))
    assert "HF_HUB_OFFLINE" in line
    assert hub.body_gets() == []


def test_unreachable_hub_is_one_line_mentioning_hf_hub_offline(env, loopback_hub):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    line = error_line(r1local(dict(env, HF_ENDPOINT=f"http://127.0.0.1:{port}"),
                              "pull", TAG + ":Q4_K_M"))
    assert "cannot reach" in line and "HF_HUB_OFFLINE" in line


def test_unknown_tag_suggests_the_closest(env, loopback_hub):
    line = error_line(r1local(env, "pull", "7bb"))
    assert "unknown model '7bb'" in line and "did you mean 7b" in line
    line = error_line(r1local(env, "pull", "7b:Q9_K"))
    assert "no quant 'Q9_K'" in line and "Q4_K_M" in line
    assert loopback_hub.requests() == []


def test_gated_repo_says_to_set_hf_token_and_the_token_opens_it(env, hub):
    hub.gated.add(REPO)
    line = error_line(pull(env, TAG + ":Q4_K_M"))
    assert "gated" in line and "HF_TOKEN" in line
    p = pull(dict(env, HF_TOKEN=hub.token), TAG + ":Q4_K_M")
    assert p.returncode == 0, p.stderr


def test_file_missing_on_the_hub(env, loopback_hub, r1_standin):
    loopback_hub.add_file(REPO, "README.md", b"only a readme")
    line = error_line(pull(env, TAG + ":Q4_K_M"))
    assert Q4_FILE in line and "not in" in line


# ---- --from-source -----------------------------------------------------------------------------

def test_from_source_fetches_only_needed_files_and_converts(env, loopback_hub, tmp_path):
    import hf_checkpoints

    ckpt = hf_checkpoints.qwen2_checkpoint(shard_bytes=400_000)
    repo = VARIANT.source_repo
    for f in ckpt.iterdir():
        loopback_hub.add_file(repo, f.name, f)
    assert (ckpt / "model.safetensors.index.json").exists()
    # files a conversion does not need: never fetched
    loopback_hub.add_file(repo, "README.md", b"# model card")
    loopback_hub.add_file(repo, "figures/benchmark.safetensors", b"x" * 1000)
    loopback_hub.add_file(repo, "stale-model.safetensors", b"y" * 1000)

    p = r1local(env, "pull", "7b:Q8_0", "--from-source", timeout=120)
    assert p.returncode == 0, p.stderr
    fetched = {g.path.rsplit("/", 1)[-1] for g in loopback_hub.body_gets()}
    shards = set(json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"].values())
    assert len(shards) > 1 and shards <= fetched
    assert not fetched & {"README.md", "benchmark.safetensors", "stale-model.safetensors"}
    entry = manifest(env)["7b:Q8_0"]
    assert entry["origin"] == "source" and entry["source"] == repo
    assert entry["revision"] == loopback_hub.commit
    gguf = tmp_path / "r1" / "models" / entry["files"][0]
    from r1local.ggufinfo import read_header

    header = read_header(gguf, check_architecture=True)
    assert header.architecture == "qwen2" and header.quant == "Q8_0"
    assert sha256(gguf) == entry["sha256"][0]
    assert not (tmp_path / "r1" / "models" / ".source").exists()  # safetensors removed

    loopback_hub.log.clear()
    p = r1local(env, "pull", "7b:Q8_0", "--from-source", "--keep-source", timeout=120)
    assert p.returncode == 0, p.stderr
    kept = list((tmp_path / "r1" / "models" / ".source").rglob("*.safetensors"))
    assert {k.name for k in kept} == shards


# ---- end to end: the contributors' recipe ------------------------------------------------------

def test_pull_7b_then_run_7b_end_to_end(env, hub):
    """`HF_ENDPOINT=... r1local pull 7b` then `r1local run 7b "hello"`: the README recipe."""
    p = pull(env, TAG)
    assert p.returncode == 0, p.stderr
    run = r1local(env, "run", TAG, "hello", "--max-tokens", "8", "--seed", "1", "--json",
                  timeout=120)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["stats"]["completion_tokens"] > 0
    assert out["finish_reason"] in ("length", "stop")


def test_progress_callback_gets_ollama_style_events(env, hub, r1_standin):
    """What the server's /api/pull relays: status lines and digest/total/completed numbers."""
    code = ("import json; from r1local.hub import pull; ev = []; "
            "m = pull('7b:Q4_K_M', progress=ev.append, trust_hub=True); "
            "print(json.dumps([m.name, ev]))")
    p = subprocess.run([sys.executable, "-c", code], env=env, text=True, capture_output=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    name, events = json.loads(p.stdout)
    assert name == "7b:Q4_K_M"
    size = r1_standin.stat().st_size
    numbers = [e for e in events if "total" in e]
    assert numbers and all(e["total"] == size for e in numbers)
    assert numbers[0]["digest"] == "sha256:" + sha256(r1_standin)
    assert numbers[-1]["completed"] == size
    assert [e["completed"] for e in numbers] == sorted(e["completed"] for e in numbers)
    assert any(e["status"].startswith("verifying sha256") for e in events)


def test_ctrl_c_keeps_the_partial_and_says_how_to_resume(env, hub, r1_standin, tmp_path):
    hub.throttle = 2_000_000
    partial_dir = tmp_path / "r1" / "models" / ".partial"
    # restore_signals does not undo an inherited SIG_IGN (a runner started with `cmd &`):
    # give the child the default SIGINT a terminal user's shell would
    proc = subprocess.Popen(pull_cmd(TAG + ":Q4_K_M"), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            parts = list(partial_dir.rglob("*.partial"))
            if parts and parts[0].stat().st_size > 1 << 20:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "again resumes the download" in err
    assert parts[0].stat().st_size > 1 << 20 and manifest(env) == {}
