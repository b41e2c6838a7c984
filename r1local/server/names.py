"""Which model names a request may use.

On the API a model is a store name or a catalog tag. A path would let any client probe
the server's disk (does this file exist, what does it start with) and load any .gguf
anywhere, so a name that looks like a path (store.looks_like_path) is refused as "not
found", in words that do not depend on whether the file exists, unless its real path is
inside an `--allow-paths` folder or is the `--model` file the operator started with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from r1local.server.errors import ApiError, bad_request
from r1local.store import MAX_NAME, looks_like_path  # MAX_NAME: no longer name is stored



# Ollama's default tag: "micro" and "micro:latest" name one model, and clients send the latter
LATEST = ":latest"


def canonical(name: str) -> str:
    """The name the store and catalog know: "micro:latest" -> "micro". A path is left as it
    is (a file may end in ":latest"), and so is any other tag ("7b:Q4_K_M")."""
    text = name.strip()
    if text.lower().endswith(LATEST) and len(text) > len(LATEST) and not looks_like_path(text):
        return text[: -len(LATEST)]
    return name


def listed(name: str) -> str:
    """A name as Ollama lists it: a plain name gets ":latest", a tagged name or a path not."""
    return name if ":" in name or looks_like_path(name) else name + LATEST


def _real(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def shown(name: str, limit: int = 80) -> str:
    """A client's name as an error may repeat it: printable and not too long."""
    text = "".join(c for c in name if c.isprintable())
    return text if len(text) <= limit else text[:limit] + "…"


def refused_path(name: str) -> ApiError:
    return ApiError(404, f"model '{shown(name)}' not found (a request names a model by store "
                    "name or catalog tag; paths only inside `r1local serve --allow-paths DIR`)",
                    code="model_not_found", param="model")


@dataclass(frozen=True)
class NamePolicy:
    dirs: tuple[str, ...] = ()  # real paths of the --allow-paths folders
    files: tuple[str, ...] = ()  # real paths allowed one by one (the --model file)

    @classmethod
    def from_config(cls, config: Any) -> "NamePolicy":
        from r1local.store import looks_like_path

        model = config.model
        files = (model,) if model and looks_like_path(model) else ()
        return cls(dirs=tuple(_real(d) for d in config.allow_paths),
                   files=tuple(_real(f) for f in files))

    def allows_path(self, name: str) -> bool:
        try:
            real = _real(name)
        except (OSError, ValueError):  # a NUL, a loop of links: nothing we would load
            return False
        return real in self.files or any(_inside(real, d) for d in self.dirs)

    def check(self, name: str) -> None:
        """Refuse a name a request may not use, before anything reads the file it names."""
        from r1local.store import looks_like_path

        if len(name) > MAX_NAME:
            raise bad_request(f"the model name is {len(name)} characters long; names are at "
                              f"most {MAX_NAME}", param="model")
        if not name.isprintable():
            raise bad_request("the model name has control characters in it", param="model")
        if looks_like_path(name):
            if not self.allows_path(name):
                raise refused_path(name)
        elif _local_file_only(name):
            raise refused_path(name)


def _local_file_only(name: str) -> bool:
    """True when store.resolve_gguf would fall back to a file of this name in the server's
    working folder (it does for the CLI): the store and catalog do not know the name."""
    try:
        if not os.path.lexists(name):
            return False
    except (OSError, ValueError):
        return False
    from r1local.catalog import load_catalog
    from r1local.store import Store

    return Store().find(name, load_catalog()) is None
