"""Output types: the names a user may ask for and how each one is produced.

Kept apart from the mechanics: adding a type is a row here.
"""

from __future__ import annotations

# written by our own streaming writer: name -> (GGUF type of 2-D weights, llama ftype id)
STREAMED: dict[str, tuple[str, int]] = {
    "F32": ("F32", 0),
    "F16": ("F16", 1),
    "BF16": ("BF16", 32),
    "Q8_0": ("Q8_0", 7),
}

# Bits per weight below are what each type's mix of tensor types comes to on a real model
# (the output size estimate here; r1local's planner sizes unlisted files with the same table).

# produced by llama.cpp's quantizer from an F16/BF16 intermediate -> bits per weight
LLAMA_QUANTS: dict[str, float] = {
    "Q2_K": 3.35, "Q3_K_S": 3.5, "Q3_K_M": 3.91, "Q3_K_L": 4.27,
    "Q4_0": 4.55, "Q4_1": 5.0, "Q4_K_S": 4.58, "Q4_K_M": 4.89,
    "Q5_0": 5.54, "Q5_1": 6.0, "Q5_K_S": 5.54, "Q5_K_M": 5.7,
    "Q6_K": 6.59, "IQ4_NL": 4.5, "IQ4_XS": 4.32,
}

# need an importance matrix (llama.cpp refuses or produces garbage without one)
IMATRIX_QUANTS: dict[str, float] = {
    "IQ1_S": 1.78, "IQ1_M": 1.95, "IQ2_XXS": 2.38, "IQ2_XS": 2.31, "IQ2_S": 2.5, "IQ2_M": 2.93,
    "IQ3_XXS": 3.21, "IQ3_XS": 3.3, "IQ3_S": 3.44, "IQ3_M": 3.70,
}

SUPPORTED_QUANTS: tuple[str, ...] = (*STREAMED, *LLAMA_QUANTS, *IMATRIX_QUANTS)
QUANTIZATION_VERSION = 2  # GGML_QNT_VERSION of the block formats we write


def canonical(name: str) -> str | None:
    """The table spelling of a quant name given in any case, or None."""
    wanted = name.strip().upper()
    return wanted if wanted in SUPPORTED_QUANTS else None


def bits_per_weight(quant: str) -> float:
    if quant in STREAMED:
        return {"F32": 32.0, "F16": 16.0, "BF16": 16.0, "Q8_0": 8.5}[quant]
    return LLAMA_QUANTS.get(quant) or IMATRIX_QUANTS[quant]
