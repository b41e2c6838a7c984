"""Encoders: checkpoint values -> the bytes of a GGUF tensor type (F32, F16, BF16, Q8_0).

Why chunks: run on a whole 16 MB row block, every numpy step made a fresh 16 MB temporary,
so encoding was ~10 trips through main memory plus page faults on the fresh pages. Here a
block is walked CHUNK values at a time through a few per-thread buffers (``out=`` throughout),
decoding the stored values on the way, so every step after the first reads from cache. Stored
BF16/F16 going to a 16-bit type skip float32 altogether: one lookup in a 64K-entry table.

The results are ggml's, bit for bit: tests/test_quant_kernels.py checks each rule against a
plain per-value reference and against llama.cpp's own quantizer.
"""

from __future__ import annotations

import threading

import numpy as np

from quantize import formats as F

# values per step: 512 KB float32 buffers, a few per thread, held in L2/L3. Measured on 2 cores
# (CPU time per value): 32K-value chunks lost more to numpy's per-call cost (~30 calls a chunk)
# than they gained from L2; 128K-512K were level, 1M worse.
CHUNK = 1 << 17
STORED = ("F32", "F16", "BF16")  # what encode() reads (FP8 arrives dequantized, as F32)
_ONE = np.float32(1)


class Unrepresentable(ValueError):
    """Values the output type cannot hold (Q8_0: NaN, infinity, or a scale beyond f16)."""


class _Scratch(threading.local):
    """Per-thread work buffers, made once per thread (numpy releases the GIL, so the
    converter's threads encode at the same time)."""

    def __init__(self) -> None:
        blocks = CHUNK // F.QK8_0
        self.x = np.empty(CHUNK, np.float32)  # decoded values
        self.a = np.empty(CHUNK, np.float32)
        self.b = np.empty(CHUNK, np.float32)
        self.mask = np.empty(CHUNK, np.bool_)
        self.top = np.empty(blocks, np.uint32)  # per block: the largest |value|, as stored
        self.amax = np.empty(blocks, np.float32)
        self.d = np.empty(blocks, np.float32)
        self.inv = np.empty(blocks, np.float32)
        self.zero = np.empty(blocks, np.bool_)


_scratch = _Scratch()


def encoded_size(count: int, ggml: str) -> int:
    """Bytes of ``count`` values (whole blocks) as ``ggml``."""
    _, block, size = F.GGML_TYPES[ggml]
    return count // block * size


def encode(values: np.ndarray, ggml: str, stored: str = "F32", out: np.ndarray | None = None) -> np.ndarray:
    """``values`` as a checkpoint stores them (``stored``: "F32" float32, "F16" float16, "BF16"
    the raw bits as uint16) -> the bytes of ``ggml`` as a flat uint8 array, written into
    ``out`` (a contiguous uint8 array at least that long) when given."""
    if stored not in STORED:
        raise ValueError(f"cannot encode from stored type {stored}")
    src = np.ascontiguousarray(values).reshape(-1)
    if src.dtype != F.SAFETENSORS_DTYPES[stored]:
        raise TypeError(f"stored {stored} values come as {F.SAFETENSORS_DTYPES[stored]}, not {src.dtype}")
    _, block, size = F.GGML_TYPES[ggml]
    if src.size % block:
        raise ValueError(f"{src.size} values do not fill whole {ggml} blocks of {block}")
    nbytes = encoded_size(src.size, ggml)
    if out is None:
        dst = np.empty(nbytes, np.uint8)
    elif out.dtype != np.uint8 or not out.flags.c_contiguous or out.size < nbytes:
        raise ValueError(f"out must be a contiguous uint8 array of at least {nbytes} bytes")
    else:
        dst = out.reshape(-1)[:nbytes]
    s = _scratch
    with np.errstate(all="ignore"):  # f16 overflowing to inf is the rule, as in ggml
        if stored != "F32" and ggml in ("BF16", "F16"):
            table = _table(stored, ggml)
            bits, out16 = src.view(np.uint16), dst.view(np.uint16)
            for i in range(0, src.size, CHUNK):
                # mode="clip": no bounds checks and no buffered copy of out (16-bit indices
                # cannot leave a 65536-entry table)
                np.take(table, bits[i:i + CHUNK], out=out16[i:i + CHUNK], mode="clip")
            return dst
        step = _ENCODERS[ggml]
        for i in range(0, src.size, CHUNK):  # CHUNK is a multiple of every block size
            raw = src[i:i + CHUNK]
            x = raw if stored == "F32" else _decode(raw, stored, s.x[:raw.size])
            step(x, dst[i // block * size:(i + x.size) // block * size], s, raw, stored)
    return dst


def _decode(raw: np.ndarray, stored: str, x: np.ndarray) -> np.ndarray:
    """Stored values -> float32 into ``x`` (exact for every stored type; F32 is a copy)."""
    if stored == "BF16":  # the stored bits are the top half of the float32
        u = x.view(np.uint32)
        np.copyto(u, raw)
        np.left_shift(u, F.BF16_SHIFT, out=u)
    else:
        np.copyto(x, raw)
    return x


def _f32(x: np.ndarray, dst: np.ndarray, s: _Scratch, raw: np.ndarray, stored: str) -> None:
    np.copyto(dst.view(np.float32), x)


def _f16(x: np.ndarray, dst: np.ndarray, s: _Scratch, raw: np.ndarray, stored: str) -> None:
    """ggml_compute_fp32_to_fp16: nearest, ties to even, overflow to inf; a NaN -> sign | 0x7E00."""
    h = dst.view(np.uint16)
    np.copyto(h.view(np.float16), x, casting="same_kind")  # numpy rounds the same way
    nan = np.isnan(x, out=s.mask[:x.size])
    if nan.any():  # numpy keeps part of a NaN's payload; ggml does not
        h[nan] = (h[nan] & F.F16_SIGN) | F.F16_NAN


def _bf16(x: np.ndarray, dst: np.ndarray, s: _Scratch, raw: np.ndarray, stored: str) -> None:
    """ggml_compute_fp32_to_bf16: nearest, ties to even; a NaN keeps its top half, made quiet."""
    u = x.view(np.uint32)
    t = s.a[:x.size].view(np.uint32)
    np.right_shift(u, F.BF16_SHIFT, out=t)
    np.bitwise_and(t, 1, out=t)
    np.add(t, F.BF16_ROUND, out=t)
    np.add(t, u, out=t)  # can wrap only for NaNs, which are redone below
    np.right_shift(t, F.BF16_SHIFT, out=t)
    h = dst.view(np.uint16)
    np.copyto(h, t, casting="unsafe")
    nan = np.isnan(x, out=s.mask[:x.size])
    if nan.any():
        h[nan] = (u[nan] >> F.BF16_SHIFT).astype(np.uint16) | F.BF16_QUIET


def _q8_0(x: np.ndarray, dst: np.ndarray, s: _Scratch, raw: np.ndarray, stored: str) -> None:
    """quantize_row_q8_0_ref: per 32 values d = amax/127 (stored as f16), q = roundf(x * (1/d))."""
    nb = x.size // F.QK8_0
    blocks = dst.reshape(nb, F.Q8_0_BYTES)
    amax = _block_amax(raw, stored, s, nb)
    d = np.divide(amax, F.Q8_0_LEVELS, out=s.d[:nb])
    if not np.max(d) < F.F16_OVERFLOW:  # a NaN fails this too
        raise Unrepresentable("Q8_0 cannot hold NaN, infinity, or a block whose largest |value| is "
                              "above about 8.3e6 (its f16 scale would overflow)")
    np.copyto(blocks[:, :2].view(np.float16)[:, 0], d, casting="same_kind")
    inv = np.divide(_ONE, d, out=s.inv[:nb])
    # ggml: id = d ? 1/d : 0. Where 1/d overflows (amax < 3.7e-37) ggml goes on to convert
    # x*inf (inf or NaN) to int8: undefined in C, 0 from llama.cpp on x86 (checked by the
    # tests); id = 0 gives that 0 on purpose. The f16 scale is 0 there, so the block decodes
    # to zeros either way.
    np.copyto(inv, 0, where=np.isinf(inv, out=s.zero[:nb]))
    a, b = s.a[:x.size], s.b[:x.size]
    y = b.reshape(nb, F.QK8_0)
    np.multiply(x.reshape(nb, F.QK8_0), inv[:, None], out=y)
    # roundf(y) = trunc(y + copysign(HALF_BELOW, y)), exactly (see formats.HALF_BELOW_BITS)
    t = a.view(np.uint32)
    np.bitwise_and(b.view(np.uint32), F.F32_SIGN, out=t)
    np.bitwise_or(t, F.HALF_BELOW_BITS, out=t)
    np.add(b, a, out=b)
    np.copyto(blocks[:, 2:].view(np.int8), y, casting="unsafe")  # float -> int truncates


def _block_amax(raw: np.ndarray, stored: str, s: _Scratch, nb: int) -> np.ndarray:
    """max |value| of each block of 32, as float32 (NaN if the block has one).

    Worked on the stored bits with the sign cleared: for floats of one sign the bit patterns
    sort as the values do (NaNs above infinity), and 16-bit stored values then take half the
    memory traffic. Maxima of the windows of 2, 4, 8, then 16 values starting at each index:
    four long passes, where a per-block reduction costs numpy a call per block. A window only
    reads values of its own 16, so the stale tail entries are never used."""
    m = raw.size
    if raw.itemsize == 2:
        a, b, top = s.a.view(np.uint16)[:m], s.b.view(np.uint16)[:m], s.top.view(np.uint16)[:nb]
        np.bitwise_and(raw.view(np.uint16), F.F16_MAGNITUDE, out=a)  # BF16 shares F16's sign bit
    else:
        a, b, top = s.a.view(np.uint32)[:m], s.b.view(np.uint32)[:m], s.top[:nb]
        np.bitwise_and(raw.view(np.uint32), F.F32_MAGNITUDE, out=a)
    np.maximum(a[:-1], a[1:], out=b[:-1])
    np.maximum(b[:-2], b[2:], out=a[:-2])
    np.maximum(a[:-4], a[4:], out=b[:-4])
    np.maximum(b[:-8], b[8:], out=a[:-8])
    np.maximum(a[0::F.QK8_0], a[F.QK8_0 // 2::F.QK8_0], out=top)
    return _decode(top.view(F.SAFETENSORS_DTYPES[stored]), stored, s.amax[:nb])


_ENCODERS = {"F32": _f32, "F16": _f16, "BF16": _bf16, "Q8_0": _q8_0}


_TABLES: dict[tuple[str, str], np.ndarray] = {}
_TABLES_LOCK = threading.Lock()


def _table(stored: str, ggml: str) -> np.ndarray:
    """uint16 output for each of the 65536 stored 16-bit patterns, made on first use."""
    table = _TABLES.get((stored, ggml))
    if table is None:
        with _TABLES_LOCK:
            table = _TABLES.get((stored, ggml))
            if table is None:
                table = _TABLES[(stored, ggml)] = _build_table(stored, ggml)
    return table


def _build_table(stored: str, ggml: str) -> np.ndarray:
    # through the float32 path, so the table holds by construction what that path gives
    values = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(F.SAFETENSORS_DTYPES[stored])
    out = np.empty(2 << 16, np.uint8)
    s = _scratch
    for i in range(0, values.size, CHUNK):
        raw = values[i:i + CHUNK]
        x = _decode(raw, stored, s.x[:raw.size])
        _ENCODERS[ggml](x, out[2 * i:2 * (i + x.size)], s, raw, stored)
    return out.view(np.uint16)
