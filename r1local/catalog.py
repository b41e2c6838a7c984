"""The model catalog: models.toml read into typed records, and tag resolution.

The catalog knows what exists (variants, quants, where to fetch them, their
architecture numbers). It never looks at the machine.
"""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from r1local.errors import CatalogError, UnknownModelError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

SCHEMA_VERSION = 1
CATALOG_ENV = "R1LOCAL_CATALOG"


@dataclass(frozen=True)
class Architecture:
    """The numbers from the original config.json that size the model."""

    type: str  # llama.cpp architecture name: qwen2, llama, qwen3, deepseek2
    n_layers: int
    hidden_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_size: int
    vocab_size: int
    context_length: int
    rope_theta: float
    tied_embeddings: bool = False
    # Mixture-of-experts and MLA numbers (DeepSeek-V3 / R1 671B); zero for dense models.
    n_experts: int = 0
    n_experts_used: int = 0
    n_shared_experts: int = 0
    expert_ffn_size: int = 0
    n_dense_layers: int = 0
    kv_lora_rank: int = 0
    q_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0


@dataclass(frozen=True)
class QuantFiles:
    """One quant of a variant as published: one file, or several split parts."""

    quant: str
    files: tuple[str, ...]
    sizes: tuple[int, ...]
    sha256: tuple[str, ...] = ()
    # False where the sizes are the publisher's rounded figures, not exact byte counts:
    # a download must then trust the hub's size, not these
    verified: bool = True

    @property
    def total_size(self) -> int:
        return sum(self.sizes)

    @property
    def is_split(self) -> bool:
        return len(self.files) > 1


@dataclass(frozen=True)
class Variant:
    tag: str
    name: str
    params_b: float
    license: str
    source_repo: str
    gguf_repo: str
    default_quant: str
    arch: Architecture
    quants: Mapping[str, QuantFiles]
    aliases: tuple[str, ...] = ()
    description: str = ""
    benchmarks: Mapping[str, float] = field(default_factory=dict)

    def quant(self, name: str) -> QuantFiles:
        key = name.upper()
        if key not in self.quants:
            raise UnknownModelError(
                f"{self.tag} has no quant '{name}'",
                hint=f"available: {', '.join(self.quants)}",
            )
        return self.quants[key]


@dataclass(frozen=True)
class ModelRef:
    """A resolved `tag[:quant]`: the variant, and the quant if one was named."""

    variant: Variant
    quant: str | None

    def __str__(self) -> str:
        return f"{self.variant.tag}:{self.quant}" if self.quant else self.variant.tag


@dataclass(frozen=True)
class Catalog:
    variants: Mapping[str, Variant]
    path: Path
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def _index(self) -> dict[str, Variant]:
        index: dict[str, Variant] = {}
        for v in self.variants.values():
            for key in (v.tag, v.name, *v.aliases):
                index[key.lower()] = v
        return index

    def resolve(self, ref: str) -> ModelRef:
        """Resolve ``tag``, ``alias``, ``tag:quant`` (case-insensitive) to a ModelRef."""
        text = ref.strip()
        for prefix in ("deepseek-r1:", "r1:"):  # Ollama spells tags this way
            if text.lower().startswith(prefix):
                text = text[len(prefix):]
        name, _, quant = text.partition(":")
        index = self._index()
        variant = index.get(name.lower())
        if variant is None:
            close = difflib.get_close_matches(name.lower(), list(index), n=3, cutoff=0.5)
            hint = f"did you mean {' or '.join(close)}?" if close else None
            known = ", ".join(self.variants)
            raise UnknownModelError(
                f"unknown model '{ref}' (known tags: {known})",
                hint=hint or "run `r1local hw` to see every variant",
            )
        if quant:
            return ModelRef(variant, variant.quant(quant).quant)
        return ModelRef(variant, None)

    def __iter__(self):
        return iter(self.variants.values())


# ---------------------------------------------------------------------------
# Loading and validation. Unknown keys are errors so that typos are caught.

_ARCH_REQUIRED = {
    "type": str, "n_layers": int, "hidden_size": int, "n_heads": int, "n_kv_heads": int,
    "head_dim": int, "ffn_size": int, "vocab_size": int, "context_length": int,
    "rope_theta": (int, float),
}
_ARCH_OPTIONAL = {
    "tied_embeddings": bool, "n_experts": int, "n_experts_used": int,
    "n_shared_experts": int, "expert_ffn_size": int, "n_dense_layers": int,
    "kv_lora_rank": int, "q_lora_rank": int, "qk_rope_head_dim": int,
    "qk_nope_head_dim": int, "v_head_dim": int,
}
_VARIANT_REQUIRED = {
    "name": str, "params_b": (int, float), "license": str, "source_repo": str,
    "gguf_repo": str, "default_quant": str, "arch": dict, "quant": dict,
}
_VARIANT_OPTIONAL = {"aliases": list, "description": str, "benchmarks": dict}
_QUANT_REQUIRED = {"files": list, "sizes": list}
_QUANT_OPTIONAL = {"sha256": list, "verified": bool}


def _type_name(t) -> str:
    if isinstance(t, tuple):
        return "a number"
    return {str: "a string", int: "an integer", bool: "true or false", dict: "a table",
            list: "a list"}[t]


def _check_table(where: str, table: Any, required: dict, optional: dict) -> None:
    if not isinstance(table, dict):
        raise CatalogError(f"{where} must be a table")
    for key, typ in required.items():
        if key not in table:
            raise CatalogError(f"{where} is missing '{key}'")
    for key, value in table.items():
        typ = required.get(key, optional.get(key))
        if typ is None:
            allowed = ", ".join(sorted({*required, *optional}))
            raise CatalogError(f"{where} has unknown key '{key}' (allowed: {allowed})")
        # bool is an int in Python: keep true/false out of integer fields
        bad_bool = isinstance(value, bool) and typ is not bool
        if bad_bool or not isinstance(value, typ):
            raise CatalogError(f"{where}.{key} must be {_type_name(typ)}, got {value!r}")


def _parse_quant(where: str, name: str, table: Any) -> QuantFiles:
    _check_table(where, table, _QUANT_REQUIRED, _QUANT_OPTIONAL)
    files, sizes = table["files"], table["sizes"]
    sha = table.get("sha256", [])
    if not files or not all(isinstance(f, str) and f for f in files):
        raise CatalogError(f"{where}.files must be a non-empty list of file names")
    if len(sizes) != len(files) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes
    ):
        raise CatalogError(f"{where}.sizes must list one positive byte count per file")
    if sha and (len(sha) != len(files) or not all(
        isinstance(h, str) and len(h) == 64 for h in sha
    )):
        raise CatalogError(f"{where}.sha256 must list one 64-hex-digit hash per file")
    return QuantFiles(name.upper(), tuple(files), tuple(sizes), tuple(sha),
                      table.get("verified", True))


def _parse_variant(tag: str, table: Any) -> Variant:
    where = f"variant.\"{tag}\""
    _check_table(where, table, _VARIANT_REQUIRED, _VARIANT_OPTIONAL)
    _check_table(f"{where}.arch", table["arch"], _ARCH_REQUIRED, _ARCH_OPTIONAL)
    arch = Architecture(**table["arch"])
    if not table["quant"]:
        raise CatalogError(f"{where} lists no quant")
    quants = {
        q.upper(): _parse_quant(f"{where}.quant.{q}", q, t) for q, t in table["quant"].items()
    }
    if table["default_quant"].upper() not in quants:
        raise CatalogError(
            f"{where}.default_quant '{table['default_quant']}' is not one of its quants "
            f"({', '.join(quants)})"
        )
    aliases = table.get("aliases", [])
    if not all(isinstance(a, str) and a for a in aliases):
        raise CatalogError(f"{where}.aliases must be a list of strings")
    benchmarks = table.get("benchmarks", {})
    for k, v in benchmarks.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise CatalogError(f"{where}.benchmarks.{k} must be a number, got {v!r}")
    return Variant(
        tag=tag,
        name=table["name"],
        params_b=float(table["params_b"]),
        license=table["license"],
        source_repo=table["source_repo"],
        gguf_repo=table["gguf_repo"],
        default_quant=table["default_quant"].upper(),
        arch=arch,
        quants=quants,
        aliases=tuple(aliases),
        description=table.get("description", ""),
        benchmarks=dict(benchmarks),
    )


def parse_catalog(text: str, path: Path) -> Catalog:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise CatalogError(f"{path} is not valid TOML: {err}") from None
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise CatalogError(
            f"{path}: schema_version must be {SCHEMA_VERSION}, got {version!r}"
        )
    unknown = set(data) - {"schema_version", "defaults", "variant"}
    if unknown:
        raise CatalogError(f"{path}: unknown top-level key(s): {', '.join(sorted(unknown))}")
    variants_table = data.get("variant")
    if not isinstance(variants_table, dict) or not variants_table:
        raise CatalogError(f"{path} defines no [variant.\"TAG\"] tables")
    try:
        variants = {tag: _parse_variant(tag, t) for tag, t in variants_table.items()}
    except CatalogError as err:
        raise CatalogError(f"{path}: {err}") from None
    seen: dict[str, str] = {}
    for v in variants.values():
        for key in (v.tag, v.name, *v.aliases):
            other = seen.setdefault(key.lower(), v.tag)
            if other != v.tag:
                raise CatalogError(f"{path}: name '{key}' is used by both {other} and {v.tag}")
    return Catalog(variants=variants, path=path, defaults=data.get("defaults", {}))


def catalog_path() -> Path:
    """models.toml: $R1LOCAL_CATALOG, else the copy inside the installed package,
    else the one at the top of a source checkout."""
    env = os.environ.get(CATALOG_ENV)
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for candidate in (here / "models.toml", here.parent / "models.toml"):
        if candidate.is_file():
            return candidate
    return here.parent / "models.toml"


@lru_cache(maxsize=4)
def _load_cached(path: Path, mtime_ns: int) -> Catalog:
    return parse_catalog(path.read_text(encoding="utf-8"), path)


def load_catalog(path: Path | str | None = None) -> Catalog:
    """Read and validate models.toml; raises CatalogError with the fix in the message."""
    p = Path(path) if path is not None else catalog_path()
    try:
        mtime = p.stat().st_mtime_ns
    except FileNotFoundError:
        raise CatalogError(
            f"catalog {p} not found",
            hint=f"reinstall r1local, or point {CATALOG_ENV} at a models.toml",
        ) from None
    return _load_cached(p, mtime)
