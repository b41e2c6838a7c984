"""Majority voting over reasoning samples (the R1 paper's cons@K): each sample's final
answer, normalised so that equal answers compare equal, and the most common one.

Pure text: no model here. The answer of a sample is, in order of preference, the last
`\\boxed{...}` in it (braces balanced), else its last number, else its last non-empty line.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_MARKUP = re.compile(r"[*_`$]+")


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None  # never closed: not an answer


def _number(text: str) -> str:
    """A number as one spelling: no thousands commas, no trailing zeros after a point."""
    n = text.replace(",", "")
    if "." in n and "/" not in n:
        n = n.rstrip("0").rstrip(".") or "0"
    return "0" if n in ("-0", "") else n


def extract_answer(text: str) -> str:
    """The final answer of one sample, normalised ("" when there is none)."""
    boxed = _last_boxed(text)
    if boxed is not None:
        inner = boxed.strip()
        return _number(inner) if _NUMBER.fullmatch(inner) else " ".join(inner.split())
    numbers = _NUMBER.findall(text)
    if numbers:
        return _number(numbers[-1])
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return ""
    last = _MARKUP.sub("", lines[-1]).strip().rstrip(".!").strip()
    return " ".join(last.lower().split())


@dataclass(frozen=True)
class Vote:
    answer: str  # the majority answer ("" when no sample had one)
    votes: int  # samples that gave it
    samples: int  # samples counted
    answers: tuple[str, ...]  # each sample's answer, in order

    def line(self) -> str:
        """`7  (5 of 8 samples)`"""
        return f"{self.answer or '(no answer)'}  ({self.votes} of {self.samples} samples)"

    def as_dict(self) -> dict:
        return {"answer": self.answer, "votes": self.votes, "samples": self.samples,
                "answers": list(self.answers)}


def majority(texts: Sequence[str]) -> Vote:
    """The most common answer among ``texts`` (each a sample's answer text, reasoning
    left out). Ties go to the answer that appeared first; samples without an answer do
    not vote unless none has one."""
    answers = tuple(extract_answer(t) for t in texts)
    counts = Counter(a for a in answers if a)
    if not counts:
        return Vote("", 0, len(answers), answers)
    best = max(counts.values())
    winner = next(a for a in answers if counts.get(a) == best)
    return Vote(winner, best, len(answers), answers)
