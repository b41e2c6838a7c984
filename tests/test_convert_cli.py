"""`r1local convert` and `python -m quantize` end to end: a happy path and every error path
(exit code != 0, one line on stderr, no partial file left behind)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import hf_checkpoints as hfc

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str, module: str = "r1local") -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", module, *(["convert"] if module == "r1local" else []), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture()
def ckpt(tmp_path) -> Path:
    """A private copy of the tiny Qwen2 checkpoint that a test may damage."""
    dst = tmp_path / "ckpt"
    shutil.copytree(hfc.qwen2_checkpoint(), dst)
    return dst


def _assert_one_line_error(proc: subprocess.CompletedProcess, out_dir: Path, *needles: str) -> str:
    """One error line holding every needle, no traceback, and no output left behind."""
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    assert not [p for p in out_dir.rglob("*") if p.name.endswith((".gguf", ".partial"))]
    return lines[0]


def test_convert_q4_k_m_through_r1local(ckpt, tmp_path):
    out = tmp_path / "out" / "m.gguf"
    proc = _cli(str(ckpt), "--quant", "q4_k_m", "-o", str(out), "--threads", "2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    assert out.stat().st_size > 0 and not list(out.parent.glob("*.partial"))
    import llama_cpp

    llm = llama_cpp.Llama(str(out), n_ctx=64, verbose=False)
    try:
        assert llm.n_vocab() == 512
        assert llm.metadata["general.file_type"] == str(llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M)
    finally:
        llm.close()
    # refused without --force, replaced with it
    again = _cli(str(ckpt), "--quant", "Q4_K_M", "-o", str(out))
    assert again.returncode != 0 and "--force" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    assert _cli(str(ckpt), "--quant", "Q8_0", "-o", str(out), "--force").returncode == 0


def test_python_m_quantize(ckpt, tmp_path):
    out = tmp_path / "q.gguf"
    proc = _cli(str(ckpt), "--quant", "F16", "-o", str(out), module="quantize")
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:4] == b"GGUF"


def _break(kind: str, ckpt: Path) -> None:
    if kind == "no config":
        (ckpt / "config.json").unlink()
    elif kind == "bad config":
        (ckpt / "config.json").write_text("{ not json")
    elif kind == "unsupported arch":
        cfg = json.loads((ckpt / "config.json").read_text())
        cfg["architectures"] = ["MambaForCausalLM"]
        (ckpt / "config.json").write_text(json.dumps(cfg))
    elif kind == "no tokenizer":
        (ckpt / "tokenizer.json").unlink()
    elif kind == "truncated":
        f = ckpt / "model.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif kind == "corrupt header":
        f = ckpt / "model.safetensors"
        data = bytearray(f.read_bytes())
        data[8:40] = b"\xff" * 32
        f.write_bytes(bytes(data))


@pytest.mark.parametrize("kind,needles", [
    ("no config", ["config.json"]),
    ("bad config", ["config.json", "not valid JSON"]),
    ("unsupported arch", ["MambaForCausalLM", "Qwen2ForCausalLM", "LlamaForCausalLM", "Qwen3ForCausalLM"]),
    ("no tokenizer", ["tokenizer.json"]),
    ("truncated", ["truncated", "re-download"]),
    ("corrupt header", ["corrupt", "re-download"]),
])
def test_bad_checkpoints(ckpt, tmp_path, kind, needles):
    _break(kind, ckpt)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = _cli(str(ckpt), "--quant", "F16", "-o", str(out_dir / "m.gguf"))
    _assert_one_line_error(proc, out_dir, *needles)


# config.json values a converter must refuse rather than write into a GGUF llama.cpp
# aborts on (NaN epsilon), cannot size (1e9 layers, 1e12 tokens) or cannot load
@pytest.mark.parametrize("change,needles", [
    ({"rms_norm_eps": float("nan")}, ["layer_norm_rms_epsilon is nan"]),
    ({"rms_norm_eps": -1e-6}, ["layer_norm_rms_epsilon is -1e-06"]),
    ({"num_hidden_layers": "two"}, ["num_hidden_layers is 'two', not a whole number"]),
    ({"num_hidden_layers": 1e9}, ["block_count is 1000000000, outside 1..512"]),
    ({"num_hidden_layers": 0}, ["block_count is 0"]),
    ({"vocab_size": 1e12}, ["vocabulary size is 1000000000000"]),
    ({"num_attention_heads": -4}, ["attention.head_count is -4"]),
    ({"num_attention_heads": 0}, ["attention.head_count is 0"]),
    ({"num_attention_heads": 2.5}, ["num_attention_heads is 2.5, not a whole number"]),
    ({"num_key_value_heads": 3}, ["head_count_kv (3) does not divide"]),
    ({"hidden_size": 320}, ["does not match embedding_length 320"]),
    ({"hidden_size": {"nested": [1, 2]}}, ["hidden_size is {'nested': [1, 2]}"]),
    ({"max_position_embeddings": 0}, ["context_length is 0"]),
    ({"rope_parameters": {"rope_theta": "fast"}}, ["rope.freq_base is 'fast', not a number"]),
    ({"rope_scaling": "yes"}, ["rope_scaling is 'yes', not a table"]),
])
def test_impossible_configs_are_refused(ckpt, tmp_path, change, needles):
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, **change}))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = _cli(str(ckpt), "--quant", "F16", "-o", str(out_dir / "m.gguf"), module="quantize")
    _assert_one_line_error(proc, out_dir, *needles)


@pytest.mark.parametrize("args,needles", [
    (["--quant", "Q4_K_X"], ["Q4_K_X", "Q4_K_M", "Q8_0", "F16"]),
    (["--quant", "IQ2_XXS"], ["IQ2_XXS", "--imatrix", "without one", "F16", "Q8_0", "Q4_K_M", "IQ4_XS"]),
    (["--quant", "iq1_s"], ["IQ1_S", "--imatrix", "without one", "Q4_K_M"]),
    (["--quant", "F16", "--threads", "0"], ["--threads"]),
])
def test_bad_options(ckpt, tmp_path, args, needles):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = _cli(str(ckpt), *args, "-o", str(out_dir / "m.gguf"))
    _assert_one_line_error(proc, out_dir, *needles)


def test_missing_source(tmp_path):
    proc = _cli(str(tmp_path / "nowhere" / "x"), "-o", str(tmp_path / "m.gguf"))
    _assert_one_line_error(proc, tmp_path, "nowhere")


def test_one_byte_short_is_caught(ckpt, tmp_path):
    f = ckpt / "model.safetensors"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with open(f, "r+b") as fh:
        fh.truncate(f.stat().st_size - 1)
    proc = _cli(str(ckpt), "--quant", "Q4_K_M", "-o", str(out_dir / "m.gguf"))
    _assert_one_line_error(proc, out_dir, "truncated")


def test_failure_while_streaming_leaves_no_partial(tmp_path):
    """An FP8 weight whose block scales are missing fails mid-file: the .partial goes away."""
    from safetensors.torch import load_file, save_file

    src = tmp_path / "fp8"
    shutil.copytree(hfc.fp8_checkpoint(hfc.qwen2_checkpoint()), src)
    tensors = load_file(str(src / "model.safetensors"))
    del tensors["model.layers.1.mlp.down_proj.weight_scale_inv"]
    save_file(tensors, str(src / "model.safetensors"))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = _cli(str(src), "--quant", "Q4_K_M", "-o", str(out_dir / "m.gguf"))
    _assert_one_line_error(proc, out_dir, "weight_scale_inv")


# ---- a hub repo id as the source (the loopback hub, real huggingface-hub) -------------------

HUB_REPO = "tiny-org/tiny-qwen2"


@pytest.fixture()
def hub_env(tmp_path, loopback_hub) -> dict:
    """Environment for a conversion that downloads from the loopback hub into a fresh cache."""
    return {"HF_ENDPOINT": loopback_hub.url, "HF_HOME": str(tmp_path / "hf"),
            "HF_HUB_DISABLE_TELEMETRY": "1"}


def _cli_env(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "r1local", "convert", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def test_convert_a_hub_repo_fetches_only_what_it_needs(loopback_hub, hub_env, tmp_path):
    import llama_cpp

    ckpt = hfc.qwen2_checkpoint(shard_bytes=400_000)
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1
    for f in ckpt.iterdir():
        loopback_hub.add_file(HUB_REPO, f.name, f)
    # what real repos carry beside the weights a conversion reads: never downloaded
    decoys = {"pytorch_model.bin": b"b" * 5000, "consolidated.pth": b"p" * 5000,
              "original/consolidated.00.pth": b"o" * 5000, "README.md": b"# card",
              "figures/plot.safetensors": b"f" * 1000, "stale-model.safetensors": b"s" * 1000}
    for name, data in decoys.items():
        loopback_hub.add_file(HUB_REPO, name, data)

    out = tmp_path / "out" / "tiny.gguf"
    proc = _cli_env(hub_env, HUB_REPO, "--quant", "F16", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    assert "Fetching" not in proc.stderr  # huggingface-hub's bars stay off outside a terminal

    # file bodies: /cdn/ORG/REPO/PATH (LFS) or /ORG/REPO/resolve/REV/PATH (small files)
    fetched = {re.sub(r"^/(cdn/)?[^/]+/[^/]+/(resolve/[^/]+/)?", "", g.path)
               for g in loopback_hub.body_gets()}
    assert shards <= fetched and {"config.json", "tokenizer.json"} <= fetched
    assert not fetched & set(decoys), fetched

    llm = llama_cpp.Llama(str(out), n_ctx=64, verbose=False)
    try:
        assert llm.n_vocab() == 512
        assert llm.metadata["general.file_type"] == str(llama_cpp.LLAMA_FTYPE_MOSTLY_F16)
        assert llm.metadata["general.source.huggingface.repository"] == HUB_REPO
        assert llm.metadata["quantize.source_revision"] == loopback_hub.commit
        assert llm.tokenize(b"hello", add_bos=False)  # the tokenizer came along
    finally:
        llm.close()

    # the checkpoint is in the Hugging Face cache now: offline, it converts without the hub
    loopback_hub.log.clear()
    again = tmp_path / "out" / "again.gguf"
    proc = _cli_env({**hub_env, "HF_HUB_OFFLINE": "1"}, HUB_REPO, "--quant", "F16", "-o", str(again))
    assert proc.returncode == 0, proc.stderr
    assert again.read_bytes() == out.read_bytes()
    assert loopback_hub.requests() == []


def test_convert_a_repo_the_hub_does_not_have(loopback_hub, hub_env, tmp_path):
    loopback_hub.add_file(HUB_REPO, "config.json", b"{}")  # the hub has other repos
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = _cli_env(hub_env, "tiny-org/no-such-model", "--quant", "F16", "-o", str(out_dir / "m.gguf"))
    _assert_one_line_error(proc, out_dir, "tiny-org/no-such-model", "no repo of that name", "HF_TOKEN")
    assert loopback_hub.body_gets() == []


def test_convert_offline_with_nothing_cached_names_hf_hub_offline(loopback_hub, hub_env, tmp_path):
    for f in hfc.qwen2_checkpoint().iterdir():
        loopback_hub.add_file(HUB_REPO, f.name, f)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = _cli_env({**hub_env, "HF_HUB_OFFLINE": "1"}, HUB_REPO, "--quant", "F16",
                    "-o", str(out_dir / "m.gguf"))
    _assert_one_line_error(proc, out_dir, "HF_HUB_OFFLINE", HUB_REPO)
    assert loopback_hub.requests() == []


def test_convert_a_gated_repo_says_hf_token_and_the_token_opens_it(loopback_hub, hub_env, tmp_path):
    for f in hfc.qwen2_checkpoint().iterdir():
        loopback_hub.add_file(HUB_REPO, f.name, f)
    loopback_hub.gated.add(HUB_REPO)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = _cli_env(hub_env, HUB_REPO, "--quant", "F16", "-o", str(out_dir / "m.gguf"))
    _assert_one_line_error(proc, out_dir, HUB_REPO, "gated", "HF_TOKEN")
    proc = _cli_env({**hub_env, "HF_TOKEN": loopback_hub.token}, HUB_REPO, "--quant", "F16",
                    "-o", str(out_dir / "m.gguf"))
    assert proc.returncode == 0, proc.stderr
    assert (out_dir / "m.gguf").read_bytes()[:4] == b"GGUF"


def test_a_failed_in_process_quantize_is_one_quiet_line(tmp_path):
    """llama.cpp's quantizer logs dozens of lines: a failure must say why in one line of
    our own, with none of its log on the terminal."""
    bad = tmp_path / "not-a-model.gguf"
    bad.write_text("not a model\n")
    code = ("import sys; from pathlib import Path; from quantize.llamaquant import quantize_file\n"
            "from quantize.errors import ConvertError\n"
            "try:\n"
            f"    quantize_file(Path({str(bad)!r}), Path({str(tmp_path / 'out.gguf')!r}), 'Q4_K_M',"
            " threads=1, expected=1, imatrix=None, progress=False)\n"
            "except ConvertError as err:\n"
            "    print(err)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stderr == ""
    assert proc.stdout.strip().splitlines() == [
        f"llama.cpp's quantizer failed making Q4_K_M: llama_model_loader: failed to load "
        f"model from {bad}"]
