"""convert(): a Hugging Face checkpoint -> one GGUF file at the chosen quant.

F32/F16/BF16/Q8_0 are written here while streaming row blocks from the safetensors files.
Every other type goes through an F16 (or BF16) intermediate that llama.cpp's quantizer
reads; the intermediate is deleted afterwards. Output appears under its final name only
when complete (``<out>.partial`` until then).
"""

from __future__ import annotations

import os
import re
import shutil
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path

from quantize import __version__
from quantize.archs import for_config
from quantize.checkpoint import Checkpoint
from quantize.errors import ConvertError
from quantize.imatrix import imatrix_entries
from quantize.llamaquant import quantize_file, require_tool
from quantize.progress import phase
from quantize.quants import (IMATRIX_QUANTS, LLAMA_QUANTS, QUANTIZATION_VERSION, STREAMED,
                             SUPPORTED_QUANTS, bits_per_weight, canonical)
from quantize.vocab import read_vocab
from quantize.writer import STRING, UINT32, KV, GGUFStreamWriter, TensorSlot, encode

BLOCK_BYTES = 16 << 20  # float32 bytes per row block: bounds memory whatever the tensor size
DISK_MARGIN = 64 << 20
HUB_FILES = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
             "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def convert(src: str | Path, out: str | Path, quant: str = "F16", *, threads: int | None = None,
            force: bool = False, imatrix: str | Path | None = None, revision: str | None = None,
            progress: bool = True) -> Path:
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
        # whatever can fail is checked before the long F16 pass, not after it
        require_tool()
        imatrix_names = imatrix_entries(imatrix_path)
    out = Path(out)
    if out.exists() and not force:
        raise ConvertError(f"{out} already exists: pass --force to overwrite it")
    if out.is_dir():
        raise ConvertError(f"{out} is a folder: give the output file name")

    folder, source, resolved_rev = _resolve_source(src, revision)
    ckpt = Checkpoint(folder)
    arch = for_config(ckpt.config)
    vocab = read_vocab(folder, ckpt.config.get("vocab_size"))
    jobs = arch.jobs(list(ckpt.entries), ckpt.shape)
    if imatrix_names is not None and not imatrix_names & {j.gguf_name for j in jobs}:
        raise ConvertError(f"importance matrix {imatrix_path} has no entry for any weight of this "
                           "model: make it with llama-imatrix from this same model (its F16 GGUF)")

    streamed = wanted in STREAMED
    target = wanted if streamed else ("BF16" if ckpt.source_dtype() in ("BF16", "F8_E4M3") else "F16")
    slots = [TensorSlot(j.gguf_name, j.shape, _tensor_type(j.shape, j.keep_f32, target)) for j in jobs]
    stream_bytes = sum(s.nbytes for s in slots)
    n_weights = sum(_count(j.shape) for j in jobs)
    final_bytes = stream_bytes if streamed else int(n_weights * bits_per_weight(wanted) / 8)

    out.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out.parent).free
    need = final_bytes + (0 if streamed else stream_bytes) + DISK_MARGIN
    if free < need:
        raise ConvertError(f"not enough free disk in {out.parent}: {need / 1e9:.1f} GB needed, "
                           f"{free / 1e9:.1f} GB free")

    partial = out.with_name(out.name + ".partial")
    inter = out.with_name(out.name + f".{target.lower()}.partial")
    file_type = STREAMED[target][1]
    kvs = _metadata(arch, vocab, ckpt.config, source, resolved_rev, file_type, folder)
    try:
        with open(partial if streamed else inter, "wb") as f:
            writer = GGUFStreamWriter(f, kvs, slots)
            total = sum(ckpt.entries[j.source].nbytes for j in jobs if j.source)
            workers = max(1, min(4, threads or os.cpu_count() or 1))
            with phase(f"converting to {target}", total, progress) as advance, \
                    ThreadPoolExecutor(workers, thread_name_prefix="convert") as pool:
                for job, slot in zip(jobs, slots):
                    _write_tensor(ckpt, job, slot, writer, advance, pool)
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


def _write_tensor(ckpt: Checkpoint, job, slot: TensorSlot, writer: GGUFStreamWriter, advance,
                  pool: ThreadPoolExecutor) -> None:
    """Row blocks are read and encoded on worker threads (numpy and preadv release the GIL)
    and written in order; at most pool-size + 1 blocks are in flight, so memory stays flat."""
    if job.data is not None:
        writer.write(encode(job.data, slot.ggml))
        return
    entry = ckpt.entries[job.source]
    rows = max(1, BLOCK_BYTES // (4 * max(1, entry.row_elements)))
    rows = max(job.row_multiple, rows // job.row_multiple * job.row_multiple)
    row_bytes = entry.nbytes // max(1, entry.rows)

    def work(r0: int, n: int):
        block = ckpt.read_rows(job.source, r0, n)
        if job.transform is not None:
            block = job.transform(block)
        return encode(block, slot.ggml), (row_bytes * n if len(entry.shape) > 1 else entry.nbytes)

    pending: deque = deque()
    for r0, n in ckpt.block_rows(job.source, rows):
        pending.append(pool.submit(work, r0, n))
        if len(pending) > pool._max_workers:
            _drain_one(pending, writer, advance)
    while pending:
        _drain_one(pending, writer, advance)


def _drain_one(pending: deque, writer: GGUFStreamWriter, advance) -> None:
    data, nbytes = pending.popleft().result()
    writer.write(data)
    advance(nbytes)


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


def _resolve_source(src: str | Path, revision: str | None) -> tuple[Path, str, str | None]:
    """(local folder, how the source is named in the provenance, revision)."""
    path = Path(src).expanduser()
    if path.is_dir():
        return path, str(src), revision
    if path.exists():
        raise ConvertError(f"{src} is a file: give the checkpoint's folder (or a hub repo id)")
    if not _REPO_ID.match(str(src)):
        raise ConvertError(f"{src} is not a folder, nor a hub repo id like deepseek-ai/NAME")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise ConvertError("downloading from the hub needs huggingface-hub: pip install huggingface-hub") from None
    try:
        local = Path(snapshot_download(str(src), revision=revision, allow_patterns=HUB_FILES))
    except LocalEntryNotFoundError:
        raise ConvertError(f"cannot reach the Hugging Face hub to download {src}: check the network, "
                           "or download it and convert the folder") from None
    except HfHubHTTPError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConvertError(f"the hub refused {src}: {first}") from None
    except OSError as err:
        raise ConvertError(f"downloading {src} failed: {err}") from None
    return local, str(src), local.name if re.fullmatch(r"[0-9a-f]{40}", local.name) else revision
