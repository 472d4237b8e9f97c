"""Prediction on several devices or CPU processes through Lightning's ``Trainer.predict``.

Why Lightning: it already launches the processes (DDP: one per GPU, or gloo CPU processes),
puts each rank's model on its device and sets up the process group, on one machine or under
SLURM. Each rank predicts its own share of the images with the ordinary streaming loop and
writes its own parts and records (:mod:`em_lightning.inference.parts`; file names are unique
per image, so ranks never write the same file); the caller builds the tables once, on rank 0,
after every rank is done.

The "dataset" is one item per rank (its rank number): Lightning's distributed sampler hands
item r to rank r, so the image split stays ours (every world_size-th image of the input, from
the rank's number on) and no image is padded in twice.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

__all__ = ["ShareWork", "distributed_trainer", "predict_on_ranks"]

#: ``work(model, device, rank, world_size) -> images predicted``: one rank's share
ShareWork = Callable[[torch.nn.Module, torch.device, int, int], int]


class _SharePredictor(pl.LightningModule):
    """Runs one rank's share inside ``predict_step``; Lightning moved ``model`` to its device."""

    def __init__(self, model: torch.nn.Module, work: ShareWork) -> None:
        super().__init__()
        self.model = model
        self._work = work

    def predict_step(self, batch: list[int], batch_idx: int = 0) -> int:
        (rank,) = batch
        return self._work(self.model, self.device, int(rank), self.trainer.world_size)


def distributed_trainer(trainer_cfg: Any, root_dir: str | Path) -> pl.Trainer | None:
    """The configured Trainer (``trainer=ddp trainer.devices=N``) when it spans several
    processes, else None: one process predicts without a Trainer, on ``device=``.
    ``root_dir``: the prediction's output folder (the Trainer writes nothing there)."""
    from hydra.utils import instantiate

    trainer = instantiate(trainer_cfg, default_root_dir=str(root_dir), logger=False,
                          enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False)
    return trainer if trainer.world_size > 1 else None


def predict_on_ranks(trainer: pl.Trainer, model: torch.nn.Module, work: ShareWork
                     ) -> tuple[bool, int]:
    """Run ``work`` once per rank; returns (this process is rank 0, images it predicted).

    Every rank waits for the others before returning, so rank 0 may then read all parts.
    """
    ranks = list(range(trainer.world_size))
    loader = DataLoader(ranks, batch_size=1, shuffle=False, collate_fn=list)
    counts: Any = trainer.predict(_SharePredictor(model, work), dataloaders=loader,
                                  return_predictions=True)
    trainer.strategy.barrier("em_lightning.predict: every rank's parts written")
    return trainer.is_global_zero, int(sum(counts or []))
