"""Bit-level facts of the number formats read from checkpoints and written to GGUF.

Constants only; the code that uses them is in kernels.py (and checkpoint.py for FP8). Where a
rule is ggml's, it is the one in ggml's reference functions (ggml-impl.h / ggml-quants.c),
which llama.cpp's own quantizer uses, so our output is byte for byte what llama.cpp writes.
"""

from __future__ import annotations

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

# --- what a safetensors file may hold: dtype name -> numpy dtype of the stored bytes ---------
# (BF16 has no numpy type: its raw bits are read as uint16)
SAFETENSORS_DTYPES: dict[str, np.dtype] = {
    "F32": np.dtype(np.float32), "F16": np.dtype(np.float16), "BF16": np.dtype(np.uint16),
    "F8_E4M3": np.dtype(np.uint8),
}

# --- GGUF tensor types we write: name -> (ggml type id, values per block, bytes per block) --
# The ids and block sizes are gguf-py's (llama.cpp's own tables), not typed in again here.
QK8_0 = 32  # Q8_0 values per block
Q8_0_BYTES = 2 + QK8_0  # f16 scale, then the int8 values
# Every type gguf-py knows: F32/F16/BF16/Q8_0 we encode ourselves, the rest are written by
# ggml's own kernels (onepass.py) in the types llama.cpp's quantizer picks.
GGML_TYPES: dict[str, tuple[int, int, int]] = {
    t.name: (t.value, *GGML_QUANT_SIZES[t]) for t in GGMLQuantizationType if t in GGML_QUANT_SIZES
}
assert GGML_TYPES["Q8_0"][1:] == (QK8_0, Q8_0_BYTES)

# --- GGUF metadata value types: the ids the file format gives them ---------------------------
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
# the fixed-size ones -> their little-endian struct format (STRING and ARRAY have a length)
GGUF_SCALAR_FORMATS: dict[int, str] = {
    UINT8: "<B", INT8: "<b", UINT16: "<H", INT16: "<h", UINT32: "<I", INT32: "<i",
    FLOAT32: "<f", BOOL: "<?", UINT64: "<Q", INT64: "<q", FLOAT64: "<d",
}

# --- float32 bit patterns ------------------------------------------------------------------
F32_SIGN = np.uint32(0x8000_0000)
F32_MAGNITUDE = np.uint32(0x7FFF_FFFF)

# --- BF16: the top half of a float32 -------------------------------------------------------
BF16_SHIFT = 16
BF16_ROUND = np.uint32(0x7FFF)  # + the kept half's lowest bit: round to nearest, ties to even
BF16_QUIET = np.uint16(0x0040)  # ggml sets this bit on a NaN (keeps it a quiet NaN)

# --- F16 -----------------------------------------------------------------------------------
F16_SIGN = np.uint16(0x8000)
F16_MAGNITUDE = np.uint16(0x7FFF)  # (BF16's too)
F16_OVERFLOW = np.float32(65520)  # the smallest float32 that rounds to f16 infinity
F16_NAN = np.uint16(0x7E00)  # ggml writes every NaN as this (sign kept), payload dropped

# --- Q8_0: per block, f16 scale d = amax / 127, then 32 int8 roundf(x * (1/d)) ----------------
Q8_0_LEVELS = np.float32(127)  # (1 << 7) - 1
# roundf (half away from zero) is trunc(y + copysign(HALF_BELOW, y)) for every finite float32
# y: HALF_BELOW = 0.5 - 2**-25 cannot carry a y below n + 0.5 up to n + 1, and the float32 sum
# of n + 0.5 and it still rounds to n + 1. With 0.5 itself, 0.49999997 would give 1 (roundf: 0).
HALF_BELOW_BITS = np.nextafter(np.float32(0.5), np.float32(0)).view(np.uint32)

# --- FP8 e4m3fn (DeepSeek's weights): 4 exponent bits (bias 7), 3 mantissa bits, no inf ------
FP8_BLOCK = 128  # "x.weight_scale_inv" scales 128x128 tiles of "x.weight"


def _fp8_e4m3_table() -> np.ndarray:
    """float32 value of each of the 256 e4m3fn bytes (0x7f/0xff are NaN)."""
    b = np.arange(256)
    sign = np.where(b & 0x80, -1.0, 1.0)
    exp = (b >> 3) & 0xF
    man = b & 0x7
    val = np.where(exp == 0, man / 8.0 * 2.0 ** -6, (1 + man / 8.0) * 2.0 ** (exp - 7.0))
    val = sign * val
    val[(b & 0x7F) == 0x7F] = np.nan
    return val.astype(np.float32)


FP8_E4M3 = _fp8_e4m3_table()
