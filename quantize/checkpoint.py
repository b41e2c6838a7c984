"""Reading a Hugging Face checkpoint: config, shard index and safetensors, without loading it.

Tensors are read in row blocks with positioned reads (into the caller's buffer, if given), so
memory stays flat whatever the model size (a memory map would count every page touched as
resident). Rows come back as stored (F32, F16, or BF16 bits): decoding them is fused into
the encoders (kernels.py). FP8 (e4m3, with DeepSeek's 128x128 ``weight_scale_inv`` block
scales) is the exception: it is dequantized here, to float32.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantize.errors import ConvertError
from quantize.formats import FP8_BLOCK, FP8_E4M3, SAFETENSORS_DTYPES
from quantize.kernels import encode

INDEX_NAME = "model.safetensors.index.json"
# Every file of a hub checkpoint a conversion reads, besides the weights themselves (the index
# names those; without an index, every top-level *.safetensors). The one list for both ways a
# checkpoint is downloaded: `quantize` of a repo id, and r1local's `pull --from-source`.
CHECKPOINT_FILES = (
    "config.json",  # the architecture and its sizes (archs/)
    INDEX_NAME,  # which shard holds each tensor
    "tokenizer.json",  # vocabulary, merges, added tokens, pre-tokenizer (vocab.py)
    "tokenizer_config.json",  # special tokens, add_bos/add_eos, the chat template if inline
    "chat_template.jinja",  # the chat template where transformers >= 4.49 saves it apart
)
SCALE_SUFFIX = "_scale_inv"  # "x.weight" is scaled by "x.weight_scale_inv"


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
        if dtype not in SAFETENSORS_DTYPES:
            raise ConvertError(f"{path.name}: tensor {name} has dtype {dtype}; supported: "
                               f"{', '.join(SAFETENSORS_DTYPES)}")
        count = 1
        for d in shape:
            count *= d
        if stop - begin != count * SAFETENSORS_DTYPES[dtype].itemsize or begin < 0:
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
        """(first row, row count) of each block ``read_rows`` should be asked for."""
        entry = self.entries[name]
        if len(entry.shape) <= 1:
            return [(0, 1)]
        if entry.dtype == "F8_E4M3":  # whole 128-row scale tiles per block
            rows_per_block = max(FP8_BLOCK, rows_per_block // FP8_BLOCK * FP8_BLOCK)
        return [(r0, min(rows_per_block, entry.rows - r0)) for r0 in range(0, entry.rows, rows_per_block)]

    def read_rows(self, name: str, row0: int, nrows: int,
                  into: np.ndarray | None = None) -> tuple[np.ndarray, str]:
        """Rows [row0, row0 + nrows) (a 1-D tensor whole) as stored, and how they are stored:
        "F32", "F16" or "BF16" (raw bits as uint16); FP8 comes dequantized, as "F32".
        ``into``: a uint8 array, big enough, to read into (the rows may then be a view of it).
        Thread-safe."""
        entry = self.entries[name]
        if len(entry.shape) <= 1:
            block = self._read(entry, 0, 1, into).reshape(entry.shape)
        else:
            block = self._read(entry, row0, nrows, into).reshape((nrows, *entry.shape[1:]))
        if entry.dtype != "F8_E4M3":
            return block, entry.dtype
        values = FP8_E4M3[block]
        if block.ndim < 2:
            return values, "F32"
        scale = self.entries.get(name + SCALE_SUFFIX)
        if scale is None:
            raise ConvertError(f"FP8 tensor {name} has no {name + SCALE_SUFFIX}: the checkpoint "
                               "is incomplete")
        raw, stored = self.read_rows(scale.name, 0, scale.rows)
        scales = encode(raw, "F32", stored).view(np.float32).reshape(raw.shape)
        return _apply_block_scales(values, scales, row0), "F32"

    def _read(self, entry: TensorEntry, row0: int, nrows: int, into: np.ndarray | None) -> np.ndarray:
        np_dtype = SAFETENSORS_DTYPES[entry.dtype]
        row_bytes = entry.row_elements * np_dtype.itemsize if len(entry.shape) > 1 else entry.nbytes
        nbytes = nrows * row_bytes
        if into is None:
            raw = np.empty(nbytes // np_dtype.itemsize, dtype=np_dtype)
        elif into.dtype != np.uint8 or not into.flags.c_contiguous or into.size < nbytes:
            raise ValueError(f"into must be a contiguous uint8 array of at least {nbytes} bytes")
        else:
            raw = into[:nbytes].view(np_dtype)
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
        return raw


def _apply_block_scales(block: np.ndarray, scales: np.ndarray, row0: int) -> np.ndarray:
    """Multiply each 128x128 tile by its scale (scales are [ceil(rows/128), ceil(cols/128)])."""
    rows, cols = block.shape
    s = scales[row0 // FP8_BLOCK: row0 // FP8_BLOCK + -(-rows // FP8_BLOCK)]
    full = np.repeat(np.repeat(s, FP8_BLOCK, axis=0)[:rows], FP8_BLOCK, axis=1)[:, :cols]
    return block * full
