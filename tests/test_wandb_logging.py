"""Every training logs its resolved config, its losses and a summary to W&B (and losses to the
CSV log), also ``experiment=tiny`` whose epochs are shorter than ``log_every_n_steps``.

The offline run is read back from its transaction log (``run-<id>.wandb``). wandb >= 0.19 has no
Python reader of that file any more (its Go core reads it): it is a LevelDB-style log (32 KiB
blocks of chunks: crc32c, length, type) after a 7-byte ``:W&B`` header, each record a
``wandb_internal.Record`` protobuf, parsed here with wandb's own ``wandb.proto`` classes.
"""

from __future__ import annotations

import csv
import json
import math
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import open_dict
from torch.utils.data import DataLoader, TensorDataset
from wandb.proto import wandb_internal_pb2 as pb

from em_lightning.callbacks import ShortEpochLogging
from em_lightning.loggers import CSVLogger
from em_lightning.runner import wandb_kwargs
from tests.conftest import compose_cfg

BLOCK, FILE_HEADER, CHUNK_HEADER = 32768, 7, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path) -> list[pb.Record]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    out, pending, pos = [], b"", FILE_HEADER
    while pos + CHUNK_HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK_HEADER:  # block trailer: padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + CHUNK_HEADER])
        if kind == 0 and length == 0:  # zero padding at the end of a block or an unfinished file
            pos += left
            continue
        chunk = data[pos + CHUNK_HEADER:pos + CHUNK_HEADER + length]
        if len(chunk) < length:  # truncated by a kill: the last record is incomplete
            break
        pos += CHUNK_HEADER + length
        if kind == FULL:
            pending = chunk
        elif kind == FIRST:
            pending = chunk
            continue
        elif kind == MIDDLE:
            pending += chunk
            continue
        else:
            pending += chunk
        record = pb.Record()
        record.ParseFromString(pending)
        out.append(record)
        pending = b""
    return out


def _key(item: object) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


@dataclass
class OfflineRun:
    run_id: str = ""
    resumed: bool = False
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


def read_run(path: str | Path, timeout: float = 60.0) -> OfflineRun:
    """The run's id, config (as logged: nested dicts), history rows and last summary values.

    ``wandb.finish()`` returns before wandb's service process has written the whole file: wait
    (up to ``timeout`` s) for the run's exit record.
    """
    deadline = time.monotonic() + timeout
    while not any(r.WhichOneof("record_type") == "exit" for r in records(path)):
        assert time.monotonic() < deadline, f"{path}: no exit record after {timeout} s"
        time.sleep(0.5)
    run = OfflineRun()
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id = record.run.run_id
            run.resumed = run.resumed or record.run.resumed
            for item in record.run.config.update:
                run.config[_key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                run.config[_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                run.summary[_key(item)] = json.loads(item.value_json)
    return run


def train_tiny(root: Path, tmp_path: Path, *extra: str) -> dict[str, float]:
    from em_lightning.train import train

    cfg = compose_cfg(["task=vesicles", "experiment=tiny", f"data.root={root}",
                       "eval_train=false", "callbacks.overlays=null", *extra], tmp_path)
    return train(cfg)


def loss_rows(run: Path) -> list[tuple[int, float]]:
    with (run / "csv" / "metrics.csv").open(newline="") as file:
        return [(int(r["step"]), float(r["train/loss"])) for r in csv.DictReader(file)
                if r.get("train/loss")]


def test_tiny_run_logs_config_losses_and_summary_to_wandb(tiny_vesicles: Path, tmp_path: Path):
    metrics = train_tiny(tiny_vesicles, tmp_path, "tags=[wandb-test]")
    run_dir = tmp_path / "run"
    (log,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    run = read_run(log)
    assert log.name == f"run-{run.run_id}.wandb"
    # the resolved config, as in the run record
    record = json.loads((run_dir / "run_record.json").read_text())["config"]
    assert {"data", "model", "trainer", "task_name", "seed", "paths"} <= set(run.config)
    for key in ("data", "model", "trainer", "task_name", "seed", "tags"):
        assert run.config[key] == record[key], key
    assert run.config["data"]["batch_size"] == 2 and run.config["trainer"]["max_epochs"] == 2
    assert run.config["data"]["root"] == str(tiny_vesicles)
    # every one of the 4 steps (2 epochs of 2 batches) logged its loss, as in the CSV log
    history = [(h["trainer/global_step"], h["train/loss"]) for h in run.history
               if "train/loss" in h]
    assert [step for step, _ in history] == [0, 1, 2, 3]
    csv_losses = loss_rows(run_dir)
    assert [s for s, _ in csv_losses] == [0, 1, 2, 3]
    for (_, wandb_loss), (_, csv_loss) in zip(history, csv_losses, strict=True):
        assert math.isfinite(wandb_loss) and math.isclose(wandb_loss, csv_loss, rel_tol=1e-6)
    # the summary ends with the final evaluation of the best checkpoint
    assert run.summary["val/segm_mAP"] == metrics["val/segm_mAP"]
    assert run.summary["train/loss"] == history[-1][1]


class LinearModel(pl.LightningModule):
    """y = 2x, learnt by one weight: a training step in milliseconds."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = ((self.weight * x - y) ** 2).mean()
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize(("callbacks", "steps"), [([], []), ([ShortEpochLogging()], [0, 1, 2])])
def test_epochs_shorter_than_the_logging_interval_log_every_step(callbacks, steps, tmp_path):
    x = torch.arange(1.0, 7.0)
    loader = DataLoader(TensorDataset(x, 2 * x), batch_size=2)  # 3 steps an epoch
    trainer = pl.Trainer(max_epochs=1, log_every_n_steps=50, callbacks=callbacks,
                         logger=CSVLogger(tmp_path, name="csv", version=""),
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(LinearModel(), loader)
    path = tmp_path / "csv" / "metrics.csv"
    rows = list(csv.DictReader(path.open())) if path.exists() else []
    assert [int(r["step"]) for r in rows if r.get("train/loss")] == steps


def test_tiny_experiment_logs_within_its_epochs():
    cfg = compose_cfg(["task=vesicles", "experiment=tiny"])
    steps_per_epoch = cfg.data.demo.n_train // cfg.data.batch_size
    assert cfg.trainer.log_every_n_steps <= steps_per_epoch


def test_a_sweep_trial_logs_the_whole_config_once(tmp_path: Path):
    cfg = compose_cfg(["task=vesicles", "model.optimizer.lr=0.01"], tmp_path)
    with open_dict(cfg):  # what sweeps.trial.join_wandb_group sets for a trial
        cfg.logger.wandb.config = {"model": {"optimizer": {"lr": 0.01}}}
    kwargs = wandb_kwargs(cfg, cfg.logger.wandb)
    config = kwargs["config"]
    assert config["model"]["optimizer"]["lr"] == 0.01
    assert config["model"]["detector"]["type"] == "mmdet.MaskRCNN"
    assert "config" not in config["logger"]["wandb"]
    assert "id" not in kwargs and "resume" not in kwargs  # a new run
