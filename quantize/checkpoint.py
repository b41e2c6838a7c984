"""Reading a Hugging Face checkpoint: config, shard index and safetensors, without loading it.

Tensors are read in row blocks with positioned reads into one reusable buffer, so memory
stays flat whatever the model size (a memory map would count every page touched as
resident). BF16 and FP8 (e4m3, with DeepSeek's 128x128 ``weight_scale_inv`` block scales)
are decoded to float32 block by block.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from quantize.errors import ConvertError

INDEX_NAME = "model.safetensors.index.json"
FP8_BLOCK = 128
SCALE_SUFFIX = "_scale_inv"  # "x.weight" is scaled by "x.weight_scale_inv"

# safetensors dtype -> (numpy dtype of the stored bytes, item size)
_DTYPES: dict[str, tuple[Any, int]] = {
    "F32": (np.float32, 4), "F16": (np.float16, 2), "BF16": (np.uint16, 2),
    "F8_E4M3": (np.uint8, 1),
}


def _fp8_e4m3_table() -> np.ndarray:
    """float32 value of each of the 256 e4m3fn bytes (no infinities; 0x7f/0xff are NaN)."""
    b = np.arange(256)
    sign = np.where(b & 0x80, -1.0, 1.0)
    exp = (b >> 3) & 0xF
    man = b & 0x7
    val = np.where(exp == 0, man / 8.0 * 2.0 ** -6, (1 + man / 8.0) * 2.0 ** (exp - 7.0))
    val = sign * val
    val[(b & 0x7F) == 0x7F] = np.nan
    return val.astype(np.float32)


_FP8 = _fp8_e4m3_table()


@dataclass(frozen=True)
class TensorEntry:
    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offset of the data in the file
    nbytes: int

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def row_elements(self) -> int:
        n = 1
        for d in self.shape[1:]:
            n *= d
        return n


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise ConvertError(f"{folder} has no config.json: give the folder of a Hugging Face "
                           "checkpoint (config.json, *.safetensors, tokenizer.json)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConvertError(f"{path} is not valid JSON ({err}): re-download the checkpoint") from None
    if not isinstance(config, dict):
        raise ConvertError(f"{path} is not a JSON object: re-download the checkpoint")
    return config


def _read_header(path: Path) -> dict[str, TensorEntry]:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ConvertError(f"{path.name} is truncated (no safetensors header): re-download it")
            (length,) = struct.unpack("<Q", head)
            if length > min(size - 8, 100 << 20):
                raise ConvertError(f"{path.name} is not a valid safetensors file (header length "
                                   f"{length} for a {size}-byte file): re-download it")
            raw = f.read(length)
    except OSError as err:
        raise ConvertError(f"cannot read {path}: {err.strerror}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ConvertError(f"{path.name} has a corrupt safetensors header: re-download it") from None
    base = 8 + length
    out: dict[str, TensorEntry] = {}
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = info["dtype"]
            shape = tuple(int(d) for d in info["shape"])
            begin, stop = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ConvertError(f"{path.name}: malformed entry for tensor {name}: re-download it") from None
        if dtype not in _DTYPES:
            raise ConvertError(f"{path.name}: tensor {name} has dtype {dtype}; supported: "
                               f"{', '.join(_DTYPES)}")
        count = 1
        for d in shape:
            count *= d
        if stop - begin != count * _DTYPES[dtype][1] or begin < 0:
            raise ConvertError(f"{path.name}: tensor {name} has inconsistent offsets: re-download it")
        end = max(end, stop)
        out[name] = TensorEntry(name, path, dtype, shape, base + begin, stop - begin)
    if base + end > size:
        raise ConvertError(f"{path.name} is truncated ({size} bytes, its header needs {base + end}): "
                           "re-download it")
    return out


class Checkpoint:
    """The tensors of a checkpoint folder (one or many safetensors files)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.config = read_config(folder)
        self.entries: dict[str, TensorEntry] = {}
        for path in self._shards():
            for name, entry in _read_header(path).items():
                self.entries[name] = entry

    def _shards(self) -> list[Path]:
        index = self.folder / INDEX_NAME
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                files = sorted(set(weight_map.values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                raise ConvertError(f"{index} is malformed: re-download the checkpoint") from None
            missing = [f for f in files if not (self.folder / f).is_file()]
            if missing:
                raise ConvertError(f"{len(missing)} shard(s) listed in {INDEX_NAME} are missing "
                                   f"(first: {missing[0]}): download the whole checkpoint")
            return [self.folder / f for f in files]
        files = sorted(self.folder.glob("*.safetensors"))
        if not files:
            raise ConvertError(f"{self.folder} has no *.safetensors weights (.bin checkpoints are "
                               "not supported: convert them to safetensors first)")
        return files

    @property
    def total_bytes(self) -> int:
        return sum(e.nbytes for e in self.entries.values())

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name].shape

    def has(self, name: str) -> bool:
        return name in self.entries

    def source_dtype(self) -> str:
        """The dtype most of the weights are stored in."""
        sizes: dict[str, int] = {}
        for e in self.entries.values():
            sizes[e.dtype] = sizes.get(e.dtype, 0) + e.nbytes
        return max(sizes, key=sizes.get) if sizes else "F32"

    def block_rows(self, name: str, rows_per_block: int) -> list[tuple[int, int]]:
        """(first row, row count) of each block ``iter_rows`` / ``read_rows`` use."""
        entry = self.entries[name]
        if len(entry.shape) <= 1:
            return [(0, 1)]
        if entry.dtype == "F8_E4M3":  # whole 128-row scale tiles per block
            rows_per_block = max(FP8_BLOCK, rows_per_block // FP8_BLOCK * FP8_BLOCK)
        return [(r0, min(rows_per_block, entry.rows - r0)) for r0 in range(0, entry.rows, rows_per_block)]

    def read_rows(self, name: str, row0: int, nrows: int) -> np.ndarray:
        """float32 rows [row0, row0 + nrows) (a 1-D tensor whole); thread-safe."""
        entry = self.entries[name]
        if len(entry.shape) <= 1:
            return self._read(entry, 0, 1).reshape(entry.shape)
        block = self._read(entry, row0, nrows).reshape((nrows, *entry.shape[1:]))
        if entry.dtype == "F8_E4M3":
            scale = self.entries.get(name + SCALE_SUFFIX)
            if scale is None:
                raise ConvertError(f"FP8 tensor {name} has no {name + SCALE_SUFFIX}: the checkpoint "
                                   "is incomplete")
            block = _apply_block_scales(block, self._read(scale, 0, scale.rows).reshape(scale.shape), row0)
        return block

    def iter_rows(self, name: str, rows_per_block: int) -> Iterator[np.ndarray]:
        """float32 blocks of whole rows (a 1-D tensor comes as one block)."""
        for r0, n in self.block_rows(name, rows_per_block):
            yield self.read_rows(name, r0, n)

    def read(self, name: str) -> np.ndarray:
        """A whole (small) tensor as float32."""
        entry = self.entries[name]
        return np.concatenate(list(self.iter_rows(name, max(1, entry.rows)))) if len(entry.shape) > 1 \
            else next(self.iter_rows(name, 1))

    def _read(self, entry: TensorEntry, row0: int, nrows: int) -> np.ndarray:
        np_dtype, item = _DTYPES[entry.dtype]
        row_bytes = entry.row_elements * item if len(entry.shape) > 1 else entry.nbytes
        nbytes = nrows * row_bytes
        raw = np.empty(nbytes // item, dtype=np_dtype)
        fd = os.open(entry.file, os.O_RDONLY)
        try:
            view = memoryview(raw).cast("B")
            got = 0
            while got < nbytes:
                n = os.preadv(fd, [view[got:]], entry.start + row0 * row_bytes + got)
                if n <= 0:
                    raise ConvertError(f"{entry.file.name} ended early while reading {entry.name}: "
                                       "re-download it")
                got += n
        finally:
            os.close(fd)
        return decode(raw, entry.dtype)


def decode(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Stored values -> float32."""
    if dtype == "F32":
        return raw
    if dtype == "F16":
        return raw.astype(np.float32)
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    if dtype == "F8_E4M3":
        return _FP8[raw]
    raise ConvertError(f"unsupported dtype {dtype}")


def _apply_block_scales(block: np.ndarray, scales: np.ndarray, row0: int) -> np.ndarray:
    """Multiply each 128x128 tile by its scale (scales are [ceil(rows/128), ceil(cols/128)])."""
    rows, cols = block.shape
    s = scales[row0 // FP8_BLOCK: row0 // FP8_BLOCK + -(-rows // FP8_BLOCK)]
    full = np.repeat(np.repeat(s, FP8_BLOCK, axis=0)[:rows], FP8_BLOCK, axis=1)[:, :cols]
    return block * full
