"""A training killed (SIGKILL) after a checkpoint and resumed with ``ckpt_path=.../last.ckpt``
keeps one story: the same run directory, one continuous metrics.csv, the same W&B run, best
checkpoint tracking across the interruption, and the files written before the kill intact."""

from __future__ import annotations

import csv
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

from em_lightning.resume import config_subdir, continued_run_dir, run_dir, wandb_run_id
from tests.test_wandb_logging import read_run

REPO = Path(__file__).resolve().parent.parent
KILL_AT_STEP = 3  # epoch 1, second batch: after epoch 0's checkpoint and one logged step


class KillAtStep(pl.Callback):
    """SIGKILL this very process at the start of training batch ``step`` (a hard crash:
    no hook, no logger flush, no checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def train_cli(root: Path, data: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "em_lightning.train", "task=vesicles", "experiment=tiny",
           f"paths.root_dir={root}", f"data.root={data}", "trainer.max_epochs=3",
           "eval_train=false", "callbacks.overlays=null", "callbacks.progress=null", *extra]
    # each training gets its own W&B service, as from a shell: an in-process training earlier
    # in this pytest session leaves WANDB_SERVICE set, and a child sharing that service finds
    # the killed run's id still "in use"
    env = {**{k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"},
           "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def file_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def test_killed_training_resumes_in_its_run_dir(tiny_vesicles: Path, tmp_path: Path):
    killed = train_cli(tmp_path, tiny_vesicles, f"+callbacks.kill._target_={__name__}.KillAtStep",
                       f"+callbacks.kill.step={KILL_AT_STEP}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "vesicles" / "runs").iterdir()
    last = run / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["epoch"] == 0 and state["global_step"] == 2
    before = file_hashes(run)
    rows_before = csv_rows(run / "csv" / "metrics.csv")
    log_before = (run / "train.log").read_bytes()
    # rows of step 2 (and the learning rate of step 3, if its callback ran before the kill) were
    # logged after the checkpoint: the resumed run logs them again
    assert {0, 1, 2} <= {int(r["step"]) for r in rows_before} <= {0, 1, 2, 3}
    (first_wandb,) = (run / "wandb").glob("offline-run-*")
    run_id = wandb_run_id(run)
    assert run_id and first_wandb.name.endswith(run_id)

    resumed = train_cli(tmp_path, tiny_vesicles, f"ckpt_path={last}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [p.name for p in (tmp_path / "outputs" / "vesicles" / "runs").iterdir()] == [run.name]

    # one continuous metrics.csv: every step 0-5 trained once, every epoch validated once
    rows = csv_rows(run / "csv" / "metrics.csv")
    losses = [int(r["step"]) for r in rows if r["train/loss"]]
    assert losses == list(range(6))
    val = [(int(r["epoch"]), float(r["val/segm_mAP"])) for r in rows
           if r["val/segm_mAP"] and r["epoch"]]
    assert [epoch for epoch, _ in val[:3]] == [0, 1, 2]  # (then the final evaluation)
    kept = [r for r in rows_before if int(r["step"]) < 2]
    assert [{k: v for k, v in r.items() if v} for r in rows[:len(kept)]] == \
        [{k: v for k, v in r.items() if v} for r in kept]

    # the best checkpoint is the best of all three epochs, the earlier ones included
    scores = [score for _, score in val[:3]]
    best_epoch = scores.index(max(scores))  # ModelCheckpoint keeps the first of equal scores
    assert sorted(p.name for p in (run / "checkpoints").glob("best-*.ckpt")) == \
        [f"best-epoch{best_epoch:03d}.ckpt"]
    final = torch.load(last, map_location="cpu", weights_only=False)
    (tracking,) = (v for k, v in final["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert float(tracking["best_model_score"]) == max(scores)
    assert final["global_step"] == 6
    assert "best_model_score" not in resumed.stderr  # no "won't be reloaded" warning

    # the files written before the kill are intact, except those meant to change
    after = file_hashes(run)
    changing = {"checkpoints/last.ckpt", "csv/metrics.csv", "train.log",
                f"checkpoints/best-epoch{best_epoch:03d}.ckpt"}
    for name, digest in before.items():
        if name not in changing and not name.startswith("wandb/debug"):
            assert after.get(name, digest) == digest, name
            assert name in after or name.startswith("checkpoints/best-"), name
    assert (run / "train.log").read_bytes().startswith(log_before)
    assert (run / ".hydra" / "config.yaml").read_text().count("ckpt_path: null") == 1
    (resume_hydra,) = (run / ".hydra").glob("resume-*")
    assert f"ckpt_path: {last}" in (resume_hydra / "config.yaml").read_text()
    assert (run / "run_record.resume-1.json").is_file()

    # the same W&B run, resumed by id, goes on from step 2
    runs = sorted((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(p.name.endswith(run_id) for p in runs)
    second = read_run(next(runs[1].glob("*.wandb")))
    assert second.run_id == run_id
    steps = [h["trainer/global_step"] for h in second.history if "train/loss" in h]
    assert steps == [2, 3, 4, 5]


def test_only_the_last_checkpoint_of_a_run_continues_it(tmp_path: Path):
    run = tmp_path / "runs" / "t0"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("last.ckpt", "best-epoch001.ckpt"):
        (run / "checkpoints" / name).write_bytes(b"x")
    (tmp_path / "elsewhere.ckpt").write_bytes(b"x")
    last = run / "checkpoints" / "last.ckpt"
    assert continued_run_dir(last) == run.resolve()
    assert run_dir(str(last), True, "new") == str(run.resolve())
    for ckpt, train in ((last, False), (run / "checkpoints" / "best-epoch001.ckpt", True),
                        (tmp_path / "elsewhere.ckpt", True), (run / "checkpoints" / "x.ckpt",
                                                              True), (None, True)):
        assert run_dir(ckpt, train, "new") == "new"
        assert config_subdir(ckpt, train, "RUN", "t") == ".hydra"
    assert config_subdir(str(last), True, "RUN", "t") == ".hydra/resume-t"
    assert config_subdir(str(last), True, "MULTIRUN", "t") == ".hydra"
    assert wandb_run_id(run) is None
    (run / "wandb" / "offline-run-20260101_000000-abc123").mkdir(parents=True)
    (run / "wandb" / "run-20260102_000000-def456").mkdir()
    (run / "wandb" / "latest-run").mkdir()
    assert wandb_run_id(run) == "def456"


def test_csv_log_continues_from_the_resumed_step(tmp_path: Path):
    from em_lightning.loggers import CSVLogger

    def log(steps: range, key: str) -> list[dict[str, str]]:
        logger = CSVLogger(tmp_path, name="csv", version="")
        for step in steps:
            logger.log_metrics({key: float(step)}, step=step)
            logger.save()
        return csv_rows(tmp_path / "csv" / "metrics.csv")

    log(range(5), "loss")  # killed after step 4, resumed from a checkpoint at step 3:
    rows = log(range(3, 6), "lr")  # steps 3 and 4 again, one more key
    assert [(r["step"], r["loss"], r["lr"]) for r in rows] == [
        ("0", "0.0", ""), ("1", "1.0", ""), ("2", "2.0", ""),
        ("3", "", "3.0"), ("4", "", "4.0"), ("5", "", "5.0")]
    rows = log(range(2), "loss")  # a training from scratch replaces the file
    assert [(r["step"], r["loss"]) for r in rows] == [("0", "0.0"), ("1", "1.0")]
    assert set(rows[0]) == {"step", "loss"}
