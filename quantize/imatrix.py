"""Reading an importance matrix file far enough to refuse a bad one with a clear message.

llama-imatrix writes GGUF (``general.type = imatrix``; per weight ``<name>.in_sum2`` and
``<name>.counts``) or, with ``--output-format dat``, the older binary layout. llama.cpp's
own loader falls back to that older layout for anything that is not a valid GGUF and trusts
its length fields, so a damaged file can make it allocate gigabytes or abort: we check the
structure here first and return the weight names the matrix covers.
"""

from __future__ import annotations

import struct
from pathlib import Path

from quantize.errors import ConvertError

HOW_TO_MAKE = "make one with llama-imatrix -m MODEL-F16.gguf -f TEXT.txt -o imatrix.gguf"
_MAX_NAME = 1024  # bytes; GGUF tensor names are far shorter
_GGUF_KEYS = ("imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size")


def imatrix_entries(path: Path) -> set[str]:
    """The weight names ``path`` holds data for; ConvertError if it is not a usable matrix."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as err:
        raise ConvertError(f"cannot read importance matrix {path}: {err.strerror or err}") from None
    if size == 0:
        raise ConvertError(f"importance matrix {path} is empty: {HOW_TO_MAKE}")
    if magic == b"GGUF":
        return _gguf_entries(path, size)
    return _legacy_entries(path, size)


def _gguf_entries(path: Path, size: int) -> set[str]:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
        tensors = list(reader.tensors)
    except Exception:  # the gguf package raises many kinds on a damaged header
        raise ConvertError(f"importance matrix {path} is a damaged GGUF (truncated?): {HOW_TO_MAKE}") from None
    if any(t.data_offset + t.n_bytes > size for t in tensors):
        raise ConvertError(f"importance matrix {path} is truncated: {HOW_TO_MAKE}")
    kind = reader.fields.get("general.type")
    kind = kind.contents() if kind is not None else None
    if kind not in (None, "imatrix"):
        raise ConvertError(f"{path} is a GGUF of type {kind!r}, not an importance matrix: {HOW_TO_MAKE}")
    # llama-quantize refuses a GGUF matrix without these ("missing imatrix metadata")
    missing = [k for k in _GGUF_KEYS if k not in reader.fields]
    if missing:
        raise ConvertError(f"{path} is a GGUF without {', '.join(missing)}, not an importance matrix: "
                           f"{HOW_TO_MAKE}")
    sums = {t.name[: -len(".in_sum2")] for t in tensors if t.name.endswith(".in_sum2")}
    counts = {t.name[: -len(".counts")] for t in tensors if t.name.endswith(".counts")}
    if not sums or sums != counts:
        raise ConvertError(f"importance matrix {path} has no complete entries (sums and counts): "
                           f"{HOW_TO_MAKE}")
    return sums


def _legacy_entries(path: Path, size: int) -> set[str]:
    """The pre-GGUF layout: int32 count, then per entry int32 name length, name, int32 calls,
    int32 value count, float32 values; an optional trailer (chunk count, dataset) follows."""
    bad = ConvertError(f"{path} is not an importance matrix (neither GGUF nor llama-imatrix's "
                       f".dat layout, or truncated): {HOW_TO_MAKE}")
    names: set[str] = set()
    with open(path, "rb") as f:
        def int32() -> int:
            raw = f.read(4)
            if len(raw) != 4:
                raise bad
            return struct.unpack("<i", raw)[0]

        n_entries = int32()
        # each entry takes at least 16 bytes: a count beyond that is not this format
        if n_entries < 1 or 4 + 16 * n_entries > size:
            raise bad
        for _ in range(n_entries):
            length = int32()
            if not 0 < length <= _MAX_NAME:
                raise bad
            raw = f.read(length)
            try:
                name = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise bad from None
            int32()  # calls
            n_values = int32()
            if len(raw) != length or n_values < 1 or f.tell() + 4 * n_values > size:
                raise bad
            f.seek(4 * n_values, 1)
            names.add(name)
    return names
