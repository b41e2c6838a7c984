"""Reading a store manifest that may be damaged: parse it, say why an entry cannot be used,
warn once, and find a name to keep a broken file aside under. The store (store.py) decides
what to do with the answers."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

_SAID: set[str] = set()
_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", int: "a number",
               float: "a fraction", bool: "true/false", type(None): "null"}
_FIELD_TYPES = {"tag": str, "quant": str, "size": int, "source": str, "revision": str,
                "added_at": str, "origin": str, "linked": bool}


def warn(text: str) -> None:
    """One line on stderr, once per process (the server lists the store on every request)."""
    if text not in _SAID:
        _SAID.add(text)
        print(f"r1local: warning: {text}", file=sys.stderr, flush=True)


def _is(value: Any, kind: type) -> bool:
    # JSON's true is a Python int too: not a size
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def unusable(rec: Any) -> str | None:
    """Why a manifest entry cannot be used, in a few words; None when it can (its name is
    the store's to check)."""
    if not isinstance(rec, dict):
        return f"{_JSON_TYPES.get(type(rec), type(rec).__name__)}, not an object"
    files = rec.get("files")
    if not isinstance(files, list) or not files or \
            not all(isinstance(f, str) and f and "\0" not in f for f in files):
        return "its files are not a list of paths"
    for key, kind in _FIELD_TYPES.items():
        value = rec.get(key)
        if value is not None and not _is(value, kind):
            return f"its {key} is {_JSON_TYPES.get(type(value), type(value).__name__)}"
    for key, kind in (("sha256", str), ("sizes", int)):
        value = rec.get(key)
        if value is not None and not (isinstance(value, list) and all(_is(v, kind) for v in value)):
            return f"its {key} is not a list of {'hashes' if kind is str else 'sizes'}"
    return None


def parse(data: bytes) -> tuple[dict | None, str]:
    """The manifest's models (entries unchecked), or None and why it cannot be read."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "it is not UTF-8 text"
    except ValueError as err:
        return None, f"it is not JSON: {err.msg} at line {err.lineno}"
    models = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(models, dict):
        return None, "it has no \"models\" object"
    return models, ""


def aside(path: Path) -> Path:
    """A free name beside ``path`` to keep a damaged manifest under (never overwrite one)."""
    bad = path.with_name(path.name + ".bad")
    n = 1
    while bad.exists():
        bad = path.with_name(f"{path.name}.bad.{n}")
        n += 1
    return bad
