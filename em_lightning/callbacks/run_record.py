"""Write ``run_record.json`` (config, versions, git commit, dataset fingerprints) into the run
directory at fit start, and store the same record inside every checkpoint.

A training resumed in its run directory keeps the first record and writes its own next to it
(``run_record.resume-<n>.json``, with the checkpoint it resumed from).

The record also keeps the training command's Hydra overrides (``overrides``): predict, evaluate
and export replay those that shape the model, so a checkpoint alone says how to rebuild it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from em_lightning import provenance

log = logging.getLogger(__name__)


def command_overrides(output_dir: str | None) -> list[str] | None:
    """The overrides of the Hydra command running now (a resumed training: the resume
    command's, which rebuild the same model); None outside one. A Hydra config left over from
    an earlier command in this process (tests compose configs without Hydra's main) is told
    apart by its output directory, which differs from this run's."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    # a `--help` run leaves a Hydra config whose output dir was never set ('???')
    current = OmegaConf.select(hydra_cfg, "runtime.output_dir", default=None,
                               throw_on_missing=False)
    if current is None or (output_dir is not None and str(current) != str(output_dir)):
        return None
    return [str(o) for o in hydra_cfg.overrides.task]


class RunRecord(pl.Callback):
    def __init__(self, out_dir: str, run_config: dict | None = None) -> None:
        self.out_dir = Path(out_dir)
        # Hydra passes dict arguments as DictConfig: store plain data
        self.config = OmegaConf.to_container(run_config) if OmegaConf.is_config(run_config) \
            else run_config
        self.record: dict[str, Any] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.record:
            return
        datasets = getattr(trainer.datamodule, "datasets", {}) if trainer.datamodule else {}
        self.record = {
            "config": self.config,
            "packages": provenance.package_versions(),
            "git": provenance.git_commit(Path(__file__).parent),
            "data_root": getattr(trainer.datamodule, "root", None),
            # pretrained weights loaded (preset, URL, sha256) or "from scratch"
            "pretrained": getattr(pl_module, "pretrained", None),
            "dataset_fingerprints": {
                split: provenance.fingerprint_files(provenance.dataset_files(ds))
                for split, ds in datasets.items()},
        }
        overrides = command_overrides((self.config or {}).get("paths", {}).get("output_dir"))
        if overrides is not None:
            self.record["overrides"] = overrides
        resumed_from = (self.config or {}).get("ckpt_path")  # (trainer.ckpt_path: set later)
        if stage == "fit" and resumed_from:
            self.record["resumed_from"] = str(resumed_from)
        self._write()

    def record_path(self) -> Path:
        """``run_record.json``; for a resumed training that has one already, the first free
        ``run_record.resume-<n>.json``."""
        path, n = self.out_dir / "run_record.json", 0
        while "resumed_from" in self.record and path.exists():
            n += 1
            path = self.out_dir / f"run_record.resume-{n}.json"
        return path

    @rank_zero_only
    def _write(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.record_path()
        path.write_text(json.dumps(self.record, indent=2, sort_keys=True, default=str))
        log.info("run record written to %s", path)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict) -> None:
        checkpoint["em_lightning_record"] = json.loads(json.dumps(self.record, default=str))
