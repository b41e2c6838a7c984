"""One-pass K-quants: for every llama.cpp type we offer without an importance matrix, the
file convert() writes in one pass holds, tensor for tensor, the very bytes llama.cpp's own
quantizer makes of our F16/BF16 file (the two-pass way), in the same types; on tiny Qwen2,
Llama and DeepSeek-V3 (MoE, MLA) checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

import hf_checkpoints as hfc
import model_fixtures
from quantize.quants import LLAMA_QUANTS

CHECKPOINTS = {"qwen2": lambda: hfc.qwen2_checkpoint(),
               "llama": lambda: hfc.llama_checkpoint(),
               "deepseek_v3": lambda: hfc.deepseek_v3_checkpoint(dtype="bfloat16")}


def _tensors(path) -> dict:
    from gguf import GGUFReader

    return {t.name: (t.tensor_type.name, bytes(t.data)) for t in GGUFReader(str(path)).tensors}


@pytest.fixture(scope="module")
def out_dir():
    d = model_fixtures.cache_dir() / "onepass"
    d.mkdir(exist_ok=True)
    return d


@pytest.mark.parametrize("arch", list(CHECKPOINTS))
@pytest.mark.parametrize("quant", list(LLAMA_QUANTS))
def test_one_pass_equals_llama_quantize_on_our_f16(arch, quant, out_dir):
    import llama_cpp

    from quantize import convert

    src = CHECKPOINTS[arch]()
    one = convert(src, out_dir / f"{arch}-{quant}-one.gguf", quant, force=True, progress=False)
    two = convert(src, out_dir / f"{arch}-{quant}-two.gguf", quant, force=True, progress=False,
                  two_pass=True)
    a, b = _tensors(one), _tensors(two)
    assert set(a) == set(b)
    differ = [n for n in b if a[n] != b[n]]
    assert not differ, f"{len(differ)} tensor(s) differ, first {differ[0]}: {a[differ[0]][0]} vs {b[differ[0]][0]}"
    # really quantized (not all left in F16), and labelled as llama.cpp labels it
    assert any(t not in ("F32", "F16", "BF16") for t, _ in a.values())
    from gguf import GGUFReader

    ftype = GGUFReader(str(one)).fields["general.file_type"]
    assert int(ftype.parts[ftype.data[0]][0]) == getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}")
    assert sorted(p.name for p in out_dir.glob(f"{arch}-{quant}-*")) == [one.name, two.name]


@pytest.mark.parametrize("groups,used", [(8, 2), (4, 4), (3, 1)])
def test_expert_groups_llama_cpp_would_abort_on(tmp_path, groups, used):
    """n_group must divide the experts, be fewer than them and more than topk_group: llama.cpp
    asserts it (the dry run's model load would abort the process), so convert refuses such a
    config in one line first."""
    import json
    import os
    import subprocess
    import sys

    src = CHECKPOINTS["deepseek_v3"]()
    bad = tmp_path / "ckpt"
    bad.mkdir()
    for f in src.iterdir():
        if f.name != "config.json":
            (bad / f.name).symlink_to(f)
    config = json.loads((src / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "n_group": groups, "topk_group": used}))
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "quantize", str(bad), "--quant", "Q4_K_M",
                           "-o", str(tmp_path / "m.gguf"), "--no-progress"], cwd=root,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "n_group" in lines[0] and "fix the config" in lines[0], proc.stderr
    assert not list(tmp_path.glob("m.gguf*"))
