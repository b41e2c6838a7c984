"""Reading an importance matrix file far enough to refuse a bad one with a clear message.

llama-imatrix writes GGUF (``general.type = imatrix``; per weight ``<name>.in_sum2`` and
``<name>.counts``) or, with ``--output-format dat``, the older binary layout. llama.cpp's
own loader falls back to that older layout for anything that is not a valid GGUF and trusts
its length fields, so a damaged file can make it allocate gigabytes or abort: we check the
structure here first and return the weight names the matrix covers.

:func:`load_imatrix` then reads the values the way llama-quantize does (its loader and its
normalisation, the same float32 arithmetic), so the one-pass converter hands ggml's kernels
the very weights llama-quantize would.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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


@dataclass
class Imatrix:
    """An importance matrix as llama-quantize hands it to llama.cpp: per weight name, the
    mean squared activation of each input column (one run of columns per expert)."""

    path: Path
    data: dict[str, np.ndarray] = field(default_factory=dict)  # name -> float32 values
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0

    def metadata(self) -> list[tuple[str, object, str]]:
        """The provenance keys llama-quantize records, as (key, value, "str" | "u32")."""
        # llama-quantize copies the strings into 128-byte override fields
        clip = lambda s: s.encode("utf-8")[:127].decode("utf-8", "ignore")  # noqa: E731
        keys: list[tuple[str, object, str]] = [("quantize.imatrix.file", clip(str(self.path)), "str")]
        if self.datasets:
            keys.append(("quantize.imatrix.dataset", clip(self.datasets[0]), "str"))
        keys.append(("quantize.imatrix.entries_count", len(self.data), "u32"))
        if self.chunk_count > 0:
            keys.append(("quantize.imatrix.chunks_count", self.chunk_count, "u32"))
        return keys


def load_imatrix(path: Path) -> Imatrix:
    """The checked matrix at ``path``, normalised as llama-quantize normalises it."""
    imatrix_entries(path)  # a clear refusal first
    with open(path, "rb") as f:
        magic = f.read(4)
    found = _load_gguf(path) if magic == b"GGUF" else _load_legacy(path)
    bad = [n for n, v in found.data.items() if not np.isfinite(v).all()]
    if bad:  # llama.cpp refuses these too ("imatrix contains non-finite value")
        raise ConvertError(f"importance matrix {path} holds non-finite values (for {bad[0]}): {HOW_TO_MAKE}")
    return found


def _load_gguf(path: Path) -> Imatrix:
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType

    reader = GGUFReader(path)
    out = Imatrix(path)
    ds = reader.fields.get("imatrix.datasets")
    if ds is not None and ds.types == [GGUFValueType.ARRAY, GGUFValueType.STRING]:
        out.datasets = [bytes(ds.parts[i]).decode("utf-8", "replace") for i in ds.data]
    chunks = reader.fields.get("imatrix.chunk_count")
    out.chunk_count = int(chunks.contents()) if chunks is not None else 0
    by_name = {t.name: t for t in reader.tensors}
    for name in sorted(n[: -len(".in_sum2")] for n in by_name if n.endswith(".in_sum2")):
        sums, counts = by_name[name + ".in_sum2"], by_name[name + ".counts"]
        if {sums.tensor_type, counts.tensor_type} != {GGMLQuantizationType.F32}:
            raise ConvertError(f"importance matrix {path}: the sums and counts of {name} are not F32: "
                               f"{HOW_TO_MAKE}")
        s = np.asarray(sums.data, np.float32).reshape(-1)
        # counts are rounded to whole numbers (std::lround), then divide as float32
        c = np.asarray(counts.data, np.float32).reshape(-1).astype(np.float64)
        c = (np.sign(c) * np.floor(np.abs(c) + 0.5)).astype(np.float32)
        per = s.size // c.size
        values = np.ones(s.size, np.float32)
        for j, count in enumerate(c):
            if count > 0:
                values[j * per:(j + 1) * per] = s[j * per:(j + 1) * per] / count
        out.data[name] = values
    return out


def _load_legacy(path: Path) -> Imatrix:
    """llama-imatrix's .dat layout: values are sums times calls, divided by the calls here."""
    out = Imatrix(path)
    with open(path, "rb") as f:
        blob = f.read()
    pos = 4
    (n_entries,) = struct.unpack_from("<i", blob, 0)
    for _ in range(n_entries):
        (length,) = struct.unpack_from("<i", blob, pos)
        name = blob[pos + 4:pos + 4 + length].split(b"\0")[0].decode("utf-8")
        pos += 4 + length
        ncall, nval = struct.unpack_from("<ii", blob, pos)
        pos += 8
        sums = np.frombuffer(blob, np.float32, nval, pos).copy()
        pos += 4 * nval
        out.data[name] = sums / np.float32(ncall) if ncall > 0 else sums
    if pos + 4 <= len(blob):  # the optional trailer: chunk count, then the dataset's name
        (out.chunk_count,) = struct.unpack_from("<i", blob, pos)
        if pos + 8 <= len(blob):
            (length,) = struct.unpack_from("<i", blob, pos + 4)
            if length > 0 and pos + 8 + length <= len(blob):
                raw = blob[pos + 8:pos + 8 + length].split(b"\0")[0]
                out.datasets.append(raw.decode("utf-8", "replace"))
    return out
