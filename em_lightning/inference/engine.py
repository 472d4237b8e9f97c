"""Run a trained detector on in-memory images: tiles for large images, batches for small ones.

:class:`ModelRunner` turns gray tiles into detections with the checkpoint's own model and the
data config's test pipeline (minus loading and annotation steps), so a tile is preprocessed
exactly like a validation image. :class:`TiledPredictor` cuts images into tiles, batches tiles
(of one large image or of several small images) and merges each image's tiles
(:mod:`em_lightning.inference.merge`) as soon as its last tile is done, so at most one batch
of tiles and the images it touches are in memory.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from em_lightning.data.datamodule import pipeline_from_yaml
from em_lightning.inference.detections import Detection, crop_mask
from em_lightning.inference.mask_crops import predict_mask_crops, supports_mask_crops
from em_lightning.inference.merge import flag_detection, merge_tiles
from em_lightning.inference.tiling import Tile, tile_grid
from em_lightning.registry import scope as openmmlab_scope

__all__ = ["ModelRunner", "TiledPredictor", "build_pipeline", "normalize_mode",
           "threshold_in_model"]

log = logging.getLogger(__name__)

DetectFn = Callable[[list[np.ndarray]], list[list[Detection]]]
#: steps of a test pipeline that read files or annotations; prediction starts from an array
_SKIP_STEPS = {"EMLoadImage", "LoadImageFromFile", "LoadAnnotations", "ConvertBoxType"}
_META_KEYS = ("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")


def normalize_mode(test_pipeline: Sequence[dict]) -> str:
    """The intensity normalisation the model was trained with (EMLoadImage's ``normalize``)."""
    for step in test_pipeline:
        if str(step.get("type", "")).split(".")[-1] == "EMLoadImage":
            return str(step.get("normalize", "auto"))
    return "auto"


def build_pipeline(test_pipeline: Sequence[dict], scope: str, scale: float = 1.0) -> Any:
    """The test pipeline for in-memory images; ``Resize`` resamples by ``scale`` instead of
    to the training size, because a tile is not a whole training image."""
    from mmengine.dataset import Compose

    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    steps = []
    for step in pipeline_from_yaml(list(test_pipeline)):
        name = str(step["type"]).split(".")[-1]
        if name in _SKIP_STEPS:
            continue
        if name == "Resize":
            step = {k: v for k, v in step.items() if k != "scale"}
            step.update(scale_factor=float(scale), keep_ratio=True)
        if name == "PackDetInputs":
            step["meta_keys"] = _META_KEYS
        steps.append(step)
    with openmmlab_scope(scope):
        return Compose(steps)


def _to_numpy(value: Any) -> np.ndarray:
    value = value.tensor if hasattr(value, "tensor") else value
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def detections_from_instances(pred: Any, score_thr: float) -> list[Detection]:
    """mmdet ``pred_instances`` (image coordinates) -> detections with cropped masks.

    Empty masks (possible after the mask threshold) are dropped: they have no shape to measure.
    """
    scores = _to_numpy(pred.scores).astype(float)
    keep = np.flatnonzero(scores >= score_thr)
    labels = _to_numpy(pred.labels).astype(int)
    out: list[Detection] = []
    if "masks" in pred:
        masks = pred.masks
        for i in keep:
            cropped = crop_mask(_to_numpy(masks[int(i)]).astype(bool))
            if cropped is None:
                continue
            out.append(Detection.from_crop(int(labels[i]), float(scores[i]), *cropped))
        return out
    boxes = _to_numpy(pred.bboxes).astype(float)
    for i in keep:
        b = boxes[i]
        if b.shape[-1] == 4:  # horizontal box detector: an unrotated rectangle
            b = np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2, b[2] - b[0], b[3] - b[1], 0.0])
        det = Detection(int(labels[i]), float(scores[i]), np.zeros(4), rbox=b.copy())
        corners = det.outline()
        det.box = np.array([*corners.min(0), *corners.max(0)], float)
        out.append(det)
    return out


def threshold_in_model(detector: torch.nn.Module, score_thr: float) -> None:
    """Make a two-stage detector drop boxes scoring below ``score_thr`` itself.

    Its ``test_cfg.rcnn.score_thr`` (0.05 in mmdet's configs) is applied before NMS and the
    mask head, so raising it spares mask prediction, full-size mask pasting and copying for
    every detection that would be thrown away afterwards. The detections at or above
    ``score_thr`` stay the same: a lower-scoring box never suppresses a higher one in NMS.
    """
    roi_head = getattr(detector, "roi_head", None)
    test_cfg = getattr(roi_head, "test_cfg", None)
    if test_cfg is None or "score_thr" not in test_cfg:
        return
    test_cfg = copy.deepcopy(test_cfg)  # the module's own config may be shared
    test_cfg.score_thr = max(float(test_cfg.score_thr), float(score_thr))
    roi_head.test_cfg = test_cfg


class ModelRunner:
    """Callable: a batch of gray float32 tiles (values as the model was trained on, [0, 255])
    -> detections per tile in tile coordinates, at or above ``score_thr``.

    The threshold is applied inside the detector (:func:`threshold_in_model`), so the module
    passed in is set up for prediction at that threshold. With test-time augmentation (the
    module's ``test_views``) it is applied after fusing the views instead: a fused score is
    the views' mean, so a view's detection below it may still count."""

    def __init__(self, module: torch.nn.Module, test_pipeline: Sequence[dict], scope: str,
                 scale: float = 1.0, score_thr: float = 0.5,
                 device: str | torch.device = "cpu") -> None:
        self.module = module.to(device).eval()
        self.detector = getattr(module, "detector", module)
        fused_views = getattr(module, "fuses_views", False)
        if not fused_views:
            threshold_in_model(self.detector, score_thr)
        self.mask_crops = supports_mask_crops(self.detector) and not fused_views
        test_cfg = getattr(getattr(self.detector, "roi_head", None), "test_cfg", None) or {}
        self.max_per_img = test_cfg.get("max_per_img")
        self.warned_full = False
        self.pipeline = build_pipeline(test_pipeline, scope, scale)
        self.scope = scope
        self.score_thr = score_thr

    @torch.no_grad()
    def __call__(self, tiles: list[np.ndarray]) -> list[list[Detection]]:
        inputs, samples = [], []
        for i, tile in enumerate(tiles):
            img = np.repeat(np.asarray(tile, np.float32)[..., None], 3, axis=-1)
            packed = self.pipeline({"img": img, "img_shape": img.shape[:2],
                                    "ori_shape": img.shape[:2], "img_path": "", "img_id": i})
            inputs.append(packed["inputs"])
            samples.append(packed["data_samples"])
        batch = {"inputs": inputs, "data_samples": samples}
        with openmmlab_scope(self.scope):
            if self.mask_crops:  # same values, without image-sized mask arrays
                data = self.detector.data_preprocessor(batch, training=False)
                out = predict_mask_crops(self.detector, data, self.score_thr)
            else:
                preds = self.module.predict_samples(batch)
                out = [detections_from_instances(p.pred_instances, self.score_thr)
                       for p in preds]
        self._warn_if_full(out)
        return out

    def cap_problem(self) -> str:
        """What hitting the detector's cap means and what to do (log and summary say the same)."""
        return (f"some tiles reached the model's max_per_img ({self.max_per_img} detections): "
                "objects beyond it are missing; use a smaller tile.size or raise "
                "model.detector.test_cfg.rcnn.max_per_img")

    def _warn_if_full(self, detections: list[list[Detection]]) -> None:
        """Say (once) when a tile hit the detector's cap: objects beyond it are lost."""
        if self.warned_full or not self.max_per_img:
            return
        if any(len(d) >= self.max_per_img for d in detections):
            self.warned_full = True
            log.warning(self.cap_problem())


@dataclass
class _Pending:
    key: Hashable
    tiles: list[Tile]
    remaining: int
    detections: list[Detection] = field(default_factory=list)


class TiledPredictor:
    """Detect objects in images of any size with a batch detector ``detect``.

    Images larger than ``tile_size`` are cut into ``tile_size`` tiles overlapping by
    ``overlap`` px and merged across seams; ``tile_size`` None or <= 0 disables tiling.
    ``margin``: a detection this close to an inner tile edge counts as cut.
    """

    def __init__(self, detect: DetectFn, tile_size: int | None = 1024, overlap: int = 128,
                 batch_size: int = 2, margin: int = 2, iou_thr: float = 0.5) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.detect = detect
        self.tile_size = tile_size
        self.overlap = overlap
        self.batch_size = batch_size
        self.margin = margin
        self.iou_thr = iou_thr

    def predict(self, image: np.ndarray) -> list[Detection]:
        """Detections of one 2-D image in image coordinates."""
        return next(self.run([(0, image)]))[1]

    def run(self, images: Iterable[tuple[Hashable, np.ndarray]]
            ) -> Iterator[tuple[Hashable, list[Detection]]]:
        """Yield ``(key, detections)`` per image, in input order, as each image completes."""
        pending: dict[int, _Pending] = {}
        batch: list[tuple[int, Tile, np.ndarray]] = []
        for seq, (key, image) in enumerate(images):
            if image.ndim != 2:
                raise ValueError(f"{key}: expected a 2-D gray image, got shape {image.shape}")
            tiles = tile_grid(image.shape[0], image.shape[1], self.tile_size, self.overlap)
            pending[seq] = _Pending(key, tiles, len(tiles))
            for tile in tiles:
                batch.append((seq, tile, image[tile.y0:tile.y1, tile.x0:tile.x1]))
                if len(batch) == self.batch_size:
                    yield from self._flush(batch, pending)
                    batch = []
        yield from self._flush(batch, pending)

    def _flush(self, batch: list[tuple[int, Tile, np.ndarray]], pending: dict[int, _Pending]
               ) -> Iterator[tuple[Hashable, list[Detection]]]:
        if not batch:
            return
        results = self.detect([arr for _, _, arr in batch])
        for (seq, tile, _), dets in zip(batch, results):
            state = pending[seq]
            state.detections += [flag_detection(d.shifted(tile.x0, tile.y0), tile, self.margin)
                                 for d in dets]
            state.remaining -= 1
        for seq in sorted(s for s, p in pending.items() if p.remaining == 0):
            state = pending.pop(seq)
            yield state.key, merge_tiles(state.detections, state.tiles, self.iou_thr)
