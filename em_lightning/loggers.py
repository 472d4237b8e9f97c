"""Loggers that keep the whole story of a run that was interrupted and resumed in place."""

from __future__ import annotations

import csv
import math
from typing import Any

from pytorch_lightning.loggers import CSVLogger as LightningCSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment


class ContinuingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued.

    Lightning deletes the file when the writer is created, which erases the history of a run
    resumed in its own directory. Here the file stays; at the first row logged, the rows of
    that step and later (logged after the checkpoint the run resumed from, and about to be
    logged again) are dropped, the earlier ones kept, and new rows appended. A training that
    starts from scratch logs from step 0, so it replaces an old file, as Lightning does.
    """

    def __init__(self, log_dir: str) -> None:
        self._continued = False
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        """Keep the file (see the class docstring)."""

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        if not self._continued:
            self._continued = True
            self._keep_rows_before(len(self.metrics) if step is None else step)
        super().log_metrics(metrics_dict, step)

    def _keep_rows_before(self, step: int) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            reader = csv.DictReader(file)
            rows = list(reader)
            header = list(reader.fieldnames or [])
        kept = [row for row in rows if _row_step(row) < step]
        if not kept:
            self._fs.rm_file(self.metrics_file_path)
            return
        if len(kept) < len(rows):
            with self._fs.open(self.metrics_file_path, "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=header)
                writer.writeheader()
                writer.writerows(kept)
        self.metrics_keys = header


def _row_step(row: dict[str, Any]) -> float:
    try:
        return float(row.get("step") or math.inf)
    except ValueError:
        return math.inf


class CSVLogger(LightningCSVLogger):
    """``pytorch_lightning.loggers.CSVLogger`` writing through :class:`ContinuingWriter`."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ContinuingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ContinuingWriter(log_dir=self.log_dir)
        return self._experiment
