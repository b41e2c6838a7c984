"""Importance-matrix quantization end to end, with the llama.cpp tools install.sh builds into
the venv: llama-imatrix makes a matrix from a tiny model, `r1local convert --imatrix` turns
the checkpoint into IQ types that llama.cpp loads and runs. The one-pass file (no
intermediate, no llama-quantize) holds the very tensors llama-quantize --imatrix makes of our
F16/BF16 file, on Qwen2, Llama and DeepSeek-V3 (per-expert weights). Bad matrices, a failing
llama-quantize and a missing one end in one line on stderr and no output file."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hf_checkpoints as hfc
from test_convert_cli import _assert_one_line_error

from quantize.llamaquant import find_tool
from quantize.quants import IMATRIX_QUANTS, LLAMA_QUANTS

ROOT = Path(__file__).resolve().parent.parent
CTX = 64  # llama-imatrix's chunk: the text must hold at least two
TOOLS = {name: find_tool(name) for name in ("llama-quantize", "llama-imatrix")}
# install.sh leaves this beside a venv it built the tools into: there they must be found, so
# that a broken install fails these tests instead of skipping them
INSTALLED = Path(sys.prefix, ".r1local-tools")

ABSENT = ", ".join(name for name, path in TOOLS.items() if path is None)
if ABSENT and not INSTALLED.exists():
    pytest.skip(f"llama.cpp's {ABSENT} not found in {Path(sys.executable).parent} nor on PATH "
                "(./install.sh --tools builds them)", allow_module_level=True)


@pytest.fixture(scope="module", autouse=True)
def _tools_installed():
    if ABSENT:
        pytest.fail(f"install.sh installed llama.cpp's tools into {sys.prefix}, yet {ABSENT} "
                    "cannot be found: run ./install.sh --tools again")


def _cli(*args: str, env: dict | None = None, python: list[str] | None = None) -> subprocess.CompletedProcess:
    cmd = [*(python or [sys.executable, "-m", "r1local"]), "convert", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def _imatrix(model: Path, text: str, out: Path, *extra: str) -> Path:
    txt = out.with_suffix(".txt")
    txt.write_text(text, encoding="utf-8")
    proc = subprocess.run([str(TOOLS["llama-imatrix"]), "-m", str(model), "-f", str(txt), "-o", str(out),
                           "-c", str(CTX), "-t", "2", "--no-ppl", *extra],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and out.stat().st_size > 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    """The tiny Qwen2 checkpoint (every row 256 or 512 wide, as IQ blocks need), its F16 GGUF,
    and importance matrices made by llama-imatrix from two different texts and in both of its
    file formats."""
    d = tmp_path_factory.mktemp("imatrix")
    ckpt = hfc.qwen2_checkpoint()
    f16 = d / "f16.gguf"
    proc = _cli(str(ckpt), "--quant", "F16", "-o", str(f16))
    assert proc.returncode == 0, proc.stderr
    prose = "\n".join(hfc.CORPUS * 6)
    digits = " ".join(str(i * 7919 % 1000) for i in range(1200))
    return {"ckpt": ckpt, "f16": f16,
            "imatrix": _imatrix(f16, prose, d / "prose.gguf"),
            "imatrix_dat": _imatrix(f16, prose, d / "prose.dat", "--output-format", "dat"),
            "imatrix_digits": _imatrix(f16, digits, d / "digits.gguf")}


def _convert(work, out: Path, quant: str, imatrix: Path, *extra: str) -> subprocess.CompletedProcess:
    return _cli(str(work["ckpt"]), "--quant", quant, "--imatrix", str(imatrix), "-o", str(out),
                "--threads", "2", *extra)


# --- one pass with a matrix: llama-quantize --imatrix's tensors, no intermediate -----------

# Every type on Qwen2. On Llama and DeepSeek-V3 every K/IQ4 type and the IQ types whose
# lookup grids build fast: IQ1_S/IQ1_M/IQ2_XS/IQ2_S/IQ2_M cost 10-25 s per llama-quantize run
# for their grids alone, and Qwen2 covers them
FAST_IQ = ("IQ2_XXS", "IQ3_XXS", "IQ3_S")
BYTE_CASES = ([("qwen2", q) for q in (*LLAMA_QUANTS, *IMATRIX_QUANTS)]
              + [(a, q) for a in ("llama", "deepseek_v3") for q in (*LLAMA_QUANTS, *FAST_IQ)])


@pytest.fixture(scope="module")
def matrices(work, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """arch -> (checkpoint, a matrix llama-imatrix made from its F16 file): Qwen2's GGUF one,
    Llama's in the .dat layout, DeepSeek-V3's (BF16, 8 experts: per-expert counts) GGUF."""
    d = tmp_path_factory.mktemp("matrices")
    prose = "\n".join(hfc.CORPUS * 6)
    found = {"qwen2": (work["ckpt"], work["imatrix"])}
    for arch, ckpt, extra in (("llama", hfc.llama_checkpoint(), ("--output-format", "dat")),
                              ("deepseek_v3", hfc.deepseek_v3_checkpoint(dtype="bfloat16"), ())):
        f16 = d / f"{arch}-f16.gguf"
        proc = _cli(str(ckpt), "--quant", "F16", "-o", str(f16))
        assert proc.returncode == 0, proc.stderr
        found[arch] = (ckpt, _imatrix(f16, prose, d / f"{arch}.{'dat' if extra else 'gguf'}", *extra))
        f16.unlink()
    return found


def _tensors(path: Path) -> dict[str, tuple[str, bytes]]:
    from gguf import GGUFReader

    return {t.name: (t.tensor_type.name, bytes(t.data)) for t in GGUFReader(path).tensors}


def _fields(path: Path, *keys: str) -> dict:
    from gguf import GGUFReader

    fields = GGUFReader(path).fields
    return {k: fields[k].contents() for k in keys if k in fields}


PROVENANCE = ("general.file_type", "quantize.imatrix.file", "quantize.imatrix.dataset",
              "quantize.imatrix.entries_count", "quantize.imatrix.chunks_count")


@pytest.mark.parametrize("arch,quant", BYTE_CASES)
def test_one_pass_with_imatrix_equals_llama_quantize(matrices, tmp_path, arch, quant):
    from quantize import convert

    ckpt, imatrix = matrices[arch]
    one_dir, two_dir = tmp_path / "one", tmp_path / "two"
    one = convert(ckpt, one_dir / "m.gguf", quant, imatrix=imatrix, threads=2, progress=False)
    assert sorted(p.name for p in one_dir.iterdir()) == ["m.gguf"]  # no intermediate, no skeleton
    two = convert(ckpt, two_dir / "m.gguf", quant, imatrix=imatrix, threads=2, progress=False,
                  two_pass=True)
    a, b = _tensors(one), _tensors(two)
    assert set(a) == set(b)
    differ = [n for n in b if a[n] != b[n]]
    assert not differ, f"{len(differ)} tensor(s) differ, first {differ[0]}: {a[differ[0]][0]} vs {b[differ[0]][0]}"
    assert any(t not in ("F32", "F16", "BF16") for t, _ in a.values())
    # and the same provenance: the matrix, its dataset, entry and chunk counts
    got = _fields(one, *PROVENANCE)
    assert got == _fields(two, *PROVENANCE) and len(got) == len(PROVENANCE), got


def _dat(values: dict[str, np.ndarray]) -> bytes:
    """An importance matrix in the .dat layout holding ``values`` as they are (one call)."""
    blob = struct.pack("<i", len(values))
    for name, v in values.items():
        raw = name.encode()
        blob += struct.pack("<i", len(raw)) + raw + struct.pack("<ii", 1, v.size)
        blob += np.asarray(v, np.float32).tobytes()
    return blob


def test_each_expert_gets_its_own_weights(matrices, tmp_path):
    """The equality above covers the per-expert slices: DeepSeek-V3's expert tensors (Q4_K_M,
    one pass) come out the same from the matrix as from its normalised values rewritten as a
    .dat file, and differ when every expert is given the first expert's weights, or none."""
    from quantize import convert
    from quantize.imatrix import load_imatrix

    ckpt, imatrix = matrices["deepseek_v3"]
    values = load_imatrix(imatrix).data
    same, first = tmp_path / "same.dat", tmp_path / "first.dat"
    same.write_bytes(_dat(values))
    first.write_bytes(_dat({n: np.tile(v[: v.size // 8], 8) if "_exps." in n else v
                            for n, v in values.items()}))

    def experts(matrix: Path | None, name: str) -> dict[str, bytes]:
        out = convert(ckpt, tmp_path / name, "Q4_K_M", imatrix=matrix, threads=2, progress=False)
        return {n: data for n, (_, data) in _tensors(out).items() if "_exps." in n}

    real = experts(imatrix, "real.gguf")
    assert len(real) == 6  # gate/up/down of the 2 MoE layers
    assert experts(same, "same.gguf") == real
    wrong = experts(first, "first.gguf")
    assert all(wrong[n] != real[n] for n in real)
    none = experts(None, "none.gguf")
    assert all(none[n] != real[n] for n in real)


def _last_logits(model: Path, prompt: bytes) -> np.ndarray:
    import llama_cpp

    llm = llama_cpp.Llama(str(model), n_ctx=64, logits_all=True, verbose=False)
    try:
        tokens = llm.tokenize(prompt)
        llm.eval(tokens)
        return np.array(llm.scores[len(tokens) - 1], dtype=np.float64)
    finally:
        llm.close()


# the projections that llama.cpp's mix for each type puts at that very type (attn_v and
# attn_output get more bits at some of them; token_embd and output always do)
AT_TYPE = {
    "IQ2_XXS": ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up", "ffn_down"),
    "IQ3_XXS": ("attn_v", "ffn_gate", "ffn_up", "ffn_down"),
    "IQ1_S": ("attn_q", "attn_k", "ffn_gate", "ffn_up", "ffn_down"),
}


@pytest.mark.parametrize("quant,fmt", [("IQ2_XXS", "imatrix"), ("IQ3_XXS", "imatrix"),
                                       ("IQ1_S", "imatrix_dat")])
def test_iq_types_with_imatrix(work, tmp_path, quant, fmt):
    from gguf import GGMLQuantizationType, GGUFReader

    import llama_cpp

    out = tmp_path / f"m-{quant}.gguf"
    proc = _convert(work, out, quant, work[fmt])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no partials left

    reader = GGUFReader(out)
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert field("general.file_type") == getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}")
    # llama-quantize records the matrix it used
    assert field("quantize.imatrix.file") == str(work[fmt])
    assert field("quantize.imatrix.entries_count") >= 14  # 7 projections x 2 blocks
    types = {t.name: GGMLQuantizationType(t.tensor_type) for t in reader.tensors}
    wanted = GGMLQuantizationType[quant]
    for layer in range(2):
        for w in AT_TYPE[quant]:
            assert types[f"blk.{layer}.{w}.weight"] == wanted, (layer, w, types[f"blk.{layer}.{w}.weight"])
    # and no matrix is left unquantized
    matrices = [t for t in reader.tensors if len(t.shape) == 2]
    assert len(matrices) == 16
    assert not [t.name for t in matrices if types[t.name] in (GGMLQuantizationType.F16, GGMLQuantizationType.F32)]

    # llama.cpp loads it and generates. At 1.6-3 bits a tiny random model keeps part of its
    # signal (correlation 0.45-0.8 here); the F16 model's logits for another prompt give the
    # chance level (about 0.05-0.1)
    prompt = b"The quick brown fox jumps over"
    got = _last_logits(out, prompt)
    assert np.isfinite(got).all()
    same = np.corrcoef(_last_logits(work["f16"], prompt), got)[0, 1]
    other = np.corrcoef(_last_logits(work["f16"], b"def add(a, b):\n    return"), got)[0, 1]
    assert same > 0.3 and same > other + 0.25, (same, other)
    llm = llama_cpp.Llama(str(out), n_ctx=64, verbose=False)
    try:
        tokens = llm.tokenize(prompt)
        gen = []
        for tok in llm.generate(tokens, temp=0.0):
            gen.append(tok)
            if len(gen) == 8:
                break
        assert len(gen) == 8 and all(0 <= t < llm.n_vocab() for t in gen)
    finally:
        llm.close()


def test_the_imatrix_steers_the_quantization(work, tmp_path):
    """Matrices from different texts give different IQ2_XXS weights; the same one, the same."""
    from gguf import GGUFReader

    def weights(imatrix: Path, name: str) -> bytes:
        out = tmp_path / name
        proc = _convert(work, out, "IQ2_XXS", imatrix)
        assert proc.returncode == 0, proc.stderr
        return bytes(next(t for t in GGUFReader(out).tensors if t.name == "blk.0.ffn_up.weight").data)

    prose = weights(work["imatrix"], "a.gguf")
    assert weights(work["imatrix"], "b.gguf") == prose
    assert weights(work["imatrix_digits"], "c.gguf") != prose


def _legacy(entries: dict[str, int]) -> bytes:
    """An importance matrix in llama-imatrix's .dat layout, all values 1."""
    blob = struct.pack("<i", len(entries))
    for name, n in entries.items():
        raw = name.encode()
        blob += struct.pack("<i", len(raw)) + raw + struct.pack("<ii", 1, n) + struct.pack(f"<{n}f", *[1.0] * n)
    return blob


def _bad(kind: str, work, path: Path) -> Path:
    real = work["imatrix"].read_bytes()
    if kind == "missing":
        pass
    elif kind == "folder":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated gguf":
        path.write_bytes(real[: len(real) // 2])
    elif kind == "cut gguf header":
        path.write_bytes(real[:40])
    elif kind == "text":
        path.write_text("not an importance matrix, just some text\n" * 20)
    elif kind == "model gguf":
        shutil.copy(work["f16"], path)
    elif kind == "truncated dat":
        dat = work["imatrix_dat"].read_bytes()
        path.write_bytes(dat[: len(dat) // 2])
    elif kind == "other model":
        path.write_bytes(_legacy({"blk.0.mixer.weight": 256, "blk.1.mixer.weight": 256}))
    elif kind == "non-finite":
        bad = np.ones(256, np.float32)
        bad[7] = np.nan
        path.write_bytes(_dat({"blk.0.attn_q.weight": bad}))
    return path


@pytest.mark.parametrize("kind,needles", [
    ("missing", ["does not exist"]),
    ("folder", ["is not a file"]),
    ("empty", ["is empty", "llama-imatrix"]),
    ("truncated gguf", ["truncated", "llama-imatrix"]),
    ("cut gguf header", ["damaged", "llama-imatrix"]),
    ("text", ["not an importance matrix", "llama-imatrix"]),
    ("model gguf", ["'model'", "not an importance matrix"]),
    ("truncated dat", ["not an importance matrix", "truncated"]),
    ("other model", ["no entry for any weight of this model", "llama-imatrix"]),
    ("non-finite", ["non-finite", "blk.0.attn_q.weight", "llama-imatrix"]),
])
def test_bad_imatrix_files(work, tmp_path, kind, needles):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    bad = _bad(kind, work, tmp_path / "bad.imatrix")
    proc = _convert(work, out_dir / "m.gguf", "IQ2_XXS", bad)
    line = _assert_one_line_error(proc, out_dir, str(bad), *needles)
    assert len(line) < 400


@pytest.mark.parametrize("two_pass", [False, True])
def test_wrong_row_length_is_one_line(work, tmp_path, two_pass):
    """Right names, wrong row length: one pass refuses it as llama-quantize does, before any
    row is read; with --two-pass llama-quantize refuses it, and its reason (not its log) is
    what the user sees."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    bad = tmp_path / "short.dat"
    names = [f"blk.{i}.{w}.weight" for i in range(2)
             for w in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")]
    bad.write_bytes(_legacy({n: 100 for n in names}))
    proc = _convert(work, out_dir / "m.gguf", "IQ2_XXS", bad, *(["--two-pass"] if two_pass else []))
    needles = ["llama-quantize", "IQ2_XXS"] if two_pass else [str(bad), "blk.0.attn_q.weight"]
    line = _assert_one_line_error(proc, out_dir, *needles, "imatrix size 100", "llama-imatrix")
    assert len(line) < 400


def test_imatrix_with_a_streamed_type_is_refused(work, tmp_path):
    proc = _convert(work, tmp_path / "m.gguf", "Q8_0", work["imatrix"])
    _assert_one_line_error(proc, tmp_path, "--imatrix", "Q8_0", "IQ2_XXS")


def test_missing_llama_quantize(work, tmp_path):
    """Neither in the venv's bin nor on PATH: one pass does not need it; --two-pass says in one
    line how to get it, before any work."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    # the real interpreter, made to believe its bin folder is one without the tools
    fake = ["import runpy, sys, sysconfig",
            f"bin = {str(empty)!r}",
            "sys.executable = bin + '/python'",
            "real = sysconfig.get_path",
            "sysconfig.get_path = lambda name, *a, **k: bin if name == 'scripts' else real(name, *a, **k)",
            "sys.argv = ['r1local'] + sys.argv[1:]",
            "runpy.run_module('r1local', run_name='__main__')"]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args = [str(work["ckpt"]), "--quant", "IQ2_XXS", "--imatrix", str(work["imatrix"]),
            "-o", str(out_dir / "m.gguf")]
    run = lambda *more: _cli(*args, *more, env={"PATH": str(empty)},  # noqa: E731
                             python=[sys.executable, "-c", "\n".join(fake)])
    proc = run("--two-pass")
    _assert_one_line_error(proc, out_dir, "llama-quantize", str(empty), "PATH", "./install.sh --tools")
    proc = run()
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == ["m.gguf"]
