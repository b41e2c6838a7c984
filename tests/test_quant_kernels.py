"""quantize/kernels.py is exact: every encoder (F32, F16, BF16, Q8_0 from stored F32, F16 and
BF16) against a plain per-value reference of ggml's rule, and the whole streamed conversion
against llama.cpp's own quantizer.

The references below share nothing with the kernels: each value is taken exactly
(fractions.Fraction), rounded by the rule as written in ggml's reference functions
(ggml-impl.h ggml_compute_fp32_to_fp16 / _bf16, ggml-quants.c quantize_row_q8_0_ref), and
the bits are assembled by hand. What the rules say where ggml leaves room:

- F16: nearest, ties to even; beyond the largest finite value -> inf; NaN -> sign | 0x7E00.
- BF16: nearest, ties to even (subnormals kept); NaN -> its top 16 bits | 0x0040 (quiet).
- F32 out: the stored value, exactly (float32 input: the same bits).
- Q8_0: d = amax/127 in float32, stored as f16 (rule above); q = roundf(x * (1/d)) with the
  float32 1/d (0 when d is 0); where 1/d overflows float32 (a subnormal d), q = 0, which is
  what llama.cpp gives on x86 (C leaves that conversion undefined; the llama.cpp test below
  covers such blocks). NaN, infinity, or a d whose f16 overflows: refused (Unrepresentable),
  as there is no right answer (ggml's result would depend on the NaN's position).
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import hf_checkpoints as hfc

from quantize import kernels
from quantize.kernels import Unrepresentable, encode

RNG = np.random.default_rng(20250401)

# --- the reference --------------------------------------------------------------------------


def _nearest(a: Fraction, mant: int, ebits: int) -> tuple[int, int] | None:
    """a >= 0 rounded to nearest, ties to even, in the binary format with ``mant`` fraction
    bits and ``ebits`` exponent bits: (exponent field, fraction field); None past the largest
    finite value."""
    bias = (1 << (ebits - 1)) - 1
    if a == 0:
        return 0, 0
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** e > a:
        e -= 1  # now 2**e <= a < 2**(e+1)
    e = max(e, 1 - bias)  # subnormals: the smallest normal binade's spacing
    q = round(a / Fraction(2) ** (e - mant))  # Fraction rounds half to even
    if q == 2 << mant:
        e, q = e + 1, 1 << mant
    if e > bias:
        return None
    if q < 1 << mant:
        return 0, q
    return e + bias, q - (1 << mant)


def _bits(v: Fraction, negative: bool, mant: int, ebits: int) -> int:
    r = _nearest(abs(v), mant, ebits)
    e, f = r if r is not None else ((1 << ebits) - 1, 0)  # too large: infinity
    return (int(negative) << (mant + ebits)) | (e << mant) | f


def _f32(v: Fraction) -> Fraction | None:
    """v rounded to float32 (None: overflow)."""
    r = _nearest(abs(v), 23, 8)
    if r is None:
        return None
    e, f = r
    mag = Fraction(f if e == 0 else f | 1 << 23) * Fraction(2) ** (max(e, 1) - 127 - 23)
    return -mag if v < 0 else mag


def _f32_of_bits(b: int) -> float:
    return struct.unpack("<f", struct.pack("<I", b))[0]


def _negative(x: float) -> bool:
    return math.copysign(1.0, x) < 0


def ref_f16(b: int) -> int:
    """ggml_compute_fp32_to_fp16 of the float32 with bits ``b``."""
    x = _f32_of_bits(b)
    if math.isnan(x):
        return (int(_negative(x)) << 15) | 0x7E00
    if math.isinf(x):
        return (int(_negative(x)) << 15) | 0x7C00
    return _bits(Fraction(x), _negative(x), 10, 5)


def ref_bf16(b: int) -> int:
    """ggml_compute_fp32_to_bf16 of the float32 with bits ``b``."""
    x = _f32_of_bits(b)
    if math.isnan(x):
        return (b >> 16) | 0x0040
    if math.isinf(x):
        return b >> 16
    return _bits(Fraction(x), _negative(x), 7, 8)


def ref_q8_0(block: list[int]) -> bytes | None:
    """quantize_row_q8_0_ref of 32 float32 bit patterns; None where the rules refuse."""
    xs = [_f32_of_bits(b) for b in block]
    if not all(math.isfinite(x) for x in xs):
        return None
    vals = [Fraction(x) for x in xs]
    amax = max(abs(v) for v in vals)
    d = _f32(amax / 127)
    scale = _bits(d, False, 10, 5)
    if scale == 0x7C00:
        return None
    inv = _f32(1 / d) if d else Fraction(0)
    inv = Fraction(0) if inv is None else inv  # subnormal d: 0, as llama.cpp on x86
    qs = []
    for v in vals:
        y = _f32(v * inv)
        q = math.floor(abs(y) + Fraction(1, 2))  # roundf: half away from zero
        qs.append((-q if y < 0 else q) & 0xFF)
    return struct.pack("<H", scale) + bytes(qs)


def as_f32_bits(raw: np.ndarray, stored: str) -> list[int]:
    """The float32 bit pattern each stored value stands for (exact; a double holds them all)."""
    if stored == "F32":
        return raw.view(np.uint32).tolist()
    if stored == "BF16":
        return (raw.astype(np.uint32) << 16).tolist()
    return [struct.unpack("<I", struct.pack("<f", float(v)))[0] for v in raw]


def store(values: np.ndarray, stored: str) -> np.ndarray:
    """float32 values as a checkpoint could store them (the tests only need some stored
    input, and decode it themselves): BF16 truncated, so no value grows."""
    if stored == "F32":
        return values.astype(np.float32)
    if stored == "F16":
        with np.errstate(over="ignore"):
            return values.astype(np.float16)
    return (values.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


# --- inputs ---------------------------------------------------------------------------------


def f32(*values) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def edge_f32() -> np.ndarray:
    """Values at the edges of every rule, both signs."""
    b = np.array([0x7F80_0001, 0x7FC0_0000, 0x7FBF_FFFF, 0x7FC1_2345, 0x7F80_0000,  # NaNs, inf
                  0x7F7F_FFFF, 0x0080_0000, 0x007F_FFFF, 0x0000_0001,  # max, min normal, subnormals
                  0x3F80_8000, 0x3F81_8000, 0x3F80_7FFF, 0x3F80_8001,  # bf16 ties around 1
                  0x7F7F_8000, 0x7F7F_7FFF],  # bf16 rounding up to inf, or not
                 dtype=np.uint32).view(np.float32)
    x = np.concatenate([b, f32(0.0, 1.0, 0.5, 0.49999997, 0.50000006, 1 / 3, 65504, 65519.996,
                               65520, 65536, 1e5, 2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -26,
                               2.0 ** -14, 2.0 ** -14 - 2.0 ** -25, 6.1e-5, 1e-8, 1e-30, 1 + 2.0 ** -11,
                               1 + 3 * 2.0 ** -11, 2049, 2051, 4097)])
    return np.concatenate([x, -x])


def f16_ties() -> np.ndarray:
    """float32 midpoints of neighbouring f16 values, and their float32 neighbours."""
    h = np.sort(RNG.choice(0x7BFF, 4000, replace=False)).astype(np.uint16)
    lo = h.view(np.float16).astype(np.float64)
    hi = (h + 1).view(np.float16).astype(np.float64)
    mid = ((lo + hi) / 2).astype(np.float32)  # exact: f16 has 11 bits
    near = np.concatenate([mid, np.nextafter(mid, np.float32(np.inf)), np.nextafter(mid, np.float32(0))])
    return np.concatenate([near, -near])


def bf16_ties() -> np.ndarray:
    top = RNG.integers(0, 0x7F80, 4000, dtype=np.uint32) << 16
    near = np.concatenate([top | 0x8000, top | 0x7FFF, top | 0x8001, (top + 0x10000) | 0x8000])
    near = near[(near & 0x7FFF_FFFF) < 0x7F80_0000]
    return np.concatenate([near, near | 0x8000_0000]).view(np.float32)


def random_bits(n: int) -> np.ndarray:
    """Uniform float32 bit patterns: every exponent, NaNs and infinities included."""
    return RNG.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)


def q8_blocks(big: bool = True) -> np.ndarray:
    """(n, 32) float32 blocks at the edges of the Q8_0 rule; all finite, all with a finite scale."""
    out = []
    # d = 1 exactly (amax 127), so q = roundf(x): every half, and the floats either side of it
    halves = np.arange(127, dtype=np.float32) + np.float32(0.5)
    ties = np.concatenate([halves, np.nextafter(halves, np.float32(0)), np.nextafter(halves, np.float32(200)),
                           f32(0.49999997, 0.50000006, 0.5, 1.5, 2.5, 126.5, 127)])
    ties = np.concatenate([ties, -ties])
    ties = np.concatenate([ties, np.zeros(-ties.size % 31, np.float32)])
    for k, row in enumerate(ties.reshape(-1, 31)):
        at = k % 32  # the amax anywhere in the block, either sign
        out.append(np.insert(row, at, np.float32(127 if k % 2 else -127)))
    out += [np.zeros(32, np.float32), np.full(32, -0.0, np.float32),
            np.insert(np.zeros(31, np.float32), 31, np.float32(3e-3)),
            np.full(32, np.float32(5.5)), np.full(32, np.float32(-1e-3))]
    # every magnitude: normal blocks at 10**k, down into float32 subnormals (d subnormal: q = 0)
    for k in np.linspace(-45, 6.2, 1000):  # (6.2: 4 sigma stays below 8.3e6)
        blk = (RNG.standard_normal(32) * 10.0 ** k).astype(np.float32)
        blk[RNG.integers(0, 32, 3)] = 0.0
        out.append(blk)
    # tiny blocks whose 1/d just does or does not overflow float32
    for amax in (3.6e-37, 3.7e-37, 3.8e-37, 1e-38, 1.2e-38, 1e-39, 1e-44, 1.4e-45):
        blk = RNG.uniform(-1, 1, 32).astype(np.float32) * np.float32(amax)
        blk[RNG.integers(32)] = np.float32(amax)
        out.append(blk)
    # mixed magnitudes in one block
    for _ in range(40):
        blk = (RNG.choice([-1, 1], 32) * 2.0 ** RNG.uniform(-150, 22 if big else 15, 32)).astype(np.float32)
        out.append(blk)
    if big:  # the largest blocks whose f16 scale is finite: d = 65504 exactly, just below 65520,
        # and one that stays so in BF16 (253 << 15 is a bf16 value; the others round up past it)
        for amax in (65504 * 127, 8.321e6, 253 << 15):
            blk = RNG.uniform(-1, 1, 32).astype(np.float32) * np.float32(amax)
            blk[RNG.integers(32)] = -np.float32(amax)
            out.append(blk)
    blocks = np.array(out, dtype=np.float32)
    return blocks if big else np.clip(blocks, -6e4, 6e4)


# --- the encoders against the reference ------------------------------------------------------


def _check_16bit(raw: np.ndarray, stored: str, ggml: str) -> None:
    got = encode(raw, ggml, stored).view(np.uint16)
    ref = ref_f16 if ggml == "F16" else ref_bf16
    src = as_f32_bits(raw, stored)
    bad = [(hex(b), hex(g), hex(ref(b))) for b, g in zip(src, got.tolist()) if g != ref(b)
           and not (stored == "F16" and _nan16_ok(b, g, ggml))]
    assert not bad, f"{len(bad)} of {len(src)} differ, first (input, ours, rule): {bad[:5]}"


def _nan16_ok(b: int, g: int, ggml: str) -> bool:
    """From stored F16, which NaN the float32 in between is (payload, quiet bit) is not part
    of any rule: a NaN of the same sign, quiet, is what counts."""
    if not math.isnan(_f32_of_bits(b)):
        return False
    sign = (b >> 31) == (g >> 15)
    return sign and (g & 0x7E00 == 0x7E00 if ggml == "F16" else g & 0x7FC0 == 0x7FC0)


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 4096 values, so that the inputs here span many, the last one partial."""
    monkeypatch.setattr(kernels, "CHUNK", 4096)


@pytest.mark.parametrize("ggml", ["F16", "BF16"])
def test_16bit_from_f32(ggml, small_chunks):
    x = np.concatenate([edge_f32(), f16_ties(), bf16_ties(), random_bits(20000)])
    assert x.size % kernels.CHUNK
    _check_16bit(x, "F32", ggml)


@pytest.mark.parametrize("stored", ["F16", "BF16"])
@pytest.mark.parametrize("ggml", ["F16", "BF16"])
def test_16bit_from_16bit_every_pattern(stored, ggml):
    raw = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    _check_16bit(raw.view(np.float16) if stored == "F16" else raw, stored, ggml)


@pytest.mark.parametrize("stored", ["F32", "F16", "BF16"])
def test_f32_out_is_the_stored_value(stored, small_chunks):
    if stored == "F32":
        raw = np.concatenate([edge_f32(), random_bits(50000)])
    else:
        raw = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
        raw = raw.view(np.float16) if stored == "F16" else raw
    got = encode(raw, "F32", stored).view(np.uint32).tolist()
    want = as_f32_bits(raw, stored)
    for g, w in zip(got, want):
        if g != w:  # only a NaN from F16 may differ (its payload), keeping NaN and sign
            assert stored == "F16" and math.isnan(_f32_of_bits(w)) and math.isnan(_f32_of_bits(g)) \
                and g >> 31 == w >> 31, (hex(g), hex(w))


@pytest.mark.parametrize("stored", ["F32", "F16", "BF16"])
def test_q8_0_per_block(stored, small_chunks):
    blocks = q8_blocks(big=stored != "F16")
    raw = store(blocks.reshape(-1), stored)
    src = as_f32_bits(raw, stored)
    want = [ref_q8_0(src[i:i + 32]) for i in range(0, len(src), 32)]
    assert all(w is not None for w in want)
    assert raw.size % kernels.CHUNK
    got = encode(raw, "Q8_0", stored).reshape(-1, 34)
    bad = [i for i, w in enumerate(want) if bytes(got[i]) != w]
    assert not bad, f"{len(bad)} blocks differ, first {bad[0]}: {raw[bad[0] * 32:bad[0] * 32 + 32]}"


def test_q8_0_rounds_half_away_from_zero_and_not_0_49999997():
    """The rounding on its own, on the data that broke trunc(x + copysign(0.5, x))."""
    x = np.zeros(32, np.float32)
    x[:9] = f32(127, 0.49999997, 0.5, 1.5, 2.5, -0.49999997, -0.5, -2.5, 126.49999)
    q = encode(x, "Q8_0").reshape(34)[2:].view(np.int8)
    assert q[:9].tolist() == [127, 0, 1, 2, 3, 0, -1, -3, 126]


def test_q8_0_scale_is_f16_of_the_f32_d_and_q_uses_the_f32_d():
    """d = 100/127 is not an f16: the scale is its f16 rounding, the values use 1/d in f32."""
    x = np.linspace(-100, 100, 32, dtype=np.float32)
    got = encode(x, "Q8_0")
    d = np.float32(100) / np.float32(127)
    assert got[:2].view(np.float16)[0] == np.float16(d) and np.float16(d) != d
    inv = np.float32(1) / d
    want = [int(math.copysign(math.floor(abs(float(v * inv)) + 0.5), float(v))) for v in x]
    assert got[2:].view(np.int8).tolist() == want


@pytest.mark.parametrize("bad", [np.nan, -np.inf, np.inf, 8.3213e6, -9e6])
def test_q8_0_refuses_what_it_cannot_hold(bad):
    x = RNG.standard_normal(4 * 32).astype(np.float32)
    x[77] = bad
    assert ref_q8_0(x.view(np.uint32)[64:96].tolist()) is None  # the rule agrees
    with pytest.raises(Unrepresentable):
        encode(x, "Q8_0")
    x[77] = 8.32e6  # still within: d rounds to f16 65504
    assert encode(x, "Q8_0").reshape(-1, 34)[2, :2].view(np.float16)[0] == 65504


@pytest.mark.parametrize("stored", ["F32", "F16", "BF16"])
@pytest.mark.parametrize("ggml", ["F32", "F16", "BF16", "Q8_0"])
def test_chunks_at_full_size_change_nothing(stored, ggml):
    """One call over 2.5 chunks of the real size == calls of 4096 values each."""
    x = (RNG.standard_normal(kernels.CHUNK * 5 // 2) * 10.0 ** RNG.integers(-8, 4, kernels.CHUNK * 5 // 2))
    raw = store(x.astype(np.float32), stored)
    whole = encode(raw, ggml, stored)
    pieces = np.concatenate([encode(raw[i:i + 4096], ggml, stored) for i in range(0, raw.size, 4096)])
    assert np.array_equal(whole, pieces)


def test_threads_do_not_share_scratch():
    """The converter encodes on several threads at once: each must get its own buffers."""
    arrays = [(RNG.standard_normal(200_000) * 10.0 ** k).astype(np.float32) for k in range(-3, 3)]
    want = [encode(a, "Q8_0").copy() for a in arrays]
    wrong = []

    def worker(k: int) -> None:
        for _ in range(15):
            for i in range(k, len(arrays) + k):
                i %= len(arrays)
                if not np.array_equal(encode(arrays[i], "Q8_0"), want[i]):
                    wrong.append(i)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong


def test_out_buffer_and_argument_checks():
    x = RNG.standard_normal(64).astype(np.float32)
    out = np.full(100, 0xAA, np.uint8)
    got = encode(x, "Q8_0", out=out)
    assert np.shares_memory(got, out) and np.array_equal(got, encode(x, "Q8_0"))
    assert (out[68:] == 0xAA).all()
    with pytest.raises(ValueError):
        encode(x, "Q8_0", out=np.empty(67, np.uint8))
    with pytest.raises(ValueError):
        encode(x[:40], "Q8_0")  # not whole blocks
    with pytest.raises(TypeError):
        encode(x, "F16", "BF16")  # BF16 comes as its uint16 bits


def test_q8_0_equals_gguf_py_port():
    """A third opinion: gguf-py's numpy port of quantize_row_q8_0_ref, on ordinary values."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize as ggml_quantize

    x = RNG.standard_normal((64, 256)).astype(np.float32)
    x[3, :32] = 0.0
    x[5, 7] = 1e4
    assert np.array_equal(encode(x, "Q8_0").reshape(64, -1), ggml_quantize(x, GGMLQuantizationType.Q8_0))


# --- the converter --------------------------------------------------------------------------

def edge_checkpoint(base: Path, stored: str, limit: float, dst: Path) -> Path:
    """A copy of a tiny checkpoint whose weights carry the edge values above (finite, below
    ``limit``), stored as ``stored``."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(base, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    tensors = {}
    for f in sorted(base.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    ties, edges = np.concatenate([f16_ties(), bf16_ties()]), edge_f32()
    fills = {"model.layers.0.mlp.down_proj.weight": q8_blocks(big=limit > 6e4).reshape(-1),
             "model.layers.0.self_attn.q_proj.weight": ties[np.abs(ties) < limit],
             "model.layers.1.self_attn.k_proj.weight": edges[np.abs(edges) < limit]}
    for name, values in fills.items():
        w = tensors[name].float().numpy().reshape(-1).copy()
        n = min(w.size, values.size)
        w[:n] = values[:n]
        tensors[name] = torch.from_numpy(w.reshape(tensors[name].shape))
    for name, t in tensors.items():
        raw = store(t.float().numpy(), stored)  # BF16 by our store(): torch would round 8.32e6 up
        tensors[name] = torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16) if stored == "BF16" \
            else torch.from_numpy(raw)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def _tensor_bytes(path: Path) -> dict[str, tuple[str, bytes]]:
    from gguf import GGUFReader

    return {t.name: (t.tensor_type.name, np.asarray(t.data).tobytes()) for t in GGUFReader(str(path)).tensors}


CASES = [("qwen2", "F32"), ("qwen2", "BF16"), ("qwen2", "F16"), ("llama", "BF16")]


@pytest.mark.parametrize("arch,stored", CASES)
@pytest.mark.parametrize("quant", ["Q8_0", "F16", "BF16"])
def test_streamed_output_equals_llama_cpp_quantizer(arch, stored, quant, tmp_path):
    """Our F32 file -> llama.cpp's llama_model_quantize -> ``quant``, against our own direct
    conversion: every tensor the same type and the same bytes, edge values included."""
    from quantize import convert
    from quantize.llamaquant import quantize_file

    base = hfc.llama_checkpoint() if arch == "llama" else hfc.qwen2_checkpoint()
    # F16 out: llama.cpp refuses infinities; Q8_0: our rule refuses blocks beyond f16 scales
    limit = 6e4 if "F16" in (stored, quant) else 8e6 if quant == "Q8_0" else 3e38
    src = edge_checkpoint(base, stored, limit, tmp_path / "ckpt")
    assert json.loads((src / "config.json").read_text())["architectures"]
    f32_file = convert(src, tmp_path / "f32.gguf", "F32", progress=False)
    theirs = tmp_path / "llama.gguf"
    quantize_file(f32_file, theirs, quant, threads=2, expected=1, imatrix=None, progress=False)
    ours = _tensor_bytes(convert(src, tmp_path / "ours.gguf", quant, progress=False))
    ref = _tensor_bytes(theirs)
    assert sorted(ours) == sorted(ref)
    assert {n for n, (t, _) in ours.items() if t == quant} == {n for n, (t, _) in ref.items() if t == quant}
    assert sum(t == quant for t, _ in ours.values()) >= 14  # every 2-D weight
    differ = [n for n in ours if ours[n] != ref[n]]
    assert not differ, differ


def test_unrepresentable_values_stop_q8_0_with_the_tensor_named(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from quantize import convert
    from quantize.errors import ConvertError

    base = hfc.qwen2_checkpoint()
    src = tmp_path / "ckpt"
    shutil.copytree(base, src, ignore=shutil.ignore_patterns("*.safetensors"))
    tensors = load_file(str(base / "model.safetensors"))
    w = tensors["model.layers.1.mlp.up_proj.weight"].clone()
    w[3, 5] = float("nan")
    tensors["model.layers.1.mlp.up_proj.weight"] = w
    save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "out" / "m.gguf"
    with pytest.raises(ConvertError, match="model.layers.1.mlp.up_proj.weight"):
        convert(src, out, "Q8_0", progress=False)
    assert not list(out.parent.iterdir())
    # F16 writes the NaN as ggml does
    f16 = _tensor_bytes(convert(src, out, "F16", progress=False))
    h = np.frombuffer(f16["blk.1.ffn_up.weight"][1], np.uint16).reshape(w.shape)
    assert h[3, 5] & 0x7FFF == 0x7E00
    rest = np.ones(w.shape, bool)
    rest[3, 5] = False
    assert np.array_equal(h[rest], w.half().view(torch.int16).numpy().view(np.uint16)[rest])


def test_writeback_hints_cover_the_file_and_change_no_byte(monkeypatch, tmp_path):
    """The writer hands written ranges to the disk as it goes (POSIX_FADV_DONTNEED); the
    file must come out the same, and the ranges must be real ones."""
    import os

    from quantize import convert, writer

    if not hasattr(os, "posix_fadvise"):
        pytest.skip("no posix_fadvise here")
    src = hfc.qwen2_checkpoint()
    monkeypatch.setattr(writer, "WRITEBACK_BYTES", 1 << 62)
    plain = convert(src, tmp_path / "plain.gguf", "Q8_0", progress=False).read_bytes()
    calls = []
    real = os.posix_fadvise
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, off, n, advice: (calls.append((off, n)),
                                                                          real(fd, off, n, advice)))
    monkeypatch.setattr(writer, "WRITEBACK_BYTES", 64 << 10)
    hinted = convert(src, tmp_path / "hinted.gguf", "Q8_0", progress=False).read_bytes()
    assert hinted == plain
    assert len(calls) > 5
    assert all(n > 0 and off + n <= len(plain) for off, n in calls)
    assert all(a[0] <= b[0] <= a[0] + a[1] for a, b in zip(calls, calls[1:]))  # no gaps
    # from the end of the header to the last 64 KB + one write (blocks here are <= 140 KB)
    assert calls[0][0] < 64 << 10 and calls[-1][0] + calls[-1][1] > len(plain) - (256 << 10)
