"""One file from the Hugging Face hub to its place in the store: resumable, then verified.

Of huggingface_hub this uses the file metadata HEAD (`get_hf_file_metadata`: LFS sha256,
size, commit, CDN location), its HTTP GET (`http_get`, which sends ``Range`` from a resume
offset), its token and endpoint settings and its cache layout: a file already in the user's
HF cache is linked (or copied), not fetched again.

Why not `hf_hub_download`: it writes each download to a process-unique
``<etag>.<uuid>.incomplete`` file and deletes it on failure, so an interrupted download
restarts from zero. Here a file goes to ``<store>/.partial/<model>/<file>.partial``, with the
etag it belongs to beside it, and the next try asks for ``Range: bytes=<partial size>-``.
Bytes always come over plain HTTP from the resolve redirect, never through Xet.

One process at a time writes a partial: each file is brought under a lock beside it
(``<file>.partial.lock``); a second pull of the same file waits, then finds it in place.

A file takes its place only once its sha256 equals the hub's LFS hash and, for a GGUF, its
header reads back valid; otherwise it is deleted and the error says so. A catalog that pins
another sha256 than the hub's stops the pull, unless the user trusts the hub (a re-upload).
Small files (a checkpoint's configs) have no LFS hash: they are checked against the git blob
sha1 that the hub gives as their ETag.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from r1local.errors import DiskSpaceError, ModelFileError, NetworkError, R1LocalError
from r1local.hub.errors import endpoint, hub_error
from r1local.hub.progress import CountingFile, Progress
from r1local.locks import file_lock, try_lock
from r1local.store import Store, file_sha256
from r1local.units import fmt_bytes

SHA256 = re.compile(r"^[0-9a-f]{64}$")
GIT_SHA1 = re.compile(r"^[0-9a-f]{40}$")
DISK_MARGIN = 64 << 20  # keep a little free beyond the files themselves
# http_get writes what it reads in pieces of this size: what a kill -9 can lose of a download
RESUME_GRAIN = 256 << 10


@dataclass
class Remote:
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
    def label(self) -> str:
        return Path(self.filename).name

    @property
    def partial(self) -> Path:
        return self.partial_root / (self.dest.name + ".partial")

    @property
    def partial_meta(self) -> Path:
        return self.partial.with_name(self.partial.name + ".json")

    @property
    def lock(self) -> Path:
        return self.partial.with_name(self.partial.name + ".lock")


# ---- asking the hub ------------------------------------------------------------------------

def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def remote(repo: str, filename: str, revision: str, dest: Path, partial_root: Path,
           catalog_sha: str | None = None, notes: list[str] | None = None, *,
           trust_hub: bool = False) -> Remote:
    """The hub's answer for ``filename`` at ``revision``, to be fetched to ``dest``; a
    catalog hash that differs from the hub's stops here (see ``expected_sha``)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(repo, filename, revision=revision)
    try:
        # no retries with backoff: an unreachable hub should say so at once, not in 30 s;
        # the body download retries and resumes on its own
        meta = get_hf_file_metadata(url, retry_on_errors=False)
    except Exception as err:
        raise hub_error(err, repo, filename) from None
    if meta.size is None or meta.etag is None:
        raise NetworkError(f"{endpoint()} did not give the size and hash of {filename}",
                           hint="is HF_ENDPOINT a Hugging Face hub?")
    etag = meta.etag.lower()
    lfs_sha = etag if SHA256.match(etag) else None
    return Remote(repo=repo, filename=filename, url=meta.location or url, size=int(meta.size),
                  etag=etag, commit=meta.commit_hash, dest=dest,
                  expected_sha=expected_sha(filename, catalog_sha, lfs_sha, trust_hub, notes),
                  partial_root=partial_root)


def expected_sha(filename: str, catalog_sha: str | None, hub_sha: str | None,
                 trust_hub: bool, notes: list[str] | None) -> str | None:
    """The sha256 the file must have. Where the catalog pins one and the hub (or the HF
    cache) states another, the pull stops: a mirror serving some other file must not be
    registered under a catalog name. ``trust_hub`` is the user's word that it is a
    publisher's re-upload: then the hub's hash governs, and a note says so."""
    catalog_sha = catalog_sha.lower() if catalog_sha else None
    if not (catalog_sha and hub_sha) or catalog_sha == hub_sha:
        return hub_sha or catalog_sha
    if not trust_hub:
        raise ModelFileError(
            f"{filename} on {endpoint()} has sha256 {hub_sha[:16]}… but the catalog pins "
            f"{catalog_sha[:16]}…: not the file the catalog names, so it is not downloaded",
            hint="if the publisher re-uploaded it, add --trust-hub to take the hub's file "
                 "(still checked against the hub's hash)")
    if notes is not None:
        notes.append(f"{filename} on the hub (sha256 {hub_sha[:12]}…) is newer than the one "
                     f"the catalog lists ({catalog_sha[:12]}…); verifying against the hub's "
                     "hash (--trust-hub)")
    return hub_sha


def in_hf_cache(r: Remote) -> Path | None:
    """The same content in the user's Hugging Face cache, if it is there."""
    from huggingface_hub import constants, try_to_load_from_cache

    folder = Path(constants.HF_HUB_CACHE) / ("models--" + r.repo.replace("/", "--"))
    blob = folder / "blobs" / r.etag
    if blob.is_file():
        return blob
    if r.commit:
        hit = try_to_load_from_cache(r.repo, r.filename, revision=r.commit)
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    return None


# ---- disk ----------------------------------------------------------------------------------

def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _same_device(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_dev == _existing_parent(b).stat().st_dev
    except OSError:
        return False


def still_needed(r: Remote) -> int:
    """Bytes this file will still take on disk: all of it, less a partial we resume, less
    nothing at all when it is already in place or can be hard-linked from the HF cache."""
    if r.dest.is_file() and r.dest.stat().st_size == r.size:
        return 0
    if r.cached is not None and _same_device(r.cached, r.dest):
        return 0
    have = r.partial.stat().st_size if r.partial.is_file() and _partial_matches(r) else 0
    return max(0, r.size - have)


def check_disk(needed: int, where: Path, what: str) -> None:
    """Refuse before the first byte when ``needed`` more bytes will not fit under ``where``."""
    free = shutil.disk_usage(_existing_parent(where)).free
    if needed + DISK_MARGIN > free:
        raise DiskSpaceError(
            f"not enough disk for {what}: it needs {fmt_bytes(needed)} more "
            f"(+{fmt_bytes(DISK_MARGIN)} margin) but {where} has {fmt_bytes(free)} free",
            hint="free some space, pick a smaller quant, or point R1LOCAL_MODELS elsewhere")


def partial_root(store: Store, name: str) -> Path:
    """Where the downloads in progress of the model ``name`` live."""
    return store.partial_dir() / store.model_dir(name).name


def tidy_partials(store: Store, name: str) -> None:
    """After a pull: what its downloads left, and the folders once empty."""
    tidy(partial_root(store, name))
    try:
        store.partial_dir().rmdir()  # only once no other model has one in progress
    except OSError:
        pass


def tidy(folder: Path) -> None:
    """Delete what downloads left in ``folder``, then the folder if that empties it; but not
    the files of a download in progress: each partial has a lock beside it, and a file whose
    lock another pull holds stays. (A pull waiting on a lock deleted here takes a new one:
    store.file_lock.)"""
    held = {}
    try:
        for lock in folder.glob("*.partial.lock"):
            f = try_lock(lock)
            if f is not None:
                held[lock] = f
        # a lock after the files it guards: it is let go of only once they are gone
        for p in sorted(folder.iterdir(), key=lambda p: p.name.endswith(".lock")):
            lock = _lock_of(p)
            if lock is not None and lock not in held and lock.exists():
                continue  # another pull's (its lock may be newer than the glob above)
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        folder.rmdir()
    except OSError:  # no folder, or something stays in it
        pass
    finally:
        for f in held.values():
            f.close()


def _lock_of(path: Path) -> Path | None:
    """The lock of a download's file (``x.partial``, ``x.partial.json``, ... ->
    ``x.partial.lock``); None for a file no download writes."""
    cut = path.name.find(".partial")
    return path.with_name(path.name[: cut + len(".partial")] + ".lock") if cut > 0 else None


@contextlib.contextmanager
def _one_writer(r: Remote, progress: Progress) -> Iterator[None]:
    """The file is this process's to bring until the block ends: two pulls appending to one
    partial (and one still writing after the other renamed it into place) is how a verified
    file ended up longer than its manifest says."""
    with file_lock(r.lock, on_wait=lambda: progress.say(
            f"another pull of {r.label} is in progress; waiting")):
        yield


# ---- downloading ---------------------------------------------------------------------------

def _partial_matches(r: Remote) -> bool:
    try:
        meta = json.loads(r.partial_meta.read_text())
    except (OSError, ValueError):
        return False
    return meta.get("etag") == r.etag and meta.get("size") == r.size


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).netloc.lower()


def _download(r: Remote, progress: Progress) -> None:
    """Bring r to r.partial (complete), resuming what an earlier run left there."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers, disable_progress_bars

    disable_progress_bars("huggingface_hub.http_get")  # ours is drawn instead (or the callback's)
    # http_get reads DOWNLOAD_CHUNK_SIZE (10 MiB) before each write, so a kill lost up to that
    # much of what had arrived; this process downloads nothing for which bigger pieces matter
    constants.DOWNLOAD_CHUNK_SIZE = min(constants.DOWNLOAD_CHUNK_SIZE, RESUME_GRAIN)

    r.partial.parent.mkdir(parents=True, exist_ok=True)
    if r.partial.exists() and not _partial_matches(r):
        r.partial.unlink()  # left by another version of the file: start over
    r.partial_meta.write_text(json.dumps({"etag": r.etag, "size": r.size, "repo": r.repo,
                                          "file": r.filename, "commit": r.commit}))
    have = r.partial.stat().st_size if r.partial.exists() else 0
    if have > r.size:
        r.partial.unlink()
        have = 0
    if have:
        progress.say(f"resuming {r.label} at {fmt_bytes(have)} of {fmt_bytes(r.size)}")
    progress.start(r.label, r.size, have, r.etag if SHA256.match(r.etag) else None)
    if have == r.size:
        progress.done()
        return
    headers = build_hf_headers()
    if _host(r.url) != _host(endpoint()):
        headers.pop("authorization", None)  # a signed CDN url: the token stays on the hub
    try:
        with open(r.partial, "ab") as f:
            http_get(r.url, CountingFile(f, progress), resume_size=have, headers=headers,
                     expected_size=r.size, displayed_filename=r.label)
    except (KeyboardInterrupt, R1LocalError):
        raise
    except OSError as err:
        if "Consistency check failed" in str(err):  # http_get's words for a short body
            raise NetworkError(f"the download of {r.label} ended early", hint="run the same "
                               "pull again: it resumes where it stopped") from None
        raise _stopped(err, r) from None
    except Exception as err:
        raise _stopped(err, r) from None
    finally:
        progress.done()


def _stopped(err: BaseException, r: Remote) -> R1LocalError:
    done = r.partial.stat().st_size if r.partial.exists() else 0
    base = hub_error(err, r.repo, r.label)
    return type(base)(f"{base.message}; stopped at {fmt_bytes(done)} of {fmt_bytes(r.size)}",
                      hint="run the same pull again: it resumes where it stopped")


def _link_or_copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".linking")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src.resolve(), tmp)
    except OSError:  # another file system, or one without hard links
        shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def _settle(r: Remote) -> None:
    """The complete, verified r.partial becomes r.dest."""
    r.dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(r.partial, r.dest)
    r.partial_meta.unlink(missing_ok=True)


# ---- verifying -----------------------------------------------------------------------------

def _verify(path: Path, r: Remote, progress: Progress, *, first: bool) -> str:
    """sha256 against the hub's hash, then the GGUF header; anything wrong deletes the file."""
    from r1local.ggufinfo import read_header

    progress.say(f"verifying sha256 of {r.label}")
    digest = file_sha256(path)
    if r.expected_sha and digest != r.expected_sha:
        path.unlink(missing_ok=True)
        raise ModelFileError(
            f"{r.label} is damaged: its sha256 is {digest[:16]}… but the hub says "
            f"{r.expected_sha[:16]}…; the file was deleted",
            hint="run the same pull again to download it afresh")
    if r.label.endswith(".gguf"):
        try:
            # the architecture is in the first part of a split model only
            read_header(path, max_array=256, check_architecture=first)
        except ModelFileError as err:
            path.unlink(missing_ok=True)
            raise ModelFileError(f"{r.label} from {r.repo} is not a usable GGUF ({err}); "
                                 "the file was deleted") from None
    return digest


def _in_place(r: Remote, progress: Progress) -> str | None:
    """r.dest's sha256 when it is already the file r describes. A file there that is not
    (another size, another hash) is said, and None: it is to be downloaded again."""
    try:
        have = r.dest.stat().st_size
    except FileNotFoundError:
        return None
    if have == r.size:
        digest = file_sha256(r.dest)
        if not r.expected_sha or digest == r.expected_sha:
            progress.say(f"{r.label} is already in the store")
            return digest
        why = f"its sha256 is {digest[:12]}…, not {r.expected_sha[:12]}…"
    else:
        why = f"it is {have:,} bytes, not {r.size:,}"
    progress.say(f"{r.label} in the store is not the hub's file ({why}); downloading it again")
    return None


def bring(r: Remote, progress: Progress, *, first: bool) -> str:
    """Make r.dest the verified file, from the store, the HF cache or the hub; returns its
    sha256. ``first``: the file is a GGUF's first part (it names the architecture)."""
    with _one_writer(r, progress):
        digest = _in_place(r, progress)  # (again after a wait: the other pull may have brought it)
        if digest is not None:
            return digest
        if r.cached is not None:
            progress.say(f"using {r.label} from the Hugging Face cache "
                         f"({r.cached.parent.parent.name})")
            staged = r.partial.with_name(r.partial.name + ".cache")
            _link_or_copy(r.cached, staged)
            try:
                digest = _verify(staged, r, progress, first=first)
            except ModelFileError:
                progress.say(f"the cached copy of {r.label} is damaged; downloading it")
            else:
                r.dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, r.dest)
                return digest
        _download(r, progress)
        digest = _verify(r.partial, r, progress, first=first)
        _settle(r)
        return digest


def _git_sha1(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def bring_plain(r: Remote, progress: Progress) -> None:
    """A checkpoint file: LFS files checked against their sha256, small ones against the
    git blob hash the hub gives as their ETag."""
    if r.expected_sha:
        bring(r, progress, first=False)
        return
    with _one_writer(r, progress):
        if r.dest.is_file() and _git_sha1(r.dest) == r.etag:
            return
        _download(r, progress)
        if GIT_SHA1.match(r.etag) and _git_sha1(r.partial) != r.etag:
            r.partial.unlink(missing_ok=True)
            raise ModelFileError(f"{r.filename} from {r.repo} is damaged (git hash mismatch); "
                                 "deleted it", hint="run the same pull again")
        _settle(r)
