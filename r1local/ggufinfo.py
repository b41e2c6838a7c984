"""Read and validate GGUF headers without loading any weights; r1local's one home for GGUF
and ggml facts (value types, tensor types, file-type names, split-file naming).

Used before llama.cpp ever sees a file (a truncated or corrupt GGUF must give a clear
error, not a segfault), by the planner (real tensor sizes), and by the store. Works on a
file on disk or on the first bytes of a remote file. The numbers themselves are gguf-py's
(llama.cpp's own tables) and quantize/formats.py's: nothing is typed in twice.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from quantize import hparams
from quantize.formats import ARRAY as _ARRAY
from quantize.formats import GGUF_SCALAR_FORMATS
from quantize.formats import STRING as _STRING
from r1local.errors import ModelFileError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4

# GGUF metadata value types -> (struct format, size); strings and arrays are handled apart
_SCALARS = {t: (fmt, struct.calcsize(fmt)) for t, fmt in GGUF_SCALAR_FORMATS.items()}

# Encoder-only embedding models: no language-model head, so they embed (through
# r1local.embeddings) but cannot chat or complete.
ENCODER_ARCHITECTURES = frozenset({"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2",
                                   "jina-bert-v3", "modern-bert", "neo-bert", "eurobert"})
# Architectures this llama.cpp build is expected to run (the R1 family and the test models).
KNOWN_ARCHITECTURES = frozenset({
    "llama", "qwen2", "qwen3", "deepseek2", "qwen2moe", "qwen3moe", "mistral", "gemma",
    "gemma2", "gemma3", "phi3", "granite", "olmo", "starcoder2", "smollm3",
}) | ENCODER_ARCHITECTURES


class _Truncated(Exception):
    pass


class _NeedMore(ModelFileError):
    """The buffer ended inside the header but the file goes on: read more of it."""

    def __init__(self) -> None:
        super().__init__("the GGUF header did not fit in the bytes read; read more of the file")


@dataclass(frozen=True)
class ArraySummary:
    """A long array left unread (e.g. 152k token strings) when only sizes are needed."""

    element_type: int
    count: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF order: fastest-varying dimension first
    ggml_type: int
    offset: int  # relative to the start of the data section
    nbytes: int

    @property
    def type_name(self) -> str:
        return ggml_type_name(self.ggml_type)

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class GGUFHeader:
    path: str
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo]
    data_offset: int
    file_size: int | None
    alignment: int = DEFAULT_ALIGNMENT
    header_size: int = 0
    # key -> (GGUF value type, element type for arrays else None): lets a copy keep types
    value_types: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    # a split model (read_model_header): every part's path, in order; () for a whole file
    parts: tuple[str, ...] = ()

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_value(self, suffix: str, default: Any = None) -> Any:
        """`{arch}.{suffix}`, e.g. arch_value('block_count')."""
        return self.metadata.get(f"{self.architecture}.{suffix}", default)

    @property
    def quant(self) -> str:
        """The quant the file says it is (general.file_type), e.g. Q4_K_M; '?' if unknown."""
        return file_type_name(self.metadata.get("general.file_type"))

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def expected_size(self) -> int:
        """The smallest file size that holds every tensor."""
        end = max((t.offset + t.nbytes for t in self.tensors), default=0)
        return self.data_offset + end

    def tensor(self, name: str) -> TensorInfo | None:
        for t in self.tensors:
            if t.name == name:
                return t
        return None


def ggml_type_name(type_id: int) -> str:
    from gguf.constants import GGMLQuantizationType

    try:
        return GGMLQuantizationType(type_id).name
    except ValueError:
        return f"type{type_id}"


def ggml_type_id(name: str) -> int:
    """'f16' / 'Q8_0' -> llama.cpp's GGML_TYPE_* number (what a KV cache type is given as)."""
    from gguf.constants import GGMLQuantizationType

    return GGMLQuantizationType[name.upper()].value


def file_type_name(file_type: Any) -> str:
    """general.file_type (llama.cpp's LLAMA_FTYPE_*) -> the quant's name, e.g. Q4_K_M;
    '?' when the file says nothing or a number this gguf-py does not know."""
    from gguf.constants import LlamaFileType

    try:
        return LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except (ValueError, TypeError):
        return "?"


def _tensor_nbytes(name: str, shape: tuple[int, ...], type_id: int) -> int:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        qtype = GGMLQuantizationType(type_id)
        block, type_size = GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        raise ModelFileError(f"tensor '{name}' has unknown ggml type {type_id}") from None
    if shape and shape[0] % block:
        raise ModelFileError(
            f"tensor '{name}' row of {shape[0]} is not a multiple of its block size {block}"
        )
    n = 1
    for d in shape:
        n *= d
    return n // block * type_size


_U32 = struct.Struct("<I").unpack_from
_U64 = struct.Struct("<Q").unpack_from


class _Cursor:
    """Reads little-endian GGUF values from a bytes buffer (bytes, not a view, so that
    string slices are cheap copies and nothing pins a memory map)."""

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise _Truncated
        out = self.buf[self.pos:end]
        self.pos = end
        return out

    def u32(self) -> int:
        if self.pos + 4 > len(self.buf):
            raise _Truncated
        (v,) = _U32(self.buf, self.pos)
        self.pos += 4
        return v

    def u64(self) -> int:
        if self.pos + 8 > len(self.buf):
            raise _Truncated
        (v,) = _U64(self.buf, self.pos)
        self.pos += 8
        return v

    def string(self) -> str:
        return self.take(self.u64()).decode("utf-8", errors="replace")

    def strings(self, count: int, keep: bool) -> list[str]:
        # the vocabulary is 150k+ strings: one tight loop, no method calls per item
        buf, pos, size = self.buf, self.pos, len(self.buf)
        out: list[str] = []
        append = out.append
        for _ in range(count):
            if pos + 8 > size:
                raise _Truncated
            (n,) = _U64(buf, pos)
            pos += 8
            end = pos + n
            if end > size:
                raise _Truncated
            if keep:
                append(buf[pos:end].decode("utf-8", errors="replace"))
            pos = end
        self.pos = pos
        return out

    def value(self, vtype: int, max_array: int | None) -> Any:
        if vtype in _SCALARS:
            fmt, size = _SCALARS[vtype]
            return struct.unpack(fmt, self.take(size))[0]
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype = self.u32()
            count = self.u64()
            if etype not in _SCALARS and etype != _STRING:
                raise ModelFileError(f"metadata array has unknown element type {etype}")
            min_size = _SCALARS[etype][1] if etype in _SCALARS else 8
            if count * min_size > len(self.buf) - self.pos:
                raise _Truncated
            keep = max_array is None or count <= max_array
            if etype == _STRING:
                items = self.strings(count, keep)
            else:
                fmt, size = _SCALARS[etype]
                raw = self.take(count * size)
                items = list(struct.unpack(f"<{count}{fmt[1]}", raw)) if keep else []
            return items if keep else ArraySummary(etype, count)
        raise ModelFileError(f"metadata value has unknown type {vtype}")


def parse_header(
    buf: bytes,
    *,
    path: str = "<bytes>",
    file_size: int | None = None,
    max_array: int | None = None,
) -> GGUFHeader:
    """Parse a GGUF header from the leading bytes of a file.

    ``file_size`` is the full size of the file when known (``buf`` may hold only its start):
    then every tensor's extent is checked to lie inside it. ``max_array`` leaves longer
    metadata arrays unread (as ArraySummary), which keeps reading a 152k-token vocabulary
    cheap when only sizes are wanted.
    """
    cur = _Cursor(bytes(buf))
    name = Path(path).name
    try:
        magic = cur.take(4)
        if magic != GGUF_MAGIC:
            raise ModelFileError(f"{name} is not a GGUF file (it starts with {magic!r})")
        version = cur.u32()
        if version not in SUPPORTED_VERSIONS:
            raise ModelFileError(f"{name} is GGUF version {version}; only 2 and 3 are supported")
        n_tensors, n_kv = cur.u64(), cur.u64()
        # every tensor info and key/value pair takes at least 8+4+8 bytes
        if (n_tensors + n_kv) * 20 > len(cur.buf):
            if file_size is None or (n_tensors + n_kv) * 20 > file_size:
                raise ModelFileError(f"{name} claims {n_tensors} tensors and {n_kv} metadata "
                                     "entries, more than the file can hold")
            raise _Truncated
        metadata: dict[str, Any] = {}
        value_types: dict[str, tuple[int, int | None]] = {}
        for _ in range(n_kv):
            key = cur.string()
            vtype = cur.u32()
            # an array's element type is its first u32: peek at it so a copy can keep it
            peek = vtype == _ARRAY and cur.pos + 4 <= len(cur.buf)
            etype = _U32(cur.buf, cur.pos)[0] if peek else None
            metadata[key] = cur.value(vtype, max_array)
            value_types[key] = (vtype, etype)
        tensors: list[TensorInfo] = []
        for _ in range(n_tensors):
            tname = cur.string()
            n_dims = cur.u32()
            if not 1 <= n_dims <= MAX_DIMS:
                raise ModelFileError(f"tensor '{tname}' has {n_dims} dimensions")
            shape = tuple(cur.u64() for _ in range(n_dims))
            ttype = cur.u32()
            offset = cur.u64()
            tensors.append(TensorInfo(tname, shape, ttype, offset,
                                      _tensor_nbytes(tname, shape, ttype)))
    except _Truncated:
        if file_size is not None and len(cur.buf) >= file_size:
            raise ModelFileError(f"{name} is truncated: its header runs past the end of "
                                 "the file (re-download it)") from None
        raise _NeedMore from None
    except struct.error:
        raise ModelFileError(f"{name} is corrupt: unreadable header") from None

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise ModelFileError(f"{name} has an invalid general.alignment {alignment!r}")
    header_size = cur.pos
    data_offset = (header_size + alignment - 1) // alignment * alignment
    header = GGUFHeader(path, version, metadata, tensors, data_offset, file_size,
                        alignment, header_size, value_types)
    _validate_tensors(header, name)
    return header


def _validate_tensors(h: GGUFHeader, name: str) -> None:
    seen: set[str] = set()
    for t in h.tensors:
        if t.name in seen:
            raise ModelFileError(f"{name} has tensor '{t.name}' twice")
        seen.add(t.name)
        if t.offset % h.alignment:
            raise ModelFileError(f"{name}: tensor '{t.name}' is misaligned")
    if h.file_size is not None and h.expected_size > h.file_size:
        raise ModelFileError(
            f"{name} is truncated: its tensors need {h.expected_size:,} bytes but the file "
            f"has {h.file_size:,} (re-download it)"
        )


def read_header(path: str | Path, *, max_array: int | None = None,
                check_architecture: bool = False) -> GGUFHeader:
    """Read and validate the header of a GGUF file on disk.

    Reads the first few MB (the R1 vocabulary makes headers ~6 MB) and more only if the
    header is larger; never touches the tensor data.
    """
    p = Path(path)
    try:
        if p.is_dir():
            raise ModelFileError(f"{p} is a directory, not a GGUF file")
        size = p.stat().st_size
        if size < 24:
            raise ModelFileError(f"{p.name} is too small to be a GGUF file ({size} bytes)")
        chunk = 8 << 20
        with open(p, "rb") as f:
            buf = f.read(chunk)
            while True:
                try:
                    header = parse_header(buf, path=str(p), file_size=size, max_array=max_array)
                    break
                except _NeedMore:
                    chunk *= 4
                    f.seek(0)
                    buf = f.read(chunk)
    except FileNotFoundError:
        raise ModelFileError(f"{p} does not exist") from None
    except PermissionError:
        raise ModelFileError(f"{p} is not readable (permission denied)") from None
    if check_architecture:
        check_runnable(header)
    return header


def check_runnable(h: GGUFHeader) -> None:
    """Refuse files llama.cpp would crash on or could not run."""
    name = Path(h.path).name
    arch = h.architecture
    if not arch:
        raise ModelFileError(f"{name} has no general.architecture; it is not a model file")
    if arch not in KNOWN_ARCHITECTURES:
        raise ModelFileError(f"{name} is a '{arch}' model, which r1local does not run "
                             f"(supported: {', '.join(sorted(KNOWN_ARCHITECTURES))})")
    if not h.tensors:
        raise ModelFileError(f"{name} holds no tensors (is it a vocab-only file?)")
    tokens = h.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise ModelFileError(f"{name} has no tokenizer")
    prefix = arch + "."
    values = {k[len(prefix):]: v for k, v in h.metadata.items() if k.startswith(prefix)}
    embd = h.tensor("token_embd.weight")
    try:
        hparams.check(values, n_vocab=tokens.count if isinstance(tokens, ArraySummary)
                      else len(tokens), shapes={embd.name: embd.shape} if embd else None)
    except hparams.Invalid as err:
        raise ModelFileError(f"{name} cannot be loaded: its {err}", hint="the file is damaged or was written wrong: download or "
                                  "convert it again") from None


# llama.cpp's gguf-split names part N of M "PREFIX-0000N-of-0000M.gguf" and finds the other
# parts by that name, next to the first
_SPLIT_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def split_parts(first: GGUFHeader) -> list[Path]:
    """Every part of the model whose first file is ``first``, in order ([its path] for a
    whole file), as llama.cpp will look for them."""
    path = Path(first.path)
    count = first.get("split.count")
    if not isinstance(count, int) or count <= 1:
        return [path]
    m = _SPLIT_NAME.match(path.name)
    if m is None or int(m["no"]) != 1 or int(m["count"]) != count or first.get("split.no", 0) != 0:
        raise ModelFileError(
            f"{path.name} is one part of a model split in {count} files, but not the first "
            f"(llama.cpp loads a split model from PREFIX-00001-of-{count:05d}.gguf)",
            hint="give the path of the first part")
    return [path.with_name(f"{m['prefix']}-{i:05d}-of-{count:05d}.gguf")
            for i in range(1, count + 1)]


def read_model_header(path: str | Path, *, max_array: int | None = 256,
                      check_architecture: bool = True) -> GGUFHeader:
    """The header of a model as llama.cpp will load it: for a split GGUF, the first part's
    metadata with the tensors of every part (planning from part 1 alone would miss most of
    the weights). Every part must be there and readable."""
    first = read_header(path, max_array=max_array, check_architecture=check_architecture)
    parts = split_parts(first)
    if len(parts) == 1:
        return first
    tensors = list(first.tensors)
    for i, part in enumerate(parts[1:], start=2):
        if not part.is_file():
            raise ModelFileError(f"{parts[0].name} is part 1 of {len(parts)}, but part {i} "
                                 f"({part.name}) is missing",
                                 hint="put every part in the same folder (r1local pull does)")
        tensors += read_header(part, max_array=0).tensors
    merged = replace(first, tensors=tensors, parts=tuple(str(p) for p in parts))
    seen: set[str] = set()
    for t in tensors:
        if t.name in seen:
            raise ModelFileError(f"{parts[0].name}: tensor '{t.name}' is in two of its parts")
        seen.add(t.name)
    return merged
