"""convert(): a Hugging Face checkpoint -> one GGUF file at the chosen quant.

F32/F16/BF16/Q8_0 are written here while streaming row blocks from the safetensors files.
The other llama.cpp types are written in the same single pass (onepass.py: llama.cpp picks
each tensor's type, ggml's kernels quantize the rows), byte for byte what llama.cpp's
quantizer makes of our F16/BF16 file, with an importance matrix too. With ``two_pass`` the
F16 (or BF16) intermediate is written and handed to llama.cpp's quantizer (llama-quantize
when there is a matrix), then deleted. Output appears under its final name only when
complete (``<out>.partial`` until then).
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path

import numpy as np

from quantize import __version__
from quantize.archs import for_config
from quantize.checkpoint import CHECKPOINT_FILES, INDEX_NAME, Checkpoint
from quantize.errors import ConvertError
from quantize.formats import STRING, UINT32
from quantize.imatrix import Imatrix, imatrix_entries, load_imatrix
from quantize.kernels import Unrepresentable, encode, encoded_size
from quantize.llamaquant import llama_ftype, quantize_file, require_tool
from quantize.onepass import plan_types, quantize_rows, row_weights, widened
from quantize.progress import phase
from quantize.quants import (IMATRIX_QUANTS, LLAMA_QUANTS, QUANTIZATION_VERSION, STREAMED,
                             SUPPORTED_QUANTS, bits_per_weight, canonical)
from quantize.vocab import read_vocab
from quantize.writer import KV, GGUFStreamWriter, TensorSlot

FLOAT_TYPES = ("F32", "F16", "BF16")
BLOCK_BYTES = 16 << 20  # float32 bytes per row block (FP8 is decoded to it): bounds memory
DISK_MARGIN = 64 << 20
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def convert(src: str | Path, out: str | Path, quant: str = "F16", *, threads: int | None = None,
            force: bool = False, imatrix: str | Path | None = None, revision: str | None = None,
            progress: bool = True, two_pass: bool = False) -> Path:
    """Convert ``src`` (a checkpoint folder or a hub repo id) to the GGUF ``out``; returns ``out``."""
    wanted = canonical(quant)
    if wanted is None:
        raise ConvertError(f"unknown quant {quant!r}: valid are {', '.join(SUPPORTED_QUANTS)}")
    imatrix_path = Path(imatrix) if imatrix else None
    if wanted in IMATRIX_QUANTS and imatrix_path is None:
        raise ConvertError(f"{wanted} needs an importance matrix (--imatrix FILE); types that work "
                           f"without one: {', '.join([*STREAMED, *LLAMA_QUANTS])}")
    imatrix_names: set[str] | None = None
    if imatrix_path is not None:
        if not imatrix_path.exists():
            raise ConvertError(f"importance matrix {imatrix_path} does not exist")
        if not imatrix_path.is_file():
            raise ConvertError(f"importance matrix {imatrix_path} is not a file")
        if wanted in STREAMED:
            raise ConvertError(f"--imatrix does not apply to {wanted} (written without quantizing); "
                               "use it with a llama.cpp type such as IQ2_XXS or Q4_K_M")
        # whatever can fail is checked before the long pass, not after it
        if two_pass:
            require_tool()
        imatrix_names = imatrix_entries(imatrix_path)
    out = Path(out)
    if out.exists() and not force:
        raise ConvertError(f"{out} already exists: pass --force to overwrite it")
    if out.is_dir():
        raise ConvertError(f"{out} is a folder: give the output file name")

    out.parent.mkdir(parents=True, exist_ok=True)
    folder, source, resolved_rev = _resolve_source(src, revision, progress)
    ckpt = Checkpoint(folder)
    arch = for_config(ckpt.config)
    arch.check(ckpt.shape, set(ckpt.entries))  # before any loop or buffer is sized by it
    vocab = read_vocab(folder, ckpt.config.get("vocab_size"))
    jobs = arch.jobs(list(ckpt.entries), ckpt.shape)
    if imatrix_names is not None and not imatrix_names & {j.gguf_name for j in jobs}:
        raise ConvertError(f"importance matrix {imatrix_path} has no entry for any weight of this "
                           "model: make it with llama-imatrix from this same model (its F16 GGUF)")

    one_pass = (wanted in LLAMA_QUANTS or wanted in IMATRIX_QUANTS) and not two_pass
    matrix: Imatrix | None = load_imatrix(imatrix_path) if one_pass and imatrix_path else None
    streamed = wanted in STREAMED or one_pass  # the output is written while streaming
    # the intermediate's type: what llama.cpp's quantizer reads (two passes), or what the
    # rows are rounded to before ggml quantizes them (one pass)
    target = wanted if wanted in STREAMED else (
        "BF16" if ckpt.source_dtype() in ("BF16", "F8_E4M3") else "F16")
    slots = [TensorSlot(j.gguf_name, j.shape, _tensor_type(j.shape, j.keep_f32, target)) for j in jobs]
    via = None
    weights: dict[str, np.ndarray] = {}
    file_type = STREAMED[target][1]
    if one_pass:
        kvs = _metadata(arch, vocab, ckpt.config, source, resolved_rev, file_type, folder)
        types = plan_types(kvs, slots, wanted, out.with_name(out.name + ".skeleton.partial"), threads,
                           imatrix=matrix)
        via = {s.name: s.ggml for s in slots}
        slots = [TensorSlot(s.name, s.shape, types[s.name]) for s in slots]
        file_type = llama_ftype(wanted)
        if matrix is not None:
            weights = row_weights(slots, via, matrix)
    stream_bytes = sum(s.nbytes for s in slots)
    n_weights = sum(_count(j.shape) for j in jobs)
    final_bytes = stream_bytes if streamed else int(n_weights * bits_per_weight(wanted) / 8)

    free = shutil.disk_usage(out.parent).free
    need = final_bytes + (0 if streamed else stream_bytes) + DISK_MARGIN
    if free < need:
        raise ConvertError(f"not enough free disk in {out.parent}: {need / 1e9:.1f} GB needed, "
                           f"{free / 1e9:.1f} GB free")

    partial = out.with_name(out.name + ".partial")
    inter = out.with_name(out.name + f".{target.lower()}.partial")
    kvs = _metadata(arch, vocab, ckpt.config, source, resolved_rev, file_type, folder)
    if matrix is not None:  # the provenance llama-quantize records
        kvs += [KV(k, v, STRING if t == "str" else UINT32) for k, v, t in matrix.metadata()]
    try:
        with open(partial if streamed else inter, "wb") as f:
            writer = GGUFStreamWriter(f, kvs, slots, writeback=streamed)  # not llama.cpp's input
            total = sum(ckpt.entries[n].nbytes for j in jobs for n in _sources(j))
            workers = max(1, min(4, threads or os.cpu_count() or 1))
            with phase(f"converting to {wanted if one_pass else target}", total, progress) as advance, \
                    ThreadPoolExecutor(workers, thread_name_prefix="convert") as pool:
                blocks = _Blocks(ckpt, writer, advance, pool, workers, via, weights)
                for job, slot in zip(jobs, slots):
                    blocks.tensor(job, slot)
            writer.finish()
            f.flush()
            os.fsync(f.fileno())
        if not streamed:
            quantize_file(inter, partial, wanted, threads=threads, expected=final_bytes,
                          imatrix=imatrix_path, progress=progress)
        os.replace(partial, out)
    except BaseException:
        with suppress(OSError):
            partial.unlink()
        raise
    finally:
        with suppress(OSError):
            inter.unlink()
    return out


def _sources(job) -> tuple[str, ...]:
    """The HF tensors a job reads, in order: one, or a stack's parts (none if generated)."""
    return job.parts or ((job.source,) if job.source else ())


def _count(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _tensor_type(shape: tuple[int, ...], keep_f32: bool, target: str) -> str:
    if keep_f32 or len(shape) < 2 or target == "F32":
        return "F32"
    if target == "Q8_0" and shape[-1] % 32:
        return "F16"  # Q8_0 blocks are 32 wide along a row
    return target


class _Blocks:
    """Row blocks are read and encoded on worker threads (numpy and preadv release the GIL)
    and written in order; at most workers + 1 blocks are in flight, so memory stays flat.

    Buffers are made once and reused: a fresh 16 MB array per block cost a page fault per
    4 KB, more than the copy into it. Each worker has its own read buffer; output buffers go
    round a free list, workers + 1 of them: a block in flight holds at most one, so a worker
    always finds one free."""

    def __init__(self, ckpt: Checkpoint, writer: GGUFStreamWriter, advance, pool: ThreadPoolExecutor,
                 workers: int, via: dict[str, str] | None = None,
                 weights: dict[str, np.ndarray] | None = None) -> None:
        self.ckpt, self.writer, self.advance, self.pool, self.workers = ckpt, writer, advance, pool, workers
        self.via = via or {}  # one pass: tensor -> the intermediate type its rows are rounded to
        self.weights = weights or {}  # one pass: tensor -> its importance weights
        self.free: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(workers + 1):
            self.free.put(np.empty(BLOCK_BYTES, np.uint8))
        self.local = threading.local()

    def tensor(self, job, slot: TensorSlot) -> None:
        if job.data is not None:
            self.writer.write(encode(job.data, slot.ggml))
            return
        pending: deque = deque()
        # the output row each block starts at (a block's share of the output rows is its share
        # of the source rows: stacking and the row moves keep whole rows per source row group)
        out_rows = _count(slot.shape[:-1]) if len(slot.shape) > 1 else 1
        src_rows = sum(self.ckpt.entries[n].rows for n in _sources(job)) or 1
        row0 = 0
        for name in _sources(job):  # a stack's parts one after another: their rows in order
            entry = self.ckpt.entries[name]
            if job.row_multiple >= entry.rows:
                blocks = [(0, entry.rows)]  # the transform needs the tensor whole
            else:
                rows = max(1, BLOCK_BYTES // (4 * max(1, entry.row_elements)))
                rows = max(job.row_multiple, rows // job.row_multiple * job.row_multiple)
                blocks = self.ckpt.block_rows(name, rows)
            for r0, n in blocks:
                pending.append(self.pool.submit(self._work, job, slot, entry, r0, n, row0))
                row0 += n * out_rows // src_rows
                if len(pending) > self.workers:
                    self._drain_one(pending)
        while pending:
            self._drain_one(pending)

    def _work(self, job, slot: TensorSlot, entry, r0: int, n: int, row0: int):
        flat = len(entry.shape) <= 1
        nbytes = entry.nbytes if flat else entry.nbytes // entry.rows * n
        into = getattr(self.local, "buf", None)
        if into is None or into.size < nbytes:
            into = self.local.buf = np.empty(max(nbytes, BLOCK_BYTES), np.uint8)
        block, stored = self.ckpt.read_rows(entry.name, r0, n, into=into)
        if job.transform is not None:  # row moves: the same on stored values as on floats
            block = job.transform(block)
        out = self.free.get()
        need = encoded_size(block.size, slot.ggml)
        if out.size < need:
            out = np.empty(need, np.uint8)
        try:
            via = self.via.get(slot.name)
            if via is None or slot.ggml == via:  # as the F16/BF16 intermediate holds it
                return encode(block, slot.ggml, stored, out=out), out, nbytes
            if slot.ggml in FLOAT_TYPES:
                return encode(widened(block, stored, via), slot.ggml, "F32", out=out), out, nbytes
            experts = slot.shape[-2] if len(slot.shape) == 3 else 0  # rows per expert
            return quantize_rows(block, stored, via, slot.ggml, slot.shape[-1], out,
                                 self.weights.get(slot.name), row0, experts), out, nbytes
        except Unrepresentable as err:
            self.free.put(out)
            raise ConvertError(f"{entry.name}: {err}: check the checkpoint, or convert to BF16, "
                               "which holds values that large") from None
        except BaseException:
            self.free.put(out)
            raise

    def _drain_one(self, pending: deque) -> None:
        data, out, nbytes = pending.popleft().result()
        try:
            self.writer.write(data)
        finally:
            self.free.put(out)
        self.advance(nbytes)


def _metadata(arch, vocab, config: dict, source: str, revision: str | None, file_type: int,
              folder: Path) -> list[KV]:
    name = str(config.get("_name_or_path") or source).rstrip("/").split("/")[-1] or folder.name
    kvs = [KV("general.architecture", arch.gguf_arch, STRING),
           KV("general.type", "model", STRING),
           KV("general.name", name, STRING),
           KV("general.file_type", file_type, UINT32),
           KV("general.quantization_version", QUANTIZATION_VERSION, UINT32)]
    if _REPO_ID.match(source) and not Path(source).exists():
        kvs.append(KV("general.source.huggingface.repository", source, STRING))
    kvs += [KV("quantize.converter", f"quantize {__version__}", STRING),
            KV("quantize.source", source, STRING)]
    if revision:
        kvs.append(KV("quantize.source_revision", revision, STRING))
    return kvs + arch.metadata() + vocab.metadata()


def _resolve_source(src: str | Path, revision: str | None,
                    progress: bool = True) -> tuple[Path, str, str | None]:
    """(local folder, how the source is named in the provenance, revision).

    A hub repo id is fetched into the Hugging Face cache, but only what a conversion reads:
    config, tokenizer, the index and the shards the index names (without an index, the
    top-level safetensors). Repos often also hold .bin/.pth copies of the same weights or
    safetensors of other formats, which would only cost bandwidth and disk."""
    path = Path(src).expanduser()
    if path.is_dir():
        return path, str(src), revision
    if path.exists():
        raise ConvertError(f"{src} is a file: give the checkpoint's folder (or a hub repo id)")
    if not _REPO_ID.match(str(src)):
        raise ConvertError(f"{src} is not a folder, nor a hub repo id like deepseek-ai/NAME")
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                            RepositoryNotFoundError, RevisionNotFoundError)
        from huggingface_hub.utils import (are_progress_bars_disabled, disable_progress_bars,
                                           enable_progress_bars)
    except ImportError:
        raise ConvertError("downloading from the hub needs huggingface-hub: pip install huggingface-hub") from None
    import glob
    import json
    import sys

    repo = str(src)

    def fetch(rev: str | None, allow: list[str], ignore: list[str] | None = None) -> Path:
        return Path(snapshot_download(repo, revision=rev, allow_patterns=allow,
                                      ignore_patterns=ignore))

    # huggingface-hub's bars: off with --no-progress, and in a log or a pipe (lines of noise)
    quiet = (not progress or not sys.stderr.isatty()) and not are_progress_bars_disabled()
    if quiet:
        disable_progress_bars()
    try:
        local = fetch(revision, list(CHECKPOINT_FILES))
        # the second fetch names the commit the first one got, so both see the same files
        commit = local.name if re.fullmatch(r"[0-9a-f]{40}", local.name) else revision
        index = local / INDEX_NAME
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
                patterns = [glob.escape(str(s)) for s in shards]  # names, not patterns
            except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
                raise ConvertError(f"{repo}'s model.safetensors.index.json is malformed: it does not say "
                                   "which files hold the weights") from None
            local = fetch(commit, patterns)
        else:
            # fnmatch's * also matches '/': keep to the top level
            local = fetch(commit, ["*.safetensors"], ["*/*"])
    except ConvertError:
        raise
    except GatedRepoError:
        raise ConvertError(f"{repo} is gated: accept its terms on the model page, then set "
                           "HF_TOKEN=hf_... (a token with access to it)") from None
    except RepositoryNotFoundError:
        raise ConvertError(f"{repo} is not a folder here, and {constants.ENDPOINT} has no repo of that "
                           "name (if it is private, set HF_TOKEN=hf_... with access to it)") from None
    except RevisionNotFoundError:
        raise ConvertError(f"{repo} has no revision {revision!r} on {constants.ENDPOINT}") from None
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE:
            raise ConvertError(f"HF_HUB_OFFLINE is set and {repo} is not in the Hugging Face cache: "
                               "unset HF_HUB_OFFLINE to download it") from None
        raise ConvertError(f"cannot reach {constants.ENDPOINT} to download {repo}: check the network "
                           "(or HF_ENDPOINT), or download it and convert the folder") from None
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None) or "an error"
        raise ConvertError(f"{constants.ENDPOINT} answered HTTP {status} for {repo}: try again later, "
                           "or download it and convert the folder") from None
    except Exception as err:  # noqa: BLE001 - the transport's own errors (reset, timeout) mid-file
        if not isinstance(err, OSError) and not type(err).__module__.startswith(("httpx", "huggingface_hub")):
            raise
        first = str(err).splitlines()[0] if str(err) else ""
        raise ConvertError(f"downloading {repo} failed ({type(err).__name__}{': ' + first if first else ''}): "
                           "check the network and run the same command again") from None
    finally:
        if quiet:
            enable_progress_bars()
    return local, repo, commit
