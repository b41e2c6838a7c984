"""Where r1local keeps things on disk. Every path the tool writes to comes from here.

R1LOCAL_HOME moves everything (store, history, state) at once; tests point it at a
temporary directory.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def home() -> Path:
    env = os.environ.get("R1LOCAL_HOME")
    if env:
        return Path(env).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "r1local"
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "r1local"


def models_dir() -> Path:
    """The model store: GGUF files and the manifest."""
    return Path(os.environ.get("R1LOCAL_MODELS") or home() / "models").expanduser()


def history_file() -> Path:
    """The REPL's input history, kept across sessions."""
    return home() / "history"


def ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
