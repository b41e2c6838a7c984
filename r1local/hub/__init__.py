"""Pulling a model from the Hugging Face hub into the store: `pull(ref, quant=...)`.

The only package of r1local that imports huggingface_hub. The caller names the quant (which
one suits a machine is the planner's business, not the downloader's). A pull asks the hub
for every file first, so a bad tag or no network fails before anything is written; then
each file is resumed, verified and linked into the store, and the model is registered.

    fetch.py     one file: metadata, resumable download, sha256/GGUF check, HF cache, disk
    source.py    --from-source: the original checkpoint, converted by quantize
    progress.py  the bar on stderr, or the callback (the server's /api/pull)
    errors.py    huggingface_hub's errors as one line that carries the fix
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from r1local.errors import NetworkError, UsageError
from r1local.hub import fetch
from r1local.hub.progress import Progress, Reporter
from r1local.store import Store, StoredModel, catalog_name, file_sha256
from r1local.units import fmt_bytes

if TYPE_CHECKING:
    from r1local.catalog import QuantFiles, Variant

__all__ = ["pull"]


def pull(ref: str, *, quant: str | None = None, from_source: bool = False,
         keep_source: bool = False, store: Store | None = None,
         progress: bool | Reporter = True, revision: str = "main",
         notes: list[str] | None = None, trust_hub: bool = False,
         verify: bool = False) -> StoredModel:
    """Download (or build, with ``from_source``) the model ``ref`` names into the store.

    ``ref`` is a catalog tag or alias with its quant (``7b:Q4_K_M``), or without one when
    ``quant`` names it. ``progress``: True draws a bar on stderr, a callable receives
    Ollama-style dicts ({"status", "digest", "total", "completed"}), False is silent.
    ``notes``: lines to report once the hub has answered (say, why this quant).
    ``trust_hub``: a file whose sha256 is not the one the catalog pins is taken (checked
    against the hub's hash) instead of refused. ``verify``: a model already in the store has
    its files hashed again, not only their sizes checked."""
    from r1local.catalog import load_catalog

    store = store or Store()
    mref = load_catalog().resolve(ref)
    variant = mref.variant
    if quant and mref.quant and quant.upper() != mref.quant.upper():
        raise UsageError(f"'{ref}' names quant {mref.quant} but --quant says {quant}")
    q = variant.quant(quant).quant if quant else mref.quant
    if q is None:
        raise UsageError(f"'{ref}' names no quant: say which one to download",
                         hint=f"e.g. {variant.tag}:{variant.default_quant}, or --quant; "
                              "`r1local hw` shows which fit this machine")
    name = catalog_name(variant.tag, q)
    notes = list(notes or [])  # the hub's own notes join them: the caller's list stays as it was
    prog = Progress(progress)
    try:
        if from_source:
            from r1local.hub.source import pull_source

            return pull_source(variant, q, name, store, prog, notes, keep_source, revision)
        if fetch.offline():
            return _pull_offline(variant, variant.quant(q), name, store, prog, notes,
                                 trust_hub, verify)
        return _pull_gguf(variant, q, name, store, prog, notes, revision, trust_hub, verify)
    finally:
        prog.close()


def _intact(model: StoredModel, verify: bool, prog: Progress) -> bool:
    """The store's copy is still what its manifest says: every file there at its size, and
    with ``verify`` its sha256 too. (Anything else is brought again, file by file.)"""
    if not model.present or model.size_problem():
        return False
    if not verify:
        return True
    if len(model.sha256) != len(model.files):  # a rebuilt manifest's entry: nothing to check
        return False
    for f, want in zip(model.files, model.sha256):
        prog.say(f"verifying sha256 of {f.name}")
        if file_sha256(f) != want:
            return False
    return True


def _pull_gguf(variant: Variant, q: str, name: str, store: Store, prog: Progress,
               notes: list[str], revision: str, trust_hub: bool, verify: bool) -> StoredModel:
    qf = variant.quant(q)
    folder = store.model_dir(name)
    existing = store.get(name)
    remotes: list[fetch.Remote] = []
    for i, filename in enumerate(qf.files):
        sha = qf.sha256[i] if qf.sha256 else None
        r = fetch.remote(variant.gguf_repo, filename, revision, folder / Path(filename).name,
                         fetch.partial_root(store, name), sha, notes, trust_hub=trust_hub)
        revision = r.commit or revision  # every part of a split model from the same commit
        remotes.append(r)
    for n in notes:  # after the hub answered: a bad tag or no network fails before any note
        prog.say(n)
    if existing is not None and existing.origin == "pull" and \
            tuple(existing.sha256) == tuple(r.expected_sha for r in remotes) and \
            _intact(existing, verify, prog):
        prog.say(f"{name} is already in the store and up to date ({existing.revision or '?'})")
        return existing
    for r in remotes:
        r.cached = fetch.in_hf_cache(r)
    total = sum(r.size for r in remotes)
    fetch.check_disk(sum(fetch.still_needed(r) for r in remotes), store.root,
                     f"{name} ({fmt_bytes(total)} in {len(remotes)} "
                     f"file{'s' * (len(remotes) > 1)})")
    if len(remotes) > 1:
        prog.say(f"{name} is split in {len(remotes)} parts ({fmt_bytes(total)})")
    digests = [fetch.bring(r, prog, first=(i == 0)) for i, r in enumerate(remotes)]
    model = store.add(StoredModel(
        name=name, tag=variant.tag, quant=q, files=tuple(r.dest for r in remotes), size=total,
        source=variant.gguf_repo, revision=remotes[0].commit, sha256=tuple(digests),
        added_at="", origin="pull", sizes=tuple(r.size for r in remotes)))
    fetch.tidy_partials(store, name)
    prog.say(f"pulled {name} ({fmt_bytes(model.size)}) into {folder}")
    return model


def _pull_offline(variant: Variant, qf: QuantFiles, name: str, store: Store, prog: Progress,
                  notes: list[str], trust_hub: bool, verify: bool) -> StoredModel:
    """HF_HUB_OFFLINE: the store's copy, else the user's HF cache, else one clear line."""
    from huggingface_hub import try_to_load_from_cache

    existing = store.get(name)
    if existing is not None and _intact(existing, verify, prog):
        prog.say(f"{name} is already in the store (HF_HUB_OFFLINE is set: not checked for "
                 "updates)")
        return existing
    found = []
    for filename in qf.files:
        hit = try_to_load_from_cache(variant.gguf_repo, filename)
        if not isinstance(hit, str):
            raise NetworkError(f"HF_HUB_OFFLINE is set, and {filename} is not in the Hugging "
                               "Face cache", hint="unset HF_HUB_OFFLINE to download it")
        found.append(Path(hit))
    folder = store.model_dir(name)
    remotes = []
    for i, (filename, hit) in enumerate(zip(qf.files, found)):
        blob = hit.resolve()  # the cache's blobs are named by their sha256 (LFS files)
        etag = blob.name if fetch.SHA256.match(blob.name) else ""
        sha = fetch.expected_sha(filename, qf.sha256[i] if qf.sha256 else None, etag or None,
                                 trust_hub, notes)
        remotes.append(fetch.Remote(
            repo=variant.gguf_repo, filename=filename, url="", size=blob.stat().st_size,
            etag=etag, commit=hit.parent.name, dest=folder / Path(filename).name,
            expected_sha=sha, cached=blob, partial_root=fetch.partial_root(store, name)))
    for n in notes:
        prog.say(n)
    fetch.check_disk(sum(fetch.still_needed(r) for r in remotes), store.root, name)
    digests = [fetch.bring(r, prog, first=(i == 0)) for i, r in enumerate(remotes)]
    model = store.add(StoredModel(
        name=name, tag=variant.tag, quant=qf.quant, files=tuple(r.dest for r in remotes),
        size=sum(r.size for r in remotes), source=variant.gguf_repo, revision=remotes[0].commit,
        sha256=tuple(digests), added_at="", origin="pull"))
    fetch.tidy_partials(store, name)
    return model
