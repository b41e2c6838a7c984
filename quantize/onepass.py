"""K-quants (and the other llama.cpp types that need no importance matrix) in one pass.

The two-pass way writes the whole model as F16/BF16, then llama.cpp's quantizer reads it
back: for the 671B R1 a 1.3 TB intermediate and two full passes. Here, instead:

1. llama.cpp itself decides each tensor's type: its quantizer runs in ``dry_run`` mode over
   a *skeleton* of the intermediate (the same header, the data left as a sparse hole, so it
   costs no disk and nothing is read), and its log names the type it would give each tensor
   (the mixture rules, the MoE rules, the fallbacks for rows not a multiple of 256).
2. The converter then streams the rows once: rounded to the intermediate's F16/BF16, as the
   two-pass file would hold them, widened to float32 as llama.cpp does, and quantized by
   ggml's own ``ggml_quantize_chunk`` from the wheel's libggml-base. Rows are quantized one
   by one, so the bytes equal llama-quantize's on our F16/BF16 file.

With an importance matrix the dry run gets it too (some of llama.cpp's type rules depend on
having one), and each tensor's rows are quantized with its weights exactly as llama-quantize
passes them: the matrix's entry for the tensor, one run of columns per expert of a 3-D tensor.
"""

from __future__ import annotations

import ctypes
import os
import re
from contextlib import suppress
from pathlib import Path

import numpy as np

from quantize import formats as F
from quantize.errors import ConvertError
from quantize.kernels import encode
from quantize.writer import KV, GGUFStreamWriter, TensorSlot

# one line per tensor of llama.cpp's dry-run log:
# "[  27/  52] blk.1.ffn_down_exps.weight - [ 256, 256, 8, 1], type = bf16, size = 1.00 MiB -> 0.28 MiB (q4_K)"
# (without " -> ... (type)" when the tensor keeps its type)
_LINE = re.compile(r"^\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[[^\]]*\], type =\s*(\w+), size =[^(\n]*(?:\((\w+)\))?\s*$")
# ggml's type names as its log spells them -> ours (gguf-py's)
_BY_LOG_NAME = {name.lower(): name for name in F.GGML_TYPES}


def plan_types(kvs: list[KV], slots: list[TensorSlot], quant: str, scratch: Path,
               threads: int | None = None, imatrix=None) -> dict[str, str]:
    """Tensor name -> the type llama.cpp's quantizer gives it for ``quant`` (with ``imatrix``,
    an imatrix.Imatrix, if given), from a dry run over a skeleton of the intermediate
    ``slots`` (written at ``scratch``, then removed)."""
    from quantize.llamaquant import failure_reason, run_quantizer

    try:
        with open(scratch, "wb") as f:
            writer = GGUFStreamWriter(f, kvs, slots)
            f.truncate(f.tell() + writer.data_bytes)  # a hole: llama.cpp's dry run reads none of it
        rc, text = run_quantizer(scratch, Path(os.devnull), quant, threads, dry_run=True,
                                 imatrix=imatrix)
    finally:
        with suppress(OSError):
            scratch.unlink()
    if rc != 0:
        raise ConvertError(f"llama.cpp's quantizer refused {quant}: {failure_reason(text) or f'code {rc}'}")
    types: dict[str, str] = {}
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m:
            name, current, new = m.groups()
            types[name] = _BY_LOG_NAME[(new or current).lower()]
    missing = [s.name for s in slots if s.name not in types]
    if missing:
        raise ConvertError(f"llama.cpp's quantizer did not say which type {missing[0]} gets "
                           f"({len(missing)} tensor(s)): convert with --two-pass")
    return types


# llama.cpp's tensor_requires_imatrix: these types are garbage without weights (token_embd
# and output excepted); Q2_K only in Q2_K_S, which we do not offer
_NEEDS_WEIGHTS = {"IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_M", "IQ1_S"}
_TOKEN_EMBD = ("token_embd.weight", "per_layer_token_embd.weight")


def row_weights(slots: list[TensorSlot], via: dict[str, str], imatrix) -> dict[str, np.ndarray]:
    """Tensor name -> the importance weights its rows are quantized with, by llama-quantize's
    rules: only for a tensor whose type changes; none where the matrix lacks the tensor, or
    (token_embd only) has another size; any other size, or none for a type that needs them,
    is refused, as llama-quantize refuses it (here before any row is read)."""
    weights: dict[str, np.ndarray] = {}
    for s in slots:
        if s.ggml == via[s.name]:
            continue  # left as the intermediate holds it: copied, not quantized
        values = imatrix.data.get(s.name)
        experts = s.shape[0] if len(s.shape) == 3 else 1
        if values is not None and values.size != s.shape[-1] * experts:
            if s.name not in _TOKEN_EMBD:
                raise ConvertError(f"importance matrix {imatrix.path}: imatrix size {values.size} is "
                                   f"different from tensor size {s.shape[-1] * experts} for {s.name}: "
                                   "make the importance matrix with llama-imatrix from this same model")
            values = None
        if values is None:
            if s.ggml in _NEEDS_WEIGHTS and s.name not in (*_TOKEN_EMBD, "output.weight"):
                raise ConvertError(f"importance matrix {imatrix.path} has no entry for {s.name}, which "
                                   f"{s.ggml} cannot do without: make the importance matrix with "
                                   "llama-imatrix from this same model")
            continue
        weights[s.name] = values
    return weights


class _GGML:
    """ggml_quantize_chunk from the libggml-base that llama_cpp loads."""

    def __init__(self) -> None:
        import llama_cpp

        libdir = Path(llama_cpp.__file__).parent / "lib"
        names = sorted(libdir.glob("libggml-base.*")) + sorted(libdir.glob("ggml-base.*"))
        if not names:
            raise ConvertError(f"no libggml-base in {libdir}: reinstall llama-cpp-python (./install.sh)")
        lib = ctypes.CDLL(str(names[0]))
        fn = lib.ggml_quantize_chunk
        fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                       ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
        fn.restype = ctypes.c_size_t
        self.quantize_chunk = fn
        needs = lib.ggml_quantize_requires_imatrix
        needs.argtypes, needs.restype = [ctypes.c_int], ctypes.c_bool
        self.requires_imatrix = needs


_ggml: _GGML | None = None


def ggml() -> _GGML:
    global _ggml
    if _ggml is None:
        _ggml = _GGML()
    return _ggml


def widened(values: np.ndarray, stored: str, via: str) -> np.ndarray:
    """``values`` (as the checkpoint stores them) rounded to ``via`` (F16/BF16, the
    intermediate's type) and widened back to float32, as llama.cpp reads the intermediate."""
    raw = encode(values, via, stored)
    if via == "F16":
        return raw.view(np.float16).astype(np.float32)
    if via == "BF16":
        return (raw.view(np.uint16).astype(np.uint32) << F.BF16_SHIFT).view(np.float32)
    return raw.view(np.float32)


def quantize_rows(values: np.ndarray, stored: str, via: str, ggml_type: str, n_per_row: int,
                  out: np.ndarray, weights: np.ndarray | None = None, row0: int = 0,
                  rows_per_expert: int = 0) -> np.ndarray:
    """Rows of ``values`` -> ``ggml_type`` bytes (in ``out``), by ggml's own kernel.

    With ``weights`` (a tensor's importance weights), the rows are the tensor's from ``row0``
    on, and each expert's rows (``rows_per_expert`` of them; 0: one matrix) get that expert's
    run of ``n_per_row`` weights, as llama.cpp splits its chunks at expert boundaries."""
    src = np.ascontiguousarray(widened(values, stored, via)).reshape(-1)
    nrows = src.size // n_per_row
    type_id, block, size = F.GGML_TYPES[ggml_type]
    row_bytes = (n_per_row // block) * size
    nbytes = nrows * row_bytes
    dst = out[:nbytes]
    kernel = ggml()
    if weights is None and kernel.requires_imatrix(type_id):
        raise ConvertError(f"{ggml_type} needs an importance matrix (--imatrix FILE)")  # ggml would abort
    per = rows_per_expert or (row0 + nrows)
    got, row = 0, 0
    while row < nrows:
        at = row0 + row
        n = nrows - row if weights is None else min(nrows - row, per - at % per)
        w = None if weights is None else weights[(at // per) * n_per_row:].ctypes.data
        got += kernel.quantize_chunk(type_id, src[row * n_per_row:].ctypes.data,
                                     dst[row * row_bytes:].ctypes.data, 0, n, n_per_row, w)
        row += n
    if got != nbytes:
        raise ConvertError(f"ggml wrote {got} bytes for {nrows} rows of {ggml_type}, not {nbytes}")
    return dst
