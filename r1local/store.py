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
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import difflib
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from r1local.errors import ModelFileError, R1LocalError, UnknownModelError, UsageError
from r1local.units import fmt_bytes

if TYPE_CHECKING:
    from r1local.catalog import Catalog

MANIFEST = "manifest.json"
MANIFEST_SCHEMA = 1
PARTIAL_DIR = ".partial"
# an import name: a letter or digit, then letters, digits, "-", "_", "." (no "..")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


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
        return all(f.is_file() for f in self.files)


def _utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def check_name(name: str) -> str:
    """An import name that is safe to use as a folder name; UsageError otherwise."""
    if not NAME_PATTERN.match(name) or ".." in name:
        raise UsageError(
            f"'{name}' cannot be a model name",
            hint="use letters, digits, '-', '_' or '.', starting with a letter or digit, "
                 "at most 80 characters (no '/', '..', ':' or '@')")
    return name


def catalog_name(tag: str, quant: str) -> str:
    return f"{tag}:{quant.upper()}"


def _dir_name(name: str) -> str:
    """The folder of an entry. Catalog names become tag@QUANT; import names are used as
    they are, after check_name. Anything else is refused, never joined to a path."""
    if ":" in name:
        tag, _, quant = name.partition(":")
        for part in (tag, quant):
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", part) or ".." in part:
                raise UsageError(f"'{name}' cannot be a model name")
        return f"{tag}@{quant}"
    return check_name(name)


class Store:
    def __init__(self, root: Path | None = None) -> None:
        if root is None:
            from r1local.locations import models_dir

            root = models_dir()
        self.root = Path(root).expanduser()

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
    def _read(self) -> dict[str, dict]:
        try:
            text = self.manifest_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(text)
            models = data["models"]
            if not isinstance(models, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise ModelFileError(
                f"the store manifest {self.manifest_path} is damaged",
                hint="move it aside; the GGUF files next to it can be added back with "
                     "`r1local import`") from None
        return models

    def _write(self, models: dict[str, dict]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.manifest_path.with_name(MANIFEST + ".partial")
        data = {"schema": MANIFEST_SCHEMA, "models": dict(sorted(models.items()))}
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.manifest_path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time (two pulls finishing together must not lose an entry)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+b") as f:
            try:
                import fcntl
            except ImportError:  # Windows: no advisory locks; renames are still atomic
                yield
                return
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

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
        files = tuple(f if Path(f).is_absolute() else self.root / f
                      for f in map(Path, rec.get("files", [])))
        if not files:
            raise ModelFileError(f"the store manifest lists no file for '{name}'")
        return StoredModel(
            name=name, tag=rec.get("tag"), quant=rec.get("quant") or "?", files=files,
            size=int(rec.get("size") or 0), source=rec.get("source"),
            revision=rec.get("revision"), sha256=tuple(rec.get("sha256") or ()),
            added_at=rec.get("added_at") or "", origin=rec.get("origin") or "pull",
            linked=bool(rec.get("linked")), sizes=tuple(rec.get("sizes") or ()))

    # ---- queries ------------------------------------------------------------------------
    def list(self) -> list[StoredModel]:
        return [self._from_record(n, r) for n, r in sorted(self._read().items())]

    def get(self, name: str) -> StoredModel | None:
        models = self._read()
        key = next((k for k in models if k.lower() == name.strip().lower()), None)
        return self._from_record(key, models[key]) if key is not None else None

    def find(self, ref: str, catalog: Catalog) -> StoredModel | None:
        """``7b`` (the catalog's default quant first, then larger files), ``7b:q4_k_m``,
        an alias (``qwen-7b``), or an import name."""
        hit = self.get(ref)
        if hit is not None:
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
        return sorted(self._read())

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

    def remove(self, name: str) -> StoredModel:
        """Forget an entry and delete its files (never a linked import's own file)."""
        with self._locked():
            models = self._read()
            key = next((k for k in models if k.lower() == name.strip().lower()), None)
            if key is None:
                close = difflib.get_close_matches(name, list(models), n=3, cutoff=0.4)
                raise UnknownModelError(
                    f"'{name}' is not in the store",
                    hint=f"did you mean {' or '.join(close)}?" if close
                    else "`r1local list` shows what is there")
            model = self._from_record(key, models.pop(key))
            self._write(models)
        folder = self.model_dir(key)
        if not model.linked:
            root = self.root.resolve()
            for f in model.files:
                p = Path(f)
                if p.resolve().is_relative_to(root):  # never delete outside the store
                    p.unlink(missing_ok=True)
        if folder.is_dir() and folder.resolve().is_relative_to(self.root.resolve()):
            shutil.rmtree(folder, ignore_errors=True)
        return model

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
                from r1local.errors import DiskSpaceError

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
        if not p.exists():  # (a folder or a non-GGUF is the header reader's to name)
            near = sorted(x.name for x in p.parent.glob("*.gguf"))[:5] if p.parent.is_dir() else []
            raise UnknownModelError(f"{text} does not exist",
                                    hint=f"GGUF files there: {', '.join(near)}" if near else
                                    "give the path to a .gguf file, or a tag like 7b (`r1local list`)")
        return p, _entry_for_path(store, p)
    found = store.find(text, catalog)
    if found is not None:
        missing = [f for f in found.files if not f.is_file()]
        if missing:
            again = (f"run `r1local pull {found.name}` again" if found.tag
                     else f"`r1local rm {found.name}`, then import it again")
            raise ModelFileError(f"{found.name} is in the store but {missing[0]} is gone",
                                 hint=again)
        return found.path, found
    if Path(text).is_file():  # a bare file name in the current folder
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


def _entry_for_path(store: Store, path: Path) -> StoredModel | None:
    try:
        target = path.resolve()
        return next((m for m in store.list() if m.path.resolve() == target), None)
    except (OSError, R1LocalError):
        return None

