"""The local model store: GGUF files under one folder and a JSON manifest saying what they are.

Layout under ``models_dir()`` (R1LOCAL_MODELS, else R1LOCAL_HOME/models):

    manifest.json            every entry: name, tag, quant, files, sizes, sha256, source, revision
    7b@Q4_K_M/<file>.gguf    a catalog pull ("7b:Q4_K_M"); split models keep every part here
    my-model/<file>.gguf     an import named "my-model" (or no file at all with --link)
    .partial/                downloads in progress (the hub resumes them)

Names never become paths unchecked: catalog names are ``tag@QUANT`` built from the catalog's
own tags, and import names must match NAME_PATTERN (no separators, no "..", no ":" or "@"),
so a name can neither leave the store nor collide with a pull. The manifest is rewritten
whole into a temporary file and renamed, under a lock, so a crash never leaves half of it.

A damaged manifest never stops a command: an entry that cannot be used is skipped (one
warning naming it), and a file that cannot be parsed at all is kept aside as
``manifest.json.bad`` and rebuilt from the GGUF files in the model folders.

(Longer than our other modules: every change to the manifest — add, remove, rebuild,
import — must take the same lock and keep the same rules for names and files, and those
rules are easiest to check when they are read in one place. Parsing a damaged manifest
lives in manifest.py and the locks in locks.py.)
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import difflib
import errno
import json
import os
import re
import shutil
import stat
import threading
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from r1local.errors import (DiskSpaceError, ModelFileError, R1LocalError, UnknownModelError,
                            UsageError)
from r1local import manifest
from r1local.locks import file_lock
from r1local.units import fmt_bytes

if TYPE_CHECKING:
    from r1local.catalog import Catalog

MANIFEST = "manifest.json"
MANIFEST_SCHEMA = 1
PARTIAL_DIR = ".partial"
# an import name: a letter or digit, then letters, digits, "-", "_", "." (no "..")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
MAX_NAME = 255  # one path component on the common file systems: no longer name can be stored


@dataclass(frozen=True)
class StoredModel:
    name: str  # "7b:Q4_K_M" for catalog pulls, the --name for imports
    tag: str | None  # catalog tag, None for imports
    quant: str
    files: tuple[Path, ...]  # absolute paths; the first one is what llama.cpp is given
    size: int
    source: str | None  # hub repo id, or the original path of an import
    revision: str | None  # hub commit the files came from
    sha256: tuple[str, ...]
    added_at: str  # ISO 8601, UTC
    origin: str = "pull"  # "pull" | "source" (converted locally) | "import"
    linked: bool = False  # an import that points at the user's file instead of a copy
    sizes: tuple[int, ...] = ()

    @property
    def path(self) -> Path:
        return self.files[0]

    @property
    def present(self) -> bool:
        return all(_file_size(f) is not None for f in self.files)

    def size_problem(self) -> str | None:
        """Which file no longer has the size its manifest entry says, in words; None when all
        do (a stat per file, no hashing). A linked import is the user's file: not checked."""
        if self.linked or len(self.sizes) != len(self.files):
            return None
        for f, want in zip(self.files, self.sizes):
            have = _file_size(f)
            if have is not None and have != want:
                return f"{f.name} is {have:,} bytes, not the {want:,} of its manifest entry"
        return None


def _file_size(path: Path) -> int | None:
    """The size of a regular file, or None for anything else, a name too long or with a NUL
    included (paths come from the manifest, which may be damaged)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def check_name(name: str) -> str:
    """An import name that is safe to use as a folder name; UsageError otherwise."""
    if not NAME_PATTERN.match(name) or ".." in name:
        raise UsageError(
            f"'{_short(name)}' cannot be a model name",
            hint="use letters, digits, '-', '_' or '.', starting with a letter or digit, "
                 "at most 80 characters (no '/', '..', ':' or '@')")
    return name


def check_ref(ref: str) -> str:
    """A reference to look up in the store by name (a store name, a tag, an alias), refused
    with a UsageError when it could only be a path or is too long for any name."""
    text = ref.strip()
    if len(text) > MAX_NAME:
        raise UsageError(f"'{text[:40]}…' ({len(text)} characters) cannot be a model name",
                         hint=f"names are at most {MAX_NAME} characters; `r1local list` "
                              "shows what is in the store")
    if not text or text.startswith(".") or any(c in text for c in "/\\\0"):
        raise UsageError(f"'{text}' cannot be a model name",
                         hint="give a name from `r1local list`, a tag like 7b, or 7b:Q4_K_M")
    return text


def catalog_name(tag: str, quant: str) -> str:
    return f"{tag}:{quant.upper()}"


def _dir_name(name: str) -> str:
    """The folder of an entry. Catalog names become tag@QUANT; import names are used as
    they are, after check_name. Anything else is refused, never joined to a path."""
    if ":" in name:
        tag, _, quant = name.partition(":")
        for part in (tag, quant):
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", part) or ".." in part \
                    or len(name) > MAX_NAME:
                raise UsageError(f"'{_short(name)}' cannot be a model name")
        return f"{tag}@{quant}"
    return check_name(name)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _unusable(name: str, rec: Any) -> str | None:
    """Why a manifest entry cannot be used, in a few words; None when it can."""
    try:
        _dir_name(name)
    except UsageError:
        return "not a model name"
    return manifest.unusable(rec)


class Store:
    def __init__(self, root: Path | None = None) -> None:
        if root is None:
            from r1local.locations import models_dir

            root = models_dir()
        self.root = Path(root).expanduser()
        self._held = threading.local()  # this thread's depth inside _locked

    # ---- paths --------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def model_dir(self, name: str) -> Path:
        """Where an entry's files live (not created)."""
        return self.root / _dir_name(name)

    def partial_dir(self) -> Path:
        return self.root / PARTIAL_DIR

    # ---- manifest -----------------------------------------------------------------------
    def _read(self) -> dict[str, Any]:
        """Every entry as stored, the damaged ones included (a rewrite keeps them)."""
        path = self.manifest_path
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            # no manifest but model folders: rebuilt. Not under the lock, where a writer (the
            # very first pull, say) is about to write it.
            in_writer = getattr(self._held, "depth", 0)
            return {} if in_writer or not self._scan(headers=False) else self._rebuild()
        except IsADirectoryError:
            raise ModelFileError(f"{path} is a directory, not the store manifest",
                                 hint=f"move it out of the way (`mv {path} {path}.dir`); "
                                      "r1local then rebuilds the manifest from the model "
                                      "folders") from None
        except OSError as err:
            raise ModelFileError(f"cannot read the store manifest {path} ({err.strerror})",
                                 hint="check its permissions") from None
        models, _ = manifest.parse(data)
        return models if models is not None else self._rebuild()

    def _rebuild(self) -> dict[str, Any]:
        """Keep an unreadable manifest aside (if there is one) and write one from the model
        folders."""
        path, why = self.manifest_path, ""
        try:
            with self._locked():
                try:  # another process may have rebuilt it while this one waited for the lock
                    models, why = manifest.parse(path.read_bytes())
                except FileNotFoundError:
                    models = None
                if models is not None:
                    return models
                if why:
                    bad = manifest.aside(path)
                    os.replace(path, bad)
                models = self._scan()
                self._write(models)
        except OSError as err:  # a store this user may read but not write
            raise ModelFileError(f"the store manifest {path} "
                                 f"{f'is damaged ({why})' if why else 'is missing'} and cannot "
                                 f"be rebuilt ({err.strerror or err})",
                                 hint=f"make {self.root} writable, or move the manifest away "
                                      "and import the models again") from None
        what = (f"could not be read ({why}): kept it as {bad.name} and rebuilt it" if why
                else "was missing: rebuilt it")
        manifest.warn(f"the store manifest {what} from the model folders ({len(models)} found; "
              "imports made with --link must be imported again)")
        return models

    def _scan(self, headers: bool = True) -> dict[str, dict]:
        """Manifest entries for the GGUF files in the store's folders: ``tag@QUANT/`` is the
        catalog pull ``tag:QUANT``, any other folder an import (its quant read from the
        header, unless not ``headers``). Sizes are measured; the sha256 is left unknown: the
        next pull of the model hashes the files against the hub's."""
        from r1local.ggufinfo import read_header

        models: dict[str, dict] = {}
        try:
            folders = sorted(p for p in self.root.iterdir() if p.is_dir())
        except OSError:
            return models
        for folder in folders:
            tag, at, quant = folder.name.partition("@")
            name = catalog_name(tag, quant) if at else folder.name
            try:
                if _dir_name(name) != folder.name:  # e.g. 7b@q4_k_m: not a folder r1local made
                    continue
            except UsageError:  # .partial, .source, or no name of ours
                continue
            files = sorted(f for f in folder.iterdir() if f.name.endswith(".gguf")
                           and _file_size(f) is not None)
            if not files:
                continue
            if not at:
                try:
                    quant = read_header(files[0], max_array=256).quant if headers else "?"
                except (R1LocalError, OSError, ValueError):
                    quant = "?"
            sizes = tuple(f.stat().st_size for f in files)
            models[name] = self._to_record(StoredModel(
                name=name, tag=tag if at else None, quant=quant, files=tuple(files),
                size=sum(sizes), source=None, revision=None, sha256=(), added_at=_utcnow(),
                origin="pull" if at else "import", sizes=sizes))
        return models

    def _usable(self) -> dict[str, StoredModel]:
        """The entries that can be used; the others are named in one warning."""
        good, bad = {}, []
        for name, rec in sorted(self._read().items()):
            why = _unusable(name, rec)
            if why is None:
                good[name] = self._from_record(name, rec)
            else:
                bad.append(f"'{_short(name)}' ({why})")
        if bad:
            manifest.warn(f"skipped {len(bad)} damaged entr{'y' if len(bad) == 1 else 'ies'} of the "
                  f"store manifest: {', '.join(bad)}; `r1local rm NAME` drops one, or fix it "
                  f"in {self.manifest_path}")
        return good

    def _write(self, models: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.manifest_path.with_name(MANIFEST + ".partial")
        data = {"schema": MANIFEST_SCHEMA, "models": dict(sorted(models.items()))}
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.manifest_path)
        except BaseException as err:
            tmp.unlink(missing_ok=True)  # never a half-written manifest left beside the real one
            if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskSpaceError(f"the disk is full: the store manifest "
                                     f"{self.manifest_path} could not be rewritten",
                                     hint=f"free some space on {self.root}") from None
            raise

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time (two pulls finishing together must not lose an entry).
        Re-entrant within a thread: a read under the lock may have to rebuild the manifest."""
        depth = getattr(self._held, "depth", 0)
        if depth:
            self._held.depth = depth + 1
            try:
                yield
            finally:
                self._held.depth = depth
            return
        with file_lock(self.root / ".lock"):
            self._held.depth = 1
            try:
                yield
            finally:
                self._held.depth = 0

    def _to_record(self, m: StoredModel) -> dict:
        rec = asdict(m)
        rec.pop("name")
        files = []
        for f in m.files:
            try:  # relative inside the store, so the whole store can be moved
                files.append(Path(f).resolve().relative_to(self.root.resolve()).as_posix())
            except ValueError:
                files.append(str(Path(f).resolve()))
        rec["files"] = files
        rec["sha256"] = list(m.sha256)
        rec["sizes"] = list(m.sizes)
        return rec

    def _from_record(self, name: str, rec: dict) -> StoredModel:
        """An entry that _unusable passed."""
        files = tuple(f if f.is_absolute() else self.root / f for f in map(Path, rec["files"]))
        return StoredModel(
            name=name, tag=rec.get("tag"), quant=rec.get("quant") or "?", files=files,
            size=int(rec.get("size") or 0), source=rec.get("source"),
            revision=rec.get("revision"), sha256=tuple(rec.get("sha256") or ()),
            added_at=rec.get("added_at") or "", origin=rec.get("origin") or "pull",
            linked=bool(rec.get("linked")), sizes=tuple(rec.get("sizes") or ()))

    @staticmethod
    def _key(models: dict[str, Any], name: str) -> str | None:
        """The manifest key that ``name`` names (case does not matter)."""
        want = name.strip().lower()
        return next((k for k in models if k.lower() == want), None)

    # ---- queries ------------------------------------------------------------------------
    def list(self) -> list[StoredModel]:
        return list(self._usable().values())

    def get(self, name: str) -> StoredModel | None:
        if len(name.strip()) > MAX_NAME:  # no entry can have it: each name is a folder
            return None
        models = self._usable()
        key = self._key(models, name)
        return models[key] if key is not None else None

    def find(self, ref: str, catalog: Catalog) -> StoredModel | None:
        """``7b`` (the catalog's default quant first, then larger files), ``7b:q4_k_m``,
        an alias (``qwen-7b``), or an import name."""
        hit = self.get(ref)
        if hit is not None or len(ref.strip()) > MAX_NAME:
            return hit
        try:
            mref = catalog.resolve(ref)
        except UnknownModelError:
            return None
        variant = mref.variant
        if mref.quant:
            return self.get(catalog_name(variant.tag, mref.quant))
        mine = [m for m in self.list() if m.tag == variant.tag and m.origin != "import"]
        if not mine:
            return None
        mine.sort(key=lambda m: (m.quant.upper() != variant.default_quant, -m.size))
        return mine[0]

    def names(self) -> list[str]:
        return sorted(self._usable())

    def damaged(self, name: str) -> str | None:
        """The key of a manifest entry named ``name`` that cannot be used, if there is one."""
        models = self._read()
        key = self._key(models, name)
        return key if key is not None and _unusable(key, models[key]) else None

    def unknown(self, name: str) -> UnknownModelError:
        """The error for a name the store does not have, with the closest it does."""
        close = difflib.get_close_matches(name, self.names(), n=3, cutoff=0.4)
        return UnknownModelError(f"'{_short(name)}' is not in the store",
                                 hint=f"did you mean {' or '.join(close)}?" if close
                                 else "`r1local list` shows what is there")

    # ---- changes ------------------------------------------------------------------------
    def add(self, model: StoredModel) -> StoredModel:
        """Record a model whose files are already in place (replacing an entry of that name)."""
        _dir_name(model.name)
        for f in model.files:
            if not Path(f).is_file():
                raise ModelFileError(f"cannot register {model.name}: {f} is missing")
        if not model.sizes:
            model = replace(model, sizes=tuple(Path(f).stat().st_size for f in model.files))
        if not model.added_at:
            model = replace(model, added_at=_utcnow())
        model = replace(model, files=tuple(Path(f).resolve() for f in model.files),
                        size=sum(model.sizes))
        with self._locked():
            models = self._read()
            for k in [k for k in models if k.lower() == model.name.lower()]:
                del models[k]
            models[model.name] = self._to_record(model)
            self._write(models)
        return model

    def remove(self, name: str) -> StoredModel | None:
        """Delete an entry's files (never a linked import's own file), then forget it; None
        for a damaged entry (its folder is deleted, the paths it lists are not trusted).
        Files first: on a full disk that is what makes room for the new manifest."""
        check_ref(name)
        with self._locked():
            models = self._read()
            key = self._key(models, name)
            if key is None:
                raise self.unknown(name)
            folder = self.model_dir(key)  # a crafted key is refused here, before any change
            usable = _unusable(key, models[key]) is None
            model = self._from_record(key, models[key]) if usable else None
            del models[key]
            deleted = self._delete(model, folder, self._files_in_use(models))
            try:
                self._write(models)
            except DiskSpaceError:
                gone = "its files are deleted but " if deleted else ""
                raise DiskSpaceError(f"{key}: {gone}the disk is full, so the store manifest "
                                     "could not be rewritten and still lists it",
                                     hint=f"free some space on {self.root}, then "
                                          f"`r1local rm {key}` again") from None
        return model

    def _files_in_use(self, models: dict[str, Any]) -> set[Path]:
        """The resolved files the usable entries of ``models`` list."""
        used: set[Path] = set()
        for name, rec in models.items():
            if _unusable(name, rec) is None:
                used.update(Path(f).resolve() for f in self._from_record(name, rec).files)
        return used

    def _delete(self, model: StoredModel | None, folder: Path,
                in_use: frozenset[Path] | set[Path] = frozenset()) -> bool:
        """Delete what the store holds of an entry, except files another entry lists
        (``in_use``); whether anything was deleted."""
        root = self.root.resolve()
        deleted = False
        if model is not None and not model.linked:
            for f in model.files:
                p = Path(f)
                if p.resolve() in in_use:
                    continue
                if p.resolve().is_relative_to(root) and _file_size(p) is not None:
                    p.unlink()  # never outside the store
                    deleted = True
        shared = any(u.is_relative_to(folder.resolve()) for u in in_use)
        if folder.is_dir() and folder.resolve().is_relative_to(root) and not shared:
            shutil.rmtree(folder, ignore_errors=True)
            deleted = True
        return deleted

    def copy(self, source: str, dest: str) -> StoredModel:
        """A second name for a stored model, as an import named ``dest``. Its files are hard
        links to the source's, so no byte is duplicated and either name can be removed
        without the other losing a file; where the file system has no hard links they are
        copied (after a disk-space check). A linked import's copy points at the same file."""
        check_name(dest)
        with self._locked():
            models = self._read()
            key = self._key(models, source)
            if key is None or _unusable(key, models[key]) is not None:
                raise self.unknown(source)
            if self._key(models, dest) is not None:
                raise UsageError(f"'{dest}' is already in the store",
                                 hint="choose another name, or remove that one first")
            src = self._from_record(key, models[key])
            missing = [f for f in src.files if _file_size(f) is None]
            if missing:
                raise ModelFileError(f"{src.name} is in the store but {missing[0]} is gone")
            files = src.files if src.linked else self._link_files(src.files, self.model_dir(dest))
            model = replace(src, name=dest, tag=None, origin="import", files=files,
                            added_at=_utcnow())
            return self.add(model)

    def _link_files(self, files: tuple[Path, ...], folder: Path) -> tuple[Path, ...]:
        """Each of ``files`` in ``folder`` under its own name: a hard link, else a copy;
        written as .partial and renamed, so a half-made file never has the final name."""
        folder.mkdir(parents=True, exist_ok=True)
        out = []
        for f in files:
            target = folder / Path(f).name
            tmp = target.with_name(target.name + ".partial")
            tmp.unlink(missing_ok=True)
            try:
                os.link(f, tmp)
            except OSError:  # no hard links here (or across devices): a real copy
                need, free = Path(f).stat().st_size, shutil.disk_usage(folder).free
                if need > free:
                    raise DiskSpaceError(f"copying {Path(f).name} needs {fmt_bytes(need)} but "
                                         f"{folder} has {fmt_bytes(free)} free",
                                         hint="free some space") from None
                shutil.copyfile(f, tmp)
            os.replace(tmp, target)
            out.append(target)
        return tuple(out)

    def import_file(self, src: Path, name: str, *, link: bool = False, quant: str | None = None,
                    sha256: str | None = None) -> StoredModel:
        """Copy (or, with link, point at) a GGUF the user already has. The header is checked
        first; the copy is written as name.partial and renamed when complete."""
        from r1local.ggufinfo import read_header

        check_name(name)
        src = Path(src).expanduser()
        if not src.is_file():
            raise ModelFileError(f"{src} does not exist or is not a file")
        header = read_header(src, max_array=256, check_architecture=True)
        quant = quant or header.quant
        if link:
            target = src.resolve()
        else:
            folder = self.model_dir(name)
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / src.name
            tmp = target.with_name(target.name + ".partial")
            need = src.stat().st_size
            free = shutil.disk_usage(folder).free
            if need > free:
                raise DiskSpaceError(f"copying {src.name} needs {fmt_bytes(need)} but {folder} has "
                                     f"{fmt_bytes(free)} free", hint="free some space, or use --link")
            shutil.copyfile(src, tmp)
            os.replace(tmp, target)
        digest = sha256 or file_sha256(target)
        return self.add(StoredModel(
            name=name, tag=None, quant=quant, files=(target,), size=target.stat().st_size,
            source=str(src.resolve()), revision=None, sha256=(digest,), added_at=_utcnow(),
            origin="import", linked=link))


def file_sha256(path: Path, chunk: int = 8 << 20) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def looks_like_path(ref: str) -> bool:
    """The one rule for "this model reference is a file path": it ends in .gguf, has a
    folder separator, or starts with ~ or '.'. Anything else is a name (store entry, catalog
    tag, alias), looked up first; a bare file name in the current folder comes after."""
    return (ref.lower().endswith(".gguf") or "/" in ref or os.sep in ref
            or ref.startswith(("~", ".")))


def resolve_gguf(ref: str, catalog: Catalog, store: Store) -> tuple[Path, StoredModel | None]:
    """A model reference -> (the GGUF llama.cpp is given, its store entry or None).

    ``ref`` is a path to a .gguf, else a store entry: ``7b``, ``7b:q4_k_m``, an alias or an
    import name. Nothing matching raises UnknownModelError that says what exists and, for
    a catalog tag, how to pull it."""
    text = ref.strip()
    if not text:
        raise UnknownModelError("no model named", hint="give a tag like 7b, or a path to a .gguf")
    if looks_like_path(text):
        p = Path(text).expanduser()
        if not _exists(p):  # (a folder or a non-GGUF is the header reader's to name)
            near = sorted(x.name for x in p.parent.glob("*.gguf"))[:5] if _exists(p.parent) else []
            raise UnknownModelError(f"{_short_path(text)} does not exist",
                                    hint=f"GGUF files there: {', '.join(near)}" if near else
                                    "give the path to a .gguf file, or a tag like 7b (`r1local list`)")
        return p, _entry_for_path(store, p)
    if len(text) > MAX_NAME:
        raise UnknownModelError(f"no model is named '{text[:40]}…' ({len(text)} characters)",
                                hint=f"names are at most {MAX_NAME} characters; `r1local list` "
                                     "shows what is in the store")
    found = store.find(text, catalog)
    if found is not None:
        again = (f"run `r1local pull {found.name}` again" if found.tag
                 else f"`r1local rm {found.name}`, then import it again")
        missing = [f for f in found.files if _file_size(f) is None]
        if missing:
            raise ModelFileError(f"{found.name} is in the store but {_short_path(missing[0])} "
                                 "is gone", hint=again)
        problem = found.size_problem()
        if problem:  # a file changed under the store (or written twice): not the one verified
            raise ModelFileError(f"{found.name} in the store is damaged: {problem}", hint=again)
        return found.path, found
    if _file_size(Path(text)) is not None:  # a bare file name in the current folder
        return Path(text), _entry_for_path(store, Path(text))
    have = store.names()
    try:
        mref = catalog.resolve(text)
    except UnknownModelError as err:
        close = difflib.get_close_matches(text.lower(), [h.lower() for h in have], n=3, cutoff=0.5)
        if close:
            raise UnknownModelError(f"unknown model '{text}'",
                                    hint=f"in the store: did you mean {' or '.join(close)}?") from None
        raise err from None
    here = f"; in the store: {', '.join(have)}" if have else ""
    raise UnknownModelError(f"{mref} is not downloaded{here}",
                            hint=f"run `r1local pull {mref}`")


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name too long, a NUL in it: nothing can be there
        return False


def _short_path(path: Path | str, limit: int = 120) -> str:
    """The end of a long path (its file name is the telling part), for a one-line error."""
    text = str(path)
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


def _entry_for_path(store: Store, path: Path) -> StoredModel | None:
    try:
        target = path.resolve()
        return next((m for m in store.list() if m.path.resolve() == target), None)
    except (OSError, R1LocalError):
        return None

