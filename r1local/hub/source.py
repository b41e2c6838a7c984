"""`pull --from-source`: fetch a variant's original checkpoint, convert it with quantize.

Only what a conversion reads is fetched (quantize's CHECKPOINT_FILES and the shards its
index names), into ``<store>/.source/<repo>``, resumable and verified like any pulled file.
The GGUF is built under ``.partial`` and registered once its header reads back valid; the
checkpoint is deleted afterwards unless ``keep_source``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from r1local.errors import ModelFileError, NetworkError, R1LocalError, UsageError
from r1local.hub import fetch
from r1local.hub.errors import hub_error
from r1local.hub.progress import Progress
from r1local.store import Store, StoredModel, file_sha256
from r1local.units import fmt_bytes

if TYPE_CHECKING:
    from r1local.catalog import Variant


def source_files(siblings: list[str]) -> list[str]:
    """The files a conversion needs out of a checkpoint repo's listing: quantize's list of
    configs and tokenizer files, and every top-level .safetensors (the index, when there is
    one, narrows those down once it is fetched)."""
    from quantize.checkpoint import CHECKPOINT_FILES

    names = set(siblings)
    wanted = [f for f in CHECKPOINT_FILES if f in names]
    wanted += sorted(f for f in names if f.endswith(".safetensors") and "/" not in f)
    return wanted


def pull_source(variant: Variant, quant: str, name: str, store: Store, prog: Progress,
                notes: list[str], keep_source: bool, revision: str) -> StoredModel:
    """Build ``name`` (``variant`` at ``quant``) from ``variant.source_repo`` at ``revision``."""
    from huggingface_hub import model_info

    from quantize import SUPPORTED_QUANTS, convert
    from quantize.checkpoint import INDEX_NAME
    from quantize.errors import ConvertError

    if quant.upper() not in {s.upper() for s in SUPPORTED_QUANTS}:
        raise UsageError(f"--from-source cannot make {quant}",
                         hint=f"choose one of: {', '.join(SUPPORTED_QUANTS)} (with :QUANT)")
    repo = variant.source_repo
    if fetch.offline():
        raise NetworkError("HF_HUB_OFFLINE is set: --from-source must download the checkpoint",
                           hint="unset HF_HUB_OFFLINE")
    try:
        info = model_info(repo, revision=revision)
    except Exception as err:
        raise hub_error(err, repo, "the model listing") from None
    commit = info.sha or revision  # every file from the same commit
    siblings = [s.rfilename for s in (info.siblings or [])]
    src_dir = store.root / ".source" / repo.replace("/", "--")
    src_partials = store.partial_dir() / f"source--{src_dir.name}"
    remotes = [fetch.remote(repo, f, commit, src_dir / f, src_partials)
               for f in source_files(siblings)]
    index = next((r for r in remotes if r.filename == INDEX_NAME), None)
    if index is not None:  # only the shards the index maps tensors to
        fetch.bring(index, prog, first=False)
        shards = set(json.loads(index.dest.read_text())["weight_map"].values())
        remotes = [r for r in remotes
                   if not r.filename.endswith(".safetensors") or r.filename in shards]
    if not any(r.filename.endswith(".safetensors") for r in remotes):
        raise ModelFileError(f"{repo} has no safetensors weights to convert")
    for n in notes:  # after the hub answered, as a GGUF pull does
        prog.say(n)
    for r in remotes:
        r.cached = fetch.in_hf_cache(r)
    src_total = sum(r.size for r in remotes)
    out_estimate = variant.quant(quant).total_size if quant in variant.quants else src_total
    fetch.check_disk(sum(fetch.still_needed(r) for r in remotes) + out_estimate, store.root,
                     f"{name} from source ({fmt_bytes(src_total)} of safetensors + about "
                     f"{fmt_bytes(out_estimate)} of GGUF)")
    for r in remotes:
        if r is not index:  # already brought
            fetch.bring_plain(r, prog)

    folder = store.model_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{variant.name}-{quant}.gguf"
    staging = store.partial_dir() / folder.name / out.name
    staging.parent.mkdir(parents=True, exist_ok=True)
    prog.say(f"converting {repo} to {quant}")
    try:
        made = Path(convert(src_dir, staging, quant, force=True, revision=commit,
                            progress=prog.terminal))
    except ConvertError as err:
        raise R1LocalError(f"converting {repo} failed: {err}") from None
    digest = _check_made(made, repo)
    os.replace(made, out)
    if keep_source:
        prog.say(f"kept the original checkpoint in {src_dir}")
    else:
        shutil.rmtree(src_dir, ignore_errors=True)
        try:
            src_dir.parent.rmdir()  # .source/, once no other checkpoint is kept there
        except OSError:
            pass
    model = store.add(StoredModel(
        name=name, tag=variant.tag, quant=quant, files=(out,), size=out.stat().st_size,
        source=repo, revision=commit, sha256=(digest,), added_at="", origin="source"))
    fetch.tidy_partials(store, name)
    fetch.tidy(src_partials)
    prog.say(f"built {name} ({fmt_bytes(model.size)}) from {repo} into {folder}")
    return model


def _check_made(made: Path, repo: str) -> str:
    """The converter's output must read back as a GGUF of a known architecture; its sha256."""
    from r1local.ggufinfo import read_header

    try:
        read_header(made, max_array=256, check_architecture=True)
    except ModelFileError as err:
        made.unlink(missing_ok=True)
        raise ModelFileError(f"the conversion of {repo} produced an unusable GGUF "
                             f"({err})") from None
    return file_sha256(made)
