"""One LightningModule around any mmdet / mmrotate detector.

It does what MMEngine's Runner does for a model, and nothing more: ``init_weights`` after build,
``data_preprocessor(batch, training)`` before ``forward(mode=...)``, ``parse_losses``. The task
differences (masks vs rotated boxes, which metric) live in the config: the detector dict and the
evaluator's metric kinds.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from em_lightning.evaluation import DetectionEvaluator
from em_lightning.evaluation.tables import clean_metrics, compact_table
from em_lightning.models.builder import build_detector, load_pretrained
from em_lightning.models.schedules import build_scheduler
from em_lightning.models.test_time_aug import predict_with_views, views_for

log = logging.getLogger(__name__)


def collect_rng_states() -> dict:
    """RNG states as tensors and plain Python types (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"torch": torch.get_rng_state(),
              "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
              "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class NonFiniteLossError(RuntimeError):
    """Raised when the loss stays NaN/inf for too many consecutive steps."""


class DetectorModule(pl.LightningModule):
    """Train/validate/predict an OpenMMLab detector inside Lightning.

    Args:
        detector: OpenMMLab model config dict (``type=mmdet.MaskRCNN`` etc.); ``num_classes`` of
            every head is set from ``classes``.
        classes: class names, in label order.
        optimizer: ``functools.partial`` of a torch optimizer (Hydra ``_partial_: true``).
        scheduler: warm-up + ``step`` or ``cosine`` decay, see :func:`build_scheduler`.
        metrics: metric kinds for the evaluator: ``[bbox, segm]`` or ``[rbox, dota]``.
        monitor: the headline validation metric, e.g. ``segm_mAP``.
        load_from: full mmdet/mmrotate/em_lightning checkpoint to start from: a path, URL,
            ``open-mmlab://`` name or preset (``coco``, ``dota``; :mod:`.weights`).
        backbone_checkpoint: ResNet weights (torchvision or mmcls naming): ``auto`` (ImageNet
            if cached or downloadable, else from scratch), a preset (``imagenet``,
            ``micronet``, ``imagenet-micronet``), a path, URL or ``torchvision://`` name.
        max_nonfinite_steps: consecutive NaN/inf losses tolerated (skipped) before stopping.
        num_overlay_samples: validation samples kept for picture callbacks.
        scope: OpenMMLab library resolving unprefixed ``type`` names (mmdet or mmrotate).
        test_time_aug: ``none``, ``flip`` (4 views) or ``d4`` (8 views, flips and transposes):
            validation and prediction fuse the detections of every view
            (:mod:`em_lightning.models.test_time_aug`); costs one forward pass per view.
        test_time_aug_iou: box IoU at which detections of different views are one object.
    """

    def __init__(
        self,
        detector: dict,
        classes: Sequence[str],
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: dict | None = None,
        metrics: Sequence[str] = ("bbox",),
        monitor: str = "bbox_mAP",
        load_from: str | None = None,
        backbone_checkpoint: str | None = None,
        max_nonfinite_steps: int = 5,
        num_overlay_samples: int = 2,
        scope: str = "mmdet",
        test_time_aug: str | None = "none",
        test_time_aug_iou: float = 0.5,
    ) -> None:
        super().__init__()
        self.classes = list(classes)
        self.detector = build_detector(dict(detector), len(self.classes), scope)
        #: what was loaded (preset, URL, sha256 or "from scratch"), for run record and metrics
        self.pretrained = load_pretrained(self.detector, dict(detector), scope,
                                          backbone_checkpoint, load_from, self.classes)
        self.optimizer_factory = optimizer
        self.scheduler_cfg = dict(scheduler or {})
        self.metric_kinds = list(metrics)
        self.monitor = monitor
        self.max_nonfinite_steps = max_nonfinite_steps
        self.num_overlay_samples = num_overlay_samples
        self.eval_split = "val"
        self.nonfinite_steps = 0
        self._consecutive_nonfinite = 0
        self._evaluators: dict[str, DetectionEvaluator] = {}
        self._eval_size = 0
        self.overlay_samples: list[Any] = []
        self.last_metrics: dict[str, float] = {}
        #: log one compact table per validation (evaluate prints its own table instead)
        self.log_tables = True
        self.test_views = views_for(test_time_aug)
        self.test_time_aug_iou = test_time_aug_iou

    # ---------------------------------------------------------------- training
    def on_fit_start(self) -> None:
        """One line saying what this training does: model, size, steps, device, run dir."""
        trainer = self.trainer
        if not trainer.is_global_zero:
            return
        backbone = getattr(self.detector, "backbone", None)
        depth = getattr(backbone, "depth", "")
        arch = f"{type(backbone).__name__}{depth}" if backbone is not None else "?"
        params = sum(p.numel() for p in self.parameters()) / 1e6
        steps = trainer.estimated_stepping_batches
        epochs = f"{trainer.max_epochs} epoch" + ("s" if trainer.max_epochs != 1 else "")
        budget = f"{epochs} = {steps} steps" if trainer.max_steps == -1 \
            else f"{steps} steps (trainer.max_steps)"
        log.info("training %s (%s, %.1f M parameters, classes %s) for %s on %s (%s precision); "
                 "outputs in %s", type(self.detector).__name__, arch, params,
                 ", ".join(self.classes), budget, self.device, trainer.precision,
                 trainer.default_root_dir)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        data = self.detector.data_preprocessor(batch, training=True)
        losses = self.detector(**data, mode="loss")
        loss, log_vars = self.detector.parse_losses(losses)
        batch_size = len(batch["inputs"])
        if not torch.isfinite(loss):
            return self._skip_nonfinite(log_vars, batch)
        self._consecutive_nonfinite = 0
        # one call with detached tensors: no host sync per loss term on a GPU
        self.log_dict({f"train/{name}": value.detach() for name, value in log_vars.items()
                       if name != "loss"}, batch_size=batch_size)
        self.log("train/loss", loss.detach(), batch_size=batch_size, prog_bar=True)
        return loss

    def _skip_nonfinite(self, log_vars: dict, batch: dict) -> torch.Tensor | None:
        """Skip a NaN/inf step (no backward, no optimizer step); stop if it persists."""
        self.nonfinite_steps += 1
        self._consecutive_nonfinite += 1
        paths = [s.metainfo.get("img_path", "?") for s in batch["data_samples"]]
        bad = {k: float(v) for k, v in log_vars.items() if not math.isfinite(float(v))}
        log.warning("non-finite loss at step %d (%s) on %s: step skipped (%d so far)",
                    self.global_step, bad, paths, self.nonfinite_steps)
        if self._consecutive_nonfinite > self.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"loss was NaN/inf for {self._consecutive_nonfinite} consecutive steps "
                f"(last: {bad}, images {paths}); stopping so no garbage checkpoint is written. "
                "Lower the learning rate, enable gradient clipping or check the annotations.")
        if self._trainer is not None and self._trainer.world_size > 1:
            # every rank must take part in the gradient all-reduce: contribute zeros
            return sum(p.sum() * 0.0 for p in self.parameters() if p.requires_grad)
        return None

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params)
        if not self.scheduler_cfg:
            return optimizer
        total = self.trainer.estimated_stepping_batches if self.trainer else 1000
        scheduler = build_scheduler(optimizer, total_steps=int(total), **self.scheduler_cfg)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -------------------------------------------------------------- evaluation
    def evaluator(self, split: str) -> DetectionEvaluator:
        if split not in self._evaluators:
            self._evaluators[split] = DetectionEvaluator(self.metric_kinds, self.classes)
        return self._evaluators[split]

    @property
    def fuses_views(self) -> bool:
        """Prediction fuses several test-time views (scores are then means over views)."""
        return len(self.test_views) > 1

    def predict_samples(self, batch: dict) -> list[Any]:
        """Predictions (``DetDataSample`` with ``pred_instances``) in original image coordinates."""
        data = self.detector.data_preprocessor(batch, training=False)
        if self.fuses_views:
            return predict_with_views(self.detector, data, self.test_views,
                                      self.test_time_aug_iou)
        return self.detector(**data, mode="predict")

    def on_validation_epoch_start(self) -> None:
        self.evaluator(self.eval_split).reset()
        self.overlay_samples = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        samples = self.predict_samples(batch)
        self.evaluator(self.eval_split).process(samples)
        if len(self.overlay_samples) < self.num_overlay_samples:
            keep = self.num_overlay_samples - len(self.overlay_samples)
            self.overlay_samples.extend(s.cpu() for s in samples[:keep])

    def on_validation_epoch_end(self) -> None:
        size = self._split_size()
        # -1 (no object in a COCO size range) and NaN (class absent): both NaN, not logged
        metrics = clean_metrics(self.evaluator(self.eval_split).compute(size))
        self.last_metrics = metrics
        prefix = self.eval_split
        for name, value in metrics.items():
            if math.isnan(value) and name != self.monitor:  # the monitor is always logged
                continue
            self.log(f"{prefix}/{name}", value, prog_bar=name == self.monitor,
                     sync_dist=False, rank_zero_only=False)
        trainer = self._trainer
        if self.log_tables and trainer is not None and trainer.is_global_zero \
                and not trainer.sanity_checking:
            log.info("%s", compact_table(metrics, self.classes, self.metric_kinds, self.monitor,
                                         self._table_title(trainer)))

    def _table_title(self, trainer: pl.Trainer) -> str:
        if trainer.training or trainer.state.fn == "fit":
            return f"{self.eval_split} after epoch {self.current_epoch + 1} " \
                   f"(step {self.global_step})"
        ckpt = trainer.ckpt_path
        return f"{self.eval_split} split" + (f" ({Path(ckpt).name})" if ckpt else "")

    def _split_size(self) -> int:
        """Number of samples in the evaluated split (before distributed padding)."""
        loaders = self.trainer.val_dataloaders if self.trainer else None
        if isinstance(loaders, list):
            loaders = loaders[0]
        return len(loaders.dataset) if loaders is not None else 0

    def predict_step(self, batch: dict, batch_idx: int) -> list[Any]:
        return [s.cpu() for s in self.predict_samples(batch)]

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Store the RNG states too, so a resumed run draws the same augmentations."""
        checkpoint["rng_states"] = collect_rng_states()
        checkpoint["nonfinite_steps"] = self.nonfinite_steps

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "rng_states" in checkpoint:
            restore_rng_states(checkpoint["rng_states"])
        self.nonfinite_steps = int(checkpoint.get("nonfinite_steps", 0))

    def transfer_batch_to_device(self, batch: Any, device: torch.device,
                                 dataloader_idx: int) -> Any:
        """The detector's data preprocessor moves (and pads/normalises) batches itself."""
        return batch
