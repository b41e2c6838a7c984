"""Downloads from the Hugging Face hub into the store: resolve, resume, verify, register.

The only module of r1local that imports huggingface_hub. What it uses of it: the file
metadata HEAD (`get_hf_file_metadata`: LFS sha256, size, commit, CDN location), its HTTP
GET (`http_get`, which sends `Range` from a resume offset), `model_info` for --from-source,
its error classes, token and endpoint settings (HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE) and
its cache layout (files already in the user's HF cache are linked, not fetched again).

Why not `hf_hub_download`: the installed huggingface_hub (2.x) writes each download to a
process-unique ``<etag>.<uuid>.incomplete`` file and deletes it on failure, so a killed or
interrupted download restarts from zero. Here each file goes to
``<store>/.partial/<model>/<file>.partial`` (with the etag it belongs to beside it), and the
next pull asks for ``Range: bytes=<partial size>-``. Bytes always come over plain HTTP from
the resolve redirect, never through Xet.

A file is registered only after its sha256 equals the hub's LFS hash and its GGUF header
reads back valid; otherwise it is deleted and the error says so. Where the catalog pins a
different hash the publisher has re-uploaded: the pull says so and follows the hub.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from r1local.errors import (DiskSpaceError, ModelFileError, NetworkError, R1LocalError,
                            UsageError)
from r1local.store import Store, StoredModel, catalog_name, file_sha256

ProgressArg = "bool | Callable[..., None]"
SHA256 = re.compile(r"^[0-9a-f]{64}$")
# what --from-source fetches of an original checkpoint (weights are picked from the index)
SOURCE_FILES = ("config.json", "generation_config.json", "tokenizer.json",
                "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                "model.safetensors.index.json")
DISK_MARGIN = 64 << 20  # keep a little free beyond the files themselves


@dataclass
class _Remote:
    """One file to fetch: where from, how big, and its hash as the hub states it."""

    repo: str
    filename: str
    url: str  # the resolved location (CDN for LFS files)
    size: int
    etag: str  # the LFS sha256 for large files, the git blob sha1 for small ones
    commit: str | None
    dest: Path
    expected_sha: str | None  # sha256 the content must have (hub LFS hash / catalog)
    partial_root: Path  # where the download in progress lives (<store>/.partial/<model>)
    cached: Path | None = None  # the same content already in the user's HF cache

    @property
    def partial(self) -> Path:
        return self.partial_root / (self.dest.name + ".partial")

    @property
    def partial_meta(self) -> Path:
        return self.partial.with_name(self.partial.name + ".json")


# ---- progress ---------------------------------------------------------------------------

class _Progress:
    """Reports to a rich bar on stderr (progress=True), a callback (the server's /api/pull:
    Ollama-style dicts), or nowhere."""

    def __init__(self, progress: Any) -> None:
        self.callback = progress if callable(progress) else None
        self.terminal = progress is True
        self._bar = None
        self._task = None
        self._last = 0.0
        self._event: dict[str, Any] = {}

    def say(self, text: str) -> None:
        if self.callback is not None:
            self.callback({"status": text})
        elif self.terminal:
            self._print(text)

    def _print(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text, highlight=False, markup=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def start(self, label: str, total: int, done: int, digest: str | None = None) -> None:
        self._event = {"status": f"pulling {label}", "total": total, "completed": done}
        if digest:
            self._event["digest"] = f"sha256:{digest}"
        if self.callback is not None:
            self.callback(dict(self._event))
        if self.terminal:
            from rich.console import Console
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                       TimeRemainingColumn, TransferSpeedColumn)

            if self._bar is None:
                self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                     DownloadColumn(), TransferSpeedColumn(),
                                     TimeRemainingColumn(), console=Console(stderr=True),
                                     transient=False)
                self._bar.start()
            self._task = self._bar.add_task(label, total=total, completed=done)

    def advance(self, n: int) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, n)
        if self.callback is not None and self._event:
            self._event["completed"] += n
            now = time.monotonic()
            if now - self._last >= 0.2 or self._event["completed"] >= self._event["total"]:
                self._last = now
                self.callback(dict(self._event))

    def done(self) -> None:
        """One file finished: end its bar so later notes print below it."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
            self._task = None

    def rewind(self) -> None:
        """The server ignored Range: the count starts again from zero."""
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=0)
        if self._event:
            self._event["completed"] = 0

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class _CountingFile:
    """The file http_get writes into, counting bytes for the progress bar."""

    def __init__(self, f, progress: _Progress) -> None:
        self._f, self._p = f, progress

    def write(self, data: bytes) -> int:
        n = self._f.write(data)
        self._p.advance(len(data))
        return n

    def truncate(self, size: int | None = None) -> int:
        self._p.rewind()
        return self._f.truncate(size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


# ---- huggingface_hub errors -> one line -------------------------------------------------

def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _friendly(err: BaseException, repo: str, what: str) -> R1LocalError:
    """Turn whatever huggingface_hub / httpx raised into one line that says what to do."""
    import httpx2
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled,
                                        RemoteEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    if isinstance(err, OfflineModeIsEnabled):
        return NetworkError(f"HF_HUB_OFFLINE is set, and {what} is not in the Hugging Face "
                            "cache", hint="unset HF_HUB_OFFLINE to download it")
    if isinstance(err, GatedRepoError):
        return NetworkError(f"{repo} is gated: the hub refused {what} without access",
                            hint="accept its terms on the model page, then set "
                                 "HF_TOKEN=hf_... (a token from huggingface.co/settings/tokens)")
    if isinstance(err, RepositoryNotFoundError):
        return NetworkError(f"{repo} was not found on {_endpoint()}, or it is private",
                            hint="if it is private, set HF_TOKEN=hf_... with access to it")
    if isinstance(err, RevisionNotFoundError):
        return NetworkError(f"{repo} has no such revision ({what})")
    if isinstance(err, RemoteEntryNotFoundError):
        return NetworkError(f"{what} is not in {repo} on {_endpoint()}",
                            hint="the catalog may be out of date; try another quant "
                                 "(`r1local hw` lists them) or --from-source")
    if isinstance(err, HfHubHTTPError):
        status = getattr(getattr(err, "response", None), "status_code", "?")
        if status in (401, 403):
            return NetworkError(f"{_endpoint()} refused {what} (HTTP {status})",
                                hint="set HF_TOKEN=hf_... with access to the repo")
        return NetworkError(f"{_endpoint()} answered HTTP {status} for {what}",
                            hint="try again later")
    if isinstance(err, (httpx2.TransportError, ConnectionError, TimeoutError)):
        return NetworkError(
            f"cannot reach {_endpoint()} for {what} ({type(err).__name__}"
            f"{': ' + str(err).splitlines()[0] if str(err) else ''})",
            hint="check the network (or HF_ENDPOINT); with HF_HUB_OFFLINE=1 only files "
                 "already downloaded are used")
    return NetworkError(f"downloading {what} failed: {type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''}")


# ---- metadata -----------------------------------------------------------------------------

def _head(repo: str, filename: str, revision: str) -> Any:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(repo, filename, revision=revision)
    try:
        # no retries with backoff here: an unreachable hub should say so at once, not in
        # 30 s; the body download below retries and resumes on its own
        meta = get_hf_file_metadata(url, retry_on_errors=False)
    except Exception as err:
        raise _friendly(err, repo, filename) from None
    if meta.size is None or meta.etag is None:
        raise NetworkError(f"{_endpoint()} did not give the size and hash of {filename}",
                           hint="is HF_ENDPOINT a Hugging Face hub?")
    return url, meta


def _hf_cached(repo: str, filename: str, etag: str, commit: str | None) -> Path | None:
    """The same content in the user's Hugging Face cache, if it is there."""
    from huggingface_hub import constants, try_to_load_from_cache

    folder = Path(constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--"))
    blob = folder / "blobs" / etag
    if blob.is_file():
        return blob
    if commit:
        hit = try_to_load_from_cache(repo, filename, revision=commit)
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    return None


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _remote(repo: str, filename: str, revision: str, dest: Path, partial_root: Path,
            catalog_sha: str | None = None, notes: list[str] | None = None) -> _Remote:
    url, meta = _head(repo, filename, revision)
    etag = meta.etag.lower()
    lfs_sha = etag if SHA256.match(etag) else None
    if catalog_sha and lfs_sha and catalog_sha.lower() != lfs_sha and notes is not None:
        # Publishers re-upload (a fixed chat template, say). The hub's own LFS hash is what the
        # bytes are checked against either way; refusing would strand every user until a
        # catalog release, so say it and go on.
        notes.append(f"{filename} on the hub (sha256 {lfs_sha[:12]}…) is newer than the one "
                     f"the catalog lists ({catalog_sha[:12]}…); verifying against the hub's hash")
    return _Remote(repo=repo, filename=filename, url=meta.location or url, size=int(meta.size),
                   etag=etag, commit=meta.commit_hash, dest=dest,
                   expected_sha=(lfs_sha or catalog_sha), partial_root=partial_root)


# ---- disk ---------------------------------------------------------------------------------

def _free_bytes(path: Path) -> int:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def fmt_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def _still_needed(r: _Remote) -> int:
    """Bytes this file will still take on disk: all of it, less a partial we resume, less
    nothing at all when it is already in place or can be hard-linked from the HF cache."""
    if r.dest.is_file() and r.dest.stat().st_size == r.size:
        return 0
    if r.cached is not None and _same_device(r.cached, r.dest):
        return 0
    have = r.partial.stat().st_size if r.partial.is_file() and _partial_matches(r) else 0
    return max(0, r.size - have)


def _same_device(a: Path, b: Path) -> bool:
    p = b
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return a.stat().st_dev == p.stat().st_dev
    except OSError:
        return False


def check_disk(needed: int, where: Path, what: str) -> None:
    free = _free_bytes(where)
    if needed + DISK_MARGIN > free:
        raise DiskSpaceError(
            f"not enough disk for {what}: it needs {fmt_size(needed)} more "
            f"(+{fmt_size(DISK_MARGIN)} margin) but {where} has {fmt_size(free)} free",
            hint="free some space, pick a smaller quant, or point R1LOCAL_MODELS elsewhere")


# ---- fetching one file --------------------------------------------------------------------

def _partial_matches(r: _Remote) -> bool:
    try:
        meta = json.loads(r.partial_meta.read_text())
    except (OSError, ValueError):
        return False
    return meta.get("etag") == r.etag and meta.get("size") == r.size


def _fetch(r: _Remote, progress: _Progress) -> None:
    """Bring r to r.partial (complete), resuming what an earlier run left there."""
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers, disable_progress_bars

    disable_progress_bars("huggingface_hub.http_get")  # ours is drawn instead (or the callback's)

    r.partial.parent.mkdir(parents=True, exist_ok=True)
    if r.partial.exists() and not _partial_matches(r):
        r.partial.unlink()  # left by another version of the file: start over
    r.partial_meta.write_text(json.dumps({"etag": r.etag, "size": r.size, "repo": r.repo,
                                          "file": r.filename, "commit": r.commit}))
    have = r.partial.stat().st_size if r.partial.exists() else 0
    if have > r.size:
        r.partial.unlink()
        have = 0
    label = Path(r.filename).name
    if have:
        progress.say(f"resuming {label} at {fmt_size(have)} of {fmt_size(r.size)}")
    progress.start(label, r.size, have, r.etag if SHA256.match(r.etag) else None)
    if have == r.size:
        progress.done()
        return
    headers = build_hf_headers()
    if _host(r.url) != _host(_endpoint()):
        headers.pop("authorization", None)  # a signed CDN url: the token stays on the hub
    try:
        with open(r.partial, "ab") as f:
            http_get(r.url, _CountingFile(f, progress), resume_size=have, headers=headers,
                     expected_size=r.size, displayed_filename=label)
    except (KeyboardInterrupt, R1LocalError):
        raise
    except OSError as err:
        if "Consistency check failed" in str(err):
            raise NetworkError(f"the download of {label} ended early", hint="run the same "
                               "pull again: it resumes where it stopped") from None
        raise _friendly_stopped(err, r) from None
    except Exception as err:
        raise _friendly_stopped(err, r) from None
    finally:
        progress.done()


def _friendly_stopped(err: BaseException, r: _Remote) -> R1LocalError:
    done = r.partial.stat().st_size if r.partial.exists() else 0
    base = _friendly(err, r.repo, Path(r.filename).name)
    return type(base)(f"{base.message}; stopped at {fmt_size(done)} of {fmt_size(r.size)}",
                      hint="run the same pull again: it resumes where it stopped")


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).netloc.lower()


def _link_or_copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".linking")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src.resolve(), tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def _verify(path: Path, r: _Remote, progress: _Progress, *, first: bool) -> str:
    """sha256 against the hub's hash, then the GGUF header; anything wrong deletes the file."""
    from r1local.ggufinfo import read_header

    label = Path(r.filename).name
    progress.say(f"verifying sha256 of {label}")
    digest = file_sha256(path)
    if r.expected_sha and digest != r.expected_sha:
        path.unlink(missing_ok=True)
        raise ModelFileError(
            f"{label} is damaged: its sha256 is {digest[:16]}… but the hub says "
            f"{r.expected_sha[:16]}…; the file was deleted",
            hint="run the same pull again to download it afresh")
    if label.endswith(".gguf"):
        try:
            read_header(path, max_array=256, check_architecture=first)
        except ModelFileError as err:
            path.unlink(missing_ok=True)
            raise ModelFileError(f"{label} from {r.repo} is not a usable GGUF ({err}); "
                                 "the file was deleted") from None
    return digest


def _bring(r: _Remote, progress: _Progress, *, first: bool) -> str:
    """Make r.dest the verified file; returns its sha256."""
    label = Path(r.filename).name
    if r.dest.is_file() and r.dest.stat().st_size == r.size:
        digest = file_sha256(r.dest)
        if not r.expected_sha or digest == r.expected_sha:
            progress.say(f"{label} is already in the store")
            return digest
    if r.cached is not None:
        progress.say(f"using {label} from the Hugging Face cache ({r.cached.parent.parent.name})")
        staged = r.partial.with_name(r.partial.name + ".cache")
        staged.parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(r.cached, staged)
        try:
            digest = _verify(staged, r, progress, first=first)
        except ModelFileError:
            progress.say(f"the cached copy of {label} is damaged; downloading it")
        else:
            r.dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, r.dest)
            return digest
    _fetch(r, progress)
    digest = _verify(r.partial, r, progress, first=first)
    r.dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(r.partial, r.dest)
    r.partial_meta.unlink(missing_ok=True)
    return digest


# ---- pull ---------------------------------------------------------------------------------

def pull(ref: str, *, quant: str | None = None, machine=None, from_source: bool = False,
         keep_source: bool = False, store: Store | None = None,
         progress: "bool | Callable[..., None]" = True, revision: str = "main") -> StoredModel:
    """Download (or build, with from_source) the model ``ref`` names into the store.

    ``ref`` is a catalog tag, alias or ``tag:QUANT``; ``quant`` overrides the quant. With no
    quant the planner picks the best one for ``machine`` (this one by default) and the
    reason is reported. ``progress``: True draws a bar on stderr, a callable receives
    Ollama-style dicts ({"status", "digest", "total", "completed"}), False is silent."""
    from r1local.catalog import load_catalog

    store = store or Store()
    catalog = load_catalog()
    mref = catalog.resolve(ref)
    variant = mref.variant
    if quant and mref.quant and quant.upper() != mref.quant.upper():
        raise UsageError(f"'{ref}' names quant {mref.quant} but --quant says {quant}")
    q = variant.quant(quant).quant if quant else mref.quant
    notes: list[str] = []
    if q is None:
        q, why = _choose_quant(variant, machine, store)
        notes.append(why)
    name = catalog_name(variant.tag, q)
    prog = _Progress(progress)
    try:
        if from_source:
            return _pull_source(variant, q, name, store, prog, notes, keep_source, revision)
        return _pull_gguf(variant, q, name, store, prog, notes, revision)
    finally:
        prog.close()


def _choose_quant(variant, machine, store: Store) -> tuple[str, str]:
    try:
        from r1local.hardware import probe
        from r1local.planner import choose_quant
    except ImportError:
        return variant.default_quant, (f"no planner available: using {variant.tag}'s default "
                                       f"quant {variant.default_quant}")
    machine = machine or probe(store.root)
    plan = choose_quant(variant, machine)
    if not plan.fits:
        return plan.quant, (f"{plan.quant} is the smallest {variant.tag} quant, and it does not "
                            f"fit this machine ({plan.reason}); downloading it anyway")
    return plan.quant, f"chose {variant.tag}:{plan.quant} for this machine: {plan.reason}"


def _pull_gguf(variant, q: str, name: str, store: Store, prog: _Progress, notes: list[str],
               revision: str) -> StoredModel:
    qf = variant.quant(q)
    folder = store.model_dir(name)
    existing = store.get(name)
    if _offline():
        return _pull_offline(variant, qf, name, store, prog, notes, existing)
    remotes: list[_Remote] = []
    for i, filename in enumerate(qf.files):
        sha = qf.sha256[i] if qf.sha256 else None
        r = _remote(variant.gguf_repo, filename, revision, folder / Path(filename).name,
                    _partial_root(store, name), sha, notes)
        revision = r.commit or revision  # every part of a split model from the same commit
        remotes.append(r)
    for n in notes:  # after the hub answered: a bad tag or no network fails before any note
        prog.say(n)
    if existing is not None and existing.present and existing.origin == "pull" and \
            tuple(existing.sha256) == tuple(r.expected_sha for r in remotes):
        prog.say(f"{name} is already in the store and up to date ({existing.revision or '?'})")
        return existing
    for r in remotes:
        r.cached = _hf_cached(r.repo, r.filename, r.etag, r.commit)
    total = sum(r.size for r in remotes)
    check_disk(sum(_still_needed(r) for r in remotes), store.root,
               f"{name} ({fmt_size(total)} in {len(remotes)} file{'s' * (len(remotes) > 1)})")
    if len(remotes) > 1:
        prog.say(f"{name} is split in {len(remotes)} parts ({fmt_size(total)})")
    digests = [_bring(r, prog, first=(i == 0)) for i, r in enumerate(remotes)]
    model = store.add(StoredModel(
        name=name, tag=variant.tag, quant=q, files=tuple(r.dest for r in remotes), size=total,
        source=variant.gguf_repo, revision=remotes[0].commit, sha256=tuple(digests),
        added_at="", origin="pull", sizes=tuple(r.size for r in remotes)))
    _tidy_partials(store, name)
    prog.say(f"pulled {name} ({fmt_size(model.size)}) into {folder}")
    return model


def _pull_offline(variant, qf, name: str, store: Store, prog: _Progress, notes: list[str],
                  existing: StoredModel | None) -> StoredModel:
    """HF_HUB_OFFLINE: the store's copy, else the user's HF cache, else one clear line."""
    from huggingface_hub import try_to_load_from_cache

    if existing is not None and existing.present:
        prog.say(f"{name} is already in the store (HF_HUB_OFFLINE is set: not checked for updates)")
        return existing
    found = []
    for filename in qf.files:
        hit = try_to_load_from_cache(variant.gguf_repo, filename)
        if not isinstance(hit, str):
            raise NetworkError(f"HF_HUB_OFFLINE is set, and {filename} is not in the Hugging "
                               "Face cache", hint="unset HF_HUB_OFFLINE to download it")
        found.append(Path(hit))
    for n in notes:
        prog.say(n)
    folder = store.model_dir(name)
    remotes = []
    for filename, hit in zip(qf.files, found):
        blob = hit.resolve()
        etag = blob.name if SHA256.match(blob.name) else ""
        remotes.append(_Remote(repo=variant.gguf_repo, filename=filename, url="", size=blob.stat().st_size,
                               etag=etag, commit=hit.parent.name, dest=folder / Path(filename).name,
                               expected_sha=etag or None, cached=blob,
                               partial_root=_partial_root(store, name)))
    check_disk(sum(_still_needed(r) for r in remotes), store.root, name)
    digests = [_bring(r, prog, first=(i == 0)) for i, r in enumerate(remotes)]
    return store.add(StoredModel(
        name=name, tag=variant.tag, quant=qf.quant, files=tuple(r.dest for r in remotes),
        size=sum(r.size for r in remotes), source=variant.gguf_repo, revision=remotes[0].commit,
        sha256=tuple(digests), added_at="", origin="pull"))


def _partial_root(store: Store, name: str) -> Path:
    return store.partial_dir() / store.model_dir(name).name


def _tidy_partials(store: Store, name: str) -> None:
    shutil.rmtree(_partial_root(store, name), ignore_errors=True)
    try:
        store.partial_dir().rmdir()
    except OSError:
        pass


# ---- --from-source --------------------------------------------------------------------------

def source_files(siblings: list[str]) -> list[str]:
    """The files a conversion needs out of a checkpoint repo's listing: config, tokenizer,
    and the safetensors the index names (or every top-level .safetensors without one)."""
    names = set(siblings)
    wanted = [f for f in SOURCE_FILES if f in names]
    wanted += sorted(f for f in names if f.endswith(".safetensors") and "/" not in f)
    return wanted


def _pull_source(variant, q: str, name: str, store: Store, prog: _Progress, notes: list[str],
                 keep_source: bool, revision: str) -> StoredModel:
    try:
        from quantize import convert
    except ImportError:
        raise R1LocalError("--from-source needs the quantize package, which this install "
                           "lacks", hint=f"pull the published GGUF instead: r1local pull {name}") from None
    try:
        from quantize import SUPPORTED_QUANTS
    except ImportError:
        SUPPORTED_QUANTS = None
    if SUPPORTED_QUANTS is not None and q.upper() not in {s.upper() for s in SUPPORTED_QUANTS}:
        raise UsageError(f"--from-source cannot make {q}",
                         hint=f"choose one of: {', '.join(SUPPORTED_QUANTS)} (with :QUANT)")
    from huggingface_hub import model_info

    repo = variant.source_repo
    if _offline():
        raise NetworkError("HF_HUB_OFFLINE is set: --from-source must download the checkpoint",
                           hint="unset HF_HUB_OFFLINE")
    try:
        info = model_info(repo, revision=revision)
    except Exception as err:
        raise _friendly(err, repo, "the model listing") from None
    commit = info.sha or revision
    siblings = [s.rfilename for s in (info.siblings or [])]
    index = None
    if "model.safetensors.index.json" in siblings:
        index = "model.safetensors.index.json"
    src_dir = store.root / ".source" / repo.replace("/", "--")
    wanted = source_files(siblings)
    src_partials = store.partial_dir() / f"source--{src_dir.name}"
    remotes = [_remote(repo, f, commit, src_dir / f, src_partials) for f in wanted]
    if index is not None:  # only the shards the index maps tensors to
        idx = next(r for r in remotes if r.filename == index)
        _bring(idx, prog, first=False)
        shards = set(json.loads(idx.dest.read_text())["weight_map"].values())
        remotes = [r for r in remotes if not r.filename.endswith(".safetensors")
                   or r.filename in shards]
    if not any(r.filename.endswith(".safetensors") for r in remotes):
        raise ModelFileError(f"{repo} has no safetensors weights to convert")
    for n in notes:
        prog.say(n)
    for r in remotes:
        r.cached = _hf_cached(r.repo, r.filename, r.etag, r.commit)
    src_total = sum(r.size for r in remotes)
    out_estimate = variant.quant(q).total_size if q in variant.quants else src_total
    check_disk(sum(_still_needed(r) for r in remotes) + out_estimate, store.root,
               f"{name} from source ({fmt_size(src_total)} of safetensors + about "
               f"{fmt_size(out_estimate)} of GGUF)")
    for r in remotes:
        if r.filename != index:
            _bring_plain(r, prog)
    folder = store.model_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{variant.name}-{q}.gguf"
    staging = store.partial_dir() / folder.name / out.name
    staging.parent.mkdir(parents=True, exist_ok=True)
    prog.say(f"converting {repo} to {q}")
    try:
        made = Path(convert(src_dir, staging, q, force=True, revision=commit,
                            progress=prog.terminal))
    except Exception as err:
        if type(err).__name__ == "ConvertError":
            raise R1LocalError(f"converting {repo} failed: {err}") from None
        raise
    from r1local.ggufinfo import read_header

    try:
        read_header(made, max_array=256, check_architecture=True)
    except ModelFileError as err:
        made.unlink(missing_ok=True)
        raise ModelFileError(f"the conversion of {repo} produced an unusable GGUF ({err})") from None
    digest = file_sha256(made)
    os.replace(made, out)
    if not keep_source:
        shutil.rmtree(src_dir, ignore_errors=True)
        try:
            src_dir.parent.rmdir()
        except OSError:
            pass
    else:
        prog.say(f"kept the original checkpoint in {src_dir}")
    model = store.add(StoredModel(
        name=name, tag=variant.tag, quant=q, files=(out,), size=out.stat().st_size,
        source=repo, revision=commit, sha256=(digest,), added_at="", origin="source"))
    _tidy_partials(store, name)
    shutil.rmtree(src_partials, ignore_errors=True)
    prog.say(f"built {name} ({fmt_size(model.size)}) from {repo} into {folder}")
    return model


def _bring_plain(r: _Remote, prog: _Progress) -> None:
    """A checkpoint file: LFS files checked against their sha256, small ones against the
    git blob hash the hub gives as their ETag."""
    if r.expected_sha:
        _bring(r, prog, first=False)
        return
    if r.dest.is_file() and _git_sha1(r.dest) == r.etag:
        return
    _fetch(r, prog)
    if re.fullmatch(r"[0-9a-f]{40}", r.etag) and _git_sha1(r.partial) != r.etag:
        r.partial.unlink(missing_ok=True)
        raise ModelFileError(f"{r.filename} from {r.repo} is damaged (git hash mismatch); "
                             "deleted it", hint="run the same pull again")
    r.dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(r.partial, r.dest)
    r.partial_meta.unlink(missing_ok=True)


def _git_sha1(path: Path) -> str:
    import hashlib

    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
