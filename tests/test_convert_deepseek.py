"""DeepSeek-V3 / R1 (MLA, MoE, YaRN) through the converter, against transformers.

A tiny random DeepseekV3ForCausalLM (one dense layer, two MoE layers of 8 experts with a
shared expert and group routing, MLA with small ranks, YaRN with DeepSeek's mscale keys),
stored once as BF16 and once as FP8 with 128x128 block scales as DeepSeek ships it. llama.cpp
runs our GGUF; transformers runs the checkpoint (for FP8, on the weights torch dequantizes).

A random router has near-ties: at a position where two experts' scores differ by ~1e-6,
float rounding may pick the other one and that position's logits differ by ~0.2 of their
range. So the claim is per position: nearly all positions within the tolerance (the
negative controls, a wrong kv_b split or expert order, get almost none).
"""

from __future__ import annotations

import numpy as np
import pytest

import hf_checkpoints as hfc
from test_convert import REL_TOLERANCE, _convert, _ids, _llama_logits, _tensors

pytestmark = pytest.mark.filterwarnings("ignore")


def _reference(src, ids) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def _close(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(fraction of positions within the tolerance, worst error among those)."""
    err = np.abs(got - ref).max(-1) / (ref.max() - ref.min())
    ok = err <= REL_TOLERANCE
    return float(ok.mean()), float(err[ok].max()) if ok.any() else float("inf")


@pytest.fixture(scope="module")
def bf16():
    src = hfc.deepseek_v3_checkpoint(dtype="bfloat16")
    ids = _ids(src)
    return src, ids, _reference(src, ids)


def test_bf16_checkpoint_matches_transformers(bf16):
    src, ids, ref = bf16
    gguf = _convert(src, "F32")
    frac, worst = _close(_llama_logits(gguf, ids), ref)
    print(f"deepseek_v3 BF16 -> F32: {frac:.0%} of {len(ids)} positions within {REL_TOLERANCE}, "
          f"worst of those {worst:.1e}")
    assert frac >= 0.9
    t = _tensors(gguf)
    assert list(t["blk.1.ffn_gate_exps.weight"].shape) == [256, 256, 8]  # GGUF order: cols, rows, experts
    assert list(t["blk.0.attn_k_b.weight"].shape) == [32, 128, 4]  # nope, kv_lora_rank, heads
    assert list(t["blk.0.attn_v_b.weight"].shape) == [128, 32, 4]
    assert "blk.0.ffn_gate.weight" in t and "blk.0.ffn_gate_exps.weight" not in t  # the dense layer
    assert "blk.2.exp_probs_b.bias" in t and "blk.2.ffn_up_shexp.weight" in t


def test_fp8_checkpoint_matches_transformers_on_the_dequantized_weights(bf16, tmp_path):
    import shutil

    from safetensors.torch import save_file

    src, ids, _ = bf16
    fp8 = hfc.fp8_checkpoint(src)
    # the reference: the same model with the weights torch dequantizes, saved as float32
    deq = tmp_path / "dequantized"
    shutil.copytree(src, deq, ignore=shutil.ignore_patterns("*.safetensors"))
    save_file(hfc.fp8_dequantized(fp8), str(deq / "model.safetensors"), metadata={"format": "pt"})
    ref = _reference(deq, ids)
    frac, worst = _close(_llama_logits(_convert(fp8, "F32"), ids), ref)
    print(f"deepseek_v3 FP8 -> F32: {frac:.0%} within {REL_TOLERANCE}, worst of those {worst:.1e}")
    assert frac >= 0.9


def test_f16_and_q8_0_agree_on_top1_where_the_model_decides(bf16):
    src, ids, _ = bf16
    f32 = _llama_logits(_convert(src, "F32"), ids)
    top2 = np.sort(f32, -1)[:, -2:]
    for quant in ("F16", "Q8_0"):
        got = _llama_logits(_convert(src, quant), ids)
        err = np.abs(got - f32).max(-1)
        decided = (top2[:, 1] - top2[:, 0]) > 2 * err
        assert decided.sum() >= len(ids) // 4, f"{quant}: error {err.max()} too large"
        assert (got.argmax(-1) == f32.argmax(-1))[decided].all(), quant


def _wrong_split(rows, n_head, nope, v_dim, part):
    heads = rows.reshape(n_head, nope + v_dim, rows.shape[-1])
    # the key part reshaped instead of transposed: the classic mistake
    return np.ascontiguousarray(heads[:, :nope, :] if part == "k" else heads[:, nope:, :])


def _reversed_experts(prefix, weight, n_expert):
    return tuple(f"{prefix}mlp.experts.{j}.{weight}.weight" for j in reversed(range(n_expert)))


@pytest.mark.parametrize("fault", ["kv_b split", "expert order"])
def test_negative_controls_fail(bf16, monkeypatch, fault):
    from quantize.archs import deepseek_v3

    if fault == "kv_b split":
        monkeypatch.setattr(deepseek_v3, "split_kv_b", _wrong_split)
    else:
        monkeypatch.setattr(deepseek_v3, "expert_names", _reversed_experts)
    src, ids, ref = bf16
    frac, _ = _close(_llama_logits(_convert(src, "F32", name=f"{src.name}-wrong"), ids), ref)
    assert frac < 0.2, fault


def test_a_config_that_does_not_match_the_weights_is_one_line(tmp_path):
    import json
    import shutil

    from quantize import convert
    from quantize.errors import ConvertError

    src = hfc.deepseek_v3_checkpoint(dtype="bfloat16")
    bad = tmp_path / "ckpt"
    shutil.copytree(src, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["qk_nope_head_dim"] = 48
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConvertError, match="kv_b_proj.weight is 256x128, not"):
        convert(bad, tmp_path / "out.gguf", "F16", progress=False)
    assert not list(tmp_path.glob("out.gguf*"))


def test_convert_an_fp8_v3_repo_from_the_hub(bf16, loopback_hub, tmp_path):
    """`r1local convert deepseek-ai/...` on the loopback hub (real huggingface-hub): the FP8
    repo is fetched and converted; its tensors equal the local folder's conversion."""
    from test_convert_cli import _cli_env

    src, ids, _ = bf16
    fp8 = hfc.fp8_checkpoint(src)
    repo = "deepseek-ai/DeepSeek-R1-tiny"
    for f in fp8.iterdir():
        loopback_hub.add_file(repo, f.name, f)
    out = tmp_path / "r1-tiny-Q8_0.gguf"
    env = {"HF_ENDPOINT": loopback_hub.url, "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    proc = _cli_env(env, repo, "--quant", "Q8_0", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    local = _tensors(_convert(fp8, "Q8_0"))
    hub = _tensors(out)
    assert set(hub) == set(local) and "blk.2.ffn_down_exps.weight" in hub
    for name, t in hub.items():
        assert bytes(t.data) == bytes(local[name].data), name
    assert _llama_logits(out, ids).shape == (len(ids), 512)
