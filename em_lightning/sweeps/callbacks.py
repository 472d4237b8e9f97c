"""Hydra callback recording each trial of a sweep and keeping the sweep summary current."""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from em_lightning.sweeps.records import TrialRecord, status_of, write_record
from em_lightning.sweeps.space import override_values, read_space, search_space, write_space
from em_lightning.sweeps.summary import write_summary
from em_lightning.sweeps.trial import trial_number

log = logging.getLogger(__name__)


def direction_of(config: DictConfig) -> str:
    """``maximize``/``minimize`` of the (first) objective, however the sweeper config spells it."""
    direction = OmegaConf.select(config, "hydra.sweeper.direction", default="maximize")
    if isinstance(direction, (list, tuple)) or OmegaConf.is_list(direction):
        direction = direction[0]
    return str(getattr(direction, "name", direction)).split(".")[-1]


def record_from_job(config: DictConfig, job_return: JobReturn,
                    duration_s: float | None) -> TrialRecord:
    """What the sweeper will tell Optuna about this job, plus how to rebuild it."""
    run_dir = str(config.hydra.runtime.output_dir)
    values = override_values(job_return.overrides or [])
    space = read_space(config.hydra.sweep.dir)
    choices = set(config.hydra.runtime.choices)
    sampled = set(values) if space is None else set(space)
    params = {k: v for k, v in values.items() if k in sampled}
    groups = {k: v for k, v in values.items() if k not in sampled and k.lstrip("+") in choices}
    fixed = {k: v for k, v in values.items() if k not in params and k not in groups}
    completed = job_return.status == JobStatus.COMPLETED
    raw = job_return._return_value  # .return_value re-raises a failed job's exception
    status, value = status_of(completed, raw)
    error = None
    if not completed:
        error = describe(raw)
    elif value is None:
        error = f"non-finite return value {raw!r}"
    return TrialRecord(trial=trial_number(run_dir, config.hydra.job.num), status=status,
                       metric=str(config.get("optimized_metric", "value")), value=value,
                       params=params, groups=groups, fixed=fixed, run_dir=run_dir, error=error,
                       duration_s=duration_s)


def describe(error: BaseException) -> str:
    """``Type: message``; for a bare ``assert`` (no message) where it failed instead."""
    text = str(error).strip()
    if not text and error.__traceback__ is not None:
        frame = traceback.extract_tb(error.__traceback__)[-1]
        text = f"at {Path(frame.filename).name}:{frame.lineno}: {frame.line}"
    return f"{type(error).__name__}: {text}"


class SweepSummary(Callback):
    """Writes ``trial.json`` into every trial directory and rebuilds the summary files of the
    sweep directory (``summary.csv/.md/.png``, ``best_experiment.yaml``) after each trial.

    Runs where the trial runs (also in joblib/SLURM workers); the summary is rebuilt under a file
    lock from all ``trial.json`` files, so parallel trials cannot lose each other's rows.
    """

    def __init__(self, lock_timeout_s: float = 120.0) -> None:
        self.lock_timeout_s = lock_timeout_s
        self._started: float | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        space = search_space(config)
        write_space(sweep_dir, space)
        log.info("sweep %s: searching %d hyperparameters: %s", sweep_dir, len(space),
                 ", ".join(space))
        self.summarize(config)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._started = time.monotonic()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        duration = None if self._started is None else round(time.monotonic() - self._started, 1)
        record = record_from_job(config, job_return, duration)
        write_record(record.run_dir, record)
        if record.error:
            log.warning("trial %d failed: %s", record.trial, record.error)
        self.summarize(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        paths = self.summarize(config)
        if paths:
            log.info("sweep summary: %s", ", ".join(str(p) for p in paths.values()))

    def summarize(self, config: DictConfig) -> dict[str, Path]:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            with FileLock(str(sweep_dir / ".summary.lock"), timeout=self.lock_timeout_s):
                return write_summary(sweep_dir, direction_of(config))
        except Timeout:
            log.warning("summary of %s is locked; the next trial will rewrite it", sweep_dir)
        except Exception:  # a summary must never fail a trial or the sweep
            log.exception("could not write the summary of %s", sweep_dir)
        return {}
