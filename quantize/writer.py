"""A streaming GGUF (v3) writer: header and tensor table first, then data block by block.

Every tensor's shape and type is known before any data is read (from the safetensors
headers), so the whole header is written up front and each tensor's bytes are appended as
they are converted: nothing bigger than one row block is ever held in memory.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from quantize.formats import ARRAY, GGML_TYPES, GGUF_SCALAR_FORMATS, STRING
from quantize.kernels import encoded_size

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
ALIGNMENT = 32
WRITEBACK_BYTES = 64 << 20  # with writeback=True: hand the disk what was written, this often


@dataclass(frozen=True)
class KV:
    key: str
    value: Any
    vtype: int
    etype: int | None = None  # element type of an ARRAY


@dataclass(frozen=True)
class TensorSlot:
    name: str
    shape: tuple[int, ...]  # numpy order (rows first)
    ggml: str  # a key of formats.GGML_TYPES

    @property
    def nbytes(self) -> int:
        return encoded_size(math.prod(self.shape), self.ggml)


def _string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _value(vtype: int, value: Any, etype: int | None) -> bytes:
    if vtype == STRING:
        return _string(value)
    if vtype == ARRAY:
        assert etype is not None
        head = struct.pack("<IQ", etype, len(value))
        if etype == STRING:
            return head + b"".join(_string(v) for v in value)
        fmt = GGUF_SCALAR_FORMATS[etype]
        return head + np.asarray(value, dtype=np.dtype(fmt)).tobytes()
    return struct.pack(GGUF_SCALAR_FORMATS[vtype], value)


def _pad(n: int) -> int:
    return -n % ALIGNMENT


class GGUFStreamWriter:
    """Write the header once, then ``write(block)`` tensor data in the declared order.

    ``writeback``: every WRITEBACK_BYTES, ask the kernel to drop what was written
    (POSIX_FADV_DONTNEED): dirty pages are sent to the disk now, and pages of the window
    before, written back by then, leave the page cache. Otherwise the kernel holds GBs dirty
    until the caller's fsync, which then waits for all of it, and the page cache fills with a
    file nobody is reading. Not for a file about to be read back."""

    def __init__(self, f: BinaryIO, kvs: list[KV], slots: list[TensorSlot], writeback: bool = False) -> None:
        self.f = f
        self.slots = slots
        self._index = 0
        self._written = 0  # bytes of the current tensor so far
        self._fd = f.fileno() if writeback and hasattr(os, "posix_fadvise") else None
        head = bytearray(GGUF_MAGIC + struct.pack("<IQQ", GGUF_VERSION, len(slots), len(kvs)))
        for kv in kvs:
            head += _string(kv.key) + struct.pack("<I", kv.vtype) + _value(kv.vtype, kv.value, kv.etype)
        offset = 0
        for slot in slots:
            dims = tuple(reversed(slot.shape))  # GGUF lists the fastest-varying dimension first
            head += _string(slot.name) + struct.pack("<I", len(dims))
            head += struct.pack(f"<{len(dims)}Q", *dims)
            head += struct.pack("<IQ", GGML_TYPES[slot.ggml][0], offset)
            offset += slot.nbytes + _pad(slot.nbytes)
        head += b"\0" * _pad(len(head))
        f.write(head)
        self.data_bytes = offset
        self._pos = self._handed = self._prev = len(head)  # offsets: written; windows advised

    def write(self, data: bytes | np.ndarray) -> int:
        slot = self.slots[self._index]
        n = self.f.write(memoryview(data).cast("B") if isinstance(data, np.ndarray) else data)
        self._written += n
        if self._written > slot.nbytes:
            raise ValueError(f"{slot.name}: wrote {self._written} bytes, expected {slot.nbytes}")
        self._pos += n
        if self._written == slot.nbytes:
            self._pos += self.f.write(b"\0" * _pad(slot.nbytes))
            self._index += 1
            self._written = 0
        if self._fd is not None and self._pos - self._handed >= WRITEBACK_BYTES:
            self.f.flush()
            os.posix_fadvise(self._fd, self._prev, self._pos - self._prev, os.POSIX_FADV_DONTNEED)
            self._prev, self._handed = self._handed, self._pos
        return n

    def finish(self) -> None:
        if self._index != len(self.slots):
            raise ValueError(f"only {self._index} of {len(self.slots)} tensors were written")
