"""One ``trial.json`` per trial directory: what the sweeper saw of the trial, for the summary."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TRIAL_FILE = "trial.json"
COMPLETE, FAIL, INTERRUPTED = "COMPLETE", "FAIL", "INTERRUPTED"


@dataclass
class TrialRecord:
    """A finished (or interrupted) trial.

    ``params`` are the sampled values, ``groups`` the config-group choices (``task``,
    ``experiment``...) and ``fixed`` the other overrides the trial ran with, so the trial can be
    rebuilt as an experiment config.
    """

    trial: int
    status: str
    metric: str
    value: float | None
    params: dict[str, Any] = field(default_factory=dict)
    groups: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    run_dir: str = ""
    error: str | None = None
    duration_s: float | None = None


def status_of(completed: bool, value: Any) -> tuple[str, float | None]:
    """Optuna's verdict: COMPLETE only for a job that returned a finite float."""
    try:
        number = float(value) if completed else math.nan
    except (TypeError, ValueError):
        number = math.nan
    return (COMPLETE, number) if math.isfinite(number) else (FAIL, None)


def write_record(run_dir: str | Path, record: TrialRecord) -> Path:
    path = Path(run_dir) / TRIAL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(asdict(record), indent=2, sort_keys=True, default=str))
    return path


def read_record(run_dir: str | Path) -> TrialRecord | None:
    try:
        return TrialRecord(**json.loads((Path(run_dir) / TRIAL_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None  # none yet (or unreadable)


def read_records(sweep_dir: str | Path) -> list[TrialRecord]:
    """All trial records under ``sweep_dir`` (one level deep), by trial number."""
    records = (read_record(path.parent) for path in Path(sweep_dir).glob(f"*/{TRIAL_FILE}"))
    return sorted((r for r in records if r is not None), key=lambda r: r.trial)


def atomic_write_text(path: Path, data: str | bytes) -> None:
    """Write via a temporary file so parallel trials and readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data)
    os.replace(tmp, path)
