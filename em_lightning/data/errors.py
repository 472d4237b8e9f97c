"""Errors and skip accounting for bad input data.

Every loader either raises :class:`DataError` (``strict=True``) or records the problem in a
:class:`SkipReport` and drops the item (``strict=False``); nothing is dropped silently.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from em_lightning.errors import UserError

log = logging.getLogger(__name__)


class DataError(UserError, ValueError):
    """A problem with input data; the message names the file and what is wrong."""

    def __init__(self, path: object, problem: str | None = None) -> None:
        # one argument: a message re-raised by a library (mmengine's registry and torch's
        # DataLoader workers rebuild exceptions as ``type(exc)(message)``)
        self.path = str(path) if problem is not None else ""
        self.problem = problem if problem is not None else str(path)
        super().__init__(f"{self.path}: {problem}" if problem is not None else str(path))


@dataclass
class SkipReport:
    """Counts and remembers what a non-strict loader skipped, so it can be logged and tested."""

    strict: bool = True
    messages: list[str] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)

    def problem(self, path: object, problem: str, kind: str) -> None:
        """Raise in strict mode; otherwise record and log one skipped item of ``kind``."""
        if self.strict:
            raise DataError(path, problem)
        self.counts[kind] += 1
        msg = f"{path}: {problem} (skipped)"
        self.messages.append(msg)
        log.warning(msg)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.counts:
            return "no items skipped"
        parts = ", ".join(f"{n} {kind}" for kind, n in sorted(self.counts.items()))
        return f"skipped {self.total} items: {parts}"
