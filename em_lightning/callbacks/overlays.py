"""After each validation, draw a few validation images with predictions vs ground truth:
PNG files in the run directory and images in W&B (when a W&B logger is attached)."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger

from em_lightning.visualize import sample_overlay, save_png


class PredictionOverlays(pl.Callback):
    def __init__(self, out_dir: str, score_thr: float = 0.3) -> None:
        self.out_dir = Path(out_dir)
        self.score_thr = score_thr

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule
                                ) -> None:
        samples = getattr(pl_module, "overlay_samples", [])
        if trainer.sanity_checking or not trainer.is_global_zero or not samples:
            return
        split = getattr(pl_module, "eval_split", "val")
        paths, pictures = [], []
        for sample in samples:
            picture = sample_overlay(sample, self.score_thr)
            name = f"{split}_epoch{trainer.current_epoch:03d}_{Path(sample.img_path).stem}.png"
            paths.append(save_png(picture, self.out_dir / name))
            pictures.append(cv2.cvtColor(picture, cv2.COLOR_BGR2RGB))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=f"{split}/overlays", images=pictures,
                                 caption=[p.name for p in paths], step=trainer.global_step)
