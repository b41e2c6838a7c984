"""Sizes and durations as people write and read them: one parser, one way to print each.

Binary units throughout (a GiB is 2**30 bytes), as llama.cpp and the hub listings use.
"""

from __future__ import annotations

import re

from r1local.errors import UsageError

_UNIT_NAMES = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
_MULTIPLIERS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def fmt_bytes(n: float) -> str:
    """A size in the largest unit that keeps it >= 1, to three significant figures:
    ``512 B``, ``1.50 KiB``, ``97.3 MiB``, ``4.68 GiB``, ``131 GiB``."""
    value = float(n)
    unit = 0
    while abs(value) >= 1024 and unit < len(_UNIT_NAMES) - 1:
        value /= 1024
        unit += 1
    if unit == 0:
        return f"{value:.0f} B"
    digits = 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0
    return f"{value:.{digits}f} {_UNIT_NAMES[unit]}"


def parse_size(text: str, *, allow_zero: bool = False) -> int:
    """'16G', '512M', '1.5T', '8GiB', '24gb', '1048576' -> bytes (binary units).
    ``allow_zero``: '0' is a size too (e.g. `--vram 0`, no GPU)."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise UsageError(f"cannot read size '{text}'", hint="write it like 16G, 512M or 1.5T")
    number, unit, _ = m.groups()
    value = float(number) * _MULTIPLIERS[unit.lower()]
    if value < 0 or (value == 0 and not allow_zero):
        raise UsageError(f"size '{text}' must be more than zero")
    return int(value)


def fmt_duration(seconds: float) -> str:
    """A rough duration for an estimate: ``40 s``, ``6 min``, ``1.5 h``."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"
