"""Mask R-CNN prediction straight to per-object mask crops, never full-image masks.

mmdet's ``predict`` pastes every instance mask into an ``(N, H, W)`` image-sized tensor (on a
1024 px tile with 300 objects: 300 MB of bool) which the predictor then crops again, object by
object. Here the detector's own steps run in the same order (``extract_feat``, RPN,
``predict_bbox`` without rescaling, the mask head), and each mask is resampled into its box
region only, with the arithmetic of mmdet's ``_do_paste_mask(skip_empty=True)`` - what mmdet
does on a CPU, minus the image-sized copy. Values are identical to ``predict(rescale=True)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from em_lightning.inference.detections import Detection, crop_mask

__all__ = ["paste_mask_crop", "paste_mask_region", "predict_mask_crops", "supports_mask_crops"]


def supports_mask_crops(detector: torch.nn.Module) -> bool:
    """True for two-stage detectors with a standard RoI head and an FCN mask head."""
    from mmdet.models.detectors import TwoStageDetector
    from mmdet.models.roi_heads import StandardRoIHead
    from mmdet.models.roi_heads.mask_heads import FCNMaskHead

    roi_head = getattr(detector, "roi_head", None)
    return (isinstance(detector, TwoStageDetector) and type(roi_head) is StandardRoIHead
            and isinstance(getattr(roi_head, "mask_head", None), FCNMaskHead)
            and not getattr(roi_head, "semantic_head", None))


def paste_mask_region(prob: torch.Tensor, box: torch.Tensor, bounds: Sequence[float],
                      height: int, width: int, threshold: float
                      ) -> tuple[torch.Tensor, tuple[int, int]] | None:
    """A (h, w) mask probability map resampled into its box's pixel region and thresholded:
    (bool region on the model's device, region's top-left (x, y)); None for an empty region.

    The arithmetic is that of mmdet's ``_do_paste_mask(skip_empty=True)`` for one box (same
    region, same float32 sampling grid, ``grid_sample``), so the pixels are identical. The
    region bounds come from ``bounds``, the box as Python floats (one device-to-host copy for
    all boxes), because mmdet's tensor reductions for them cost 1-3 ms per object on a CPU.
    """
    x0f, y0f, x1f, y1f = bounds
    c0, r0 = max(math.floor(x0f) - 1, 0), max(math.floor(y0f) - 1, 0)
    c1, r1 = min(math.ceil(x1f) + 1, width), min(math.ceil(y1f) + 1, height)
    if c1 <= c0 or r1 <= r0 or x1f <= x0f or y1f <= y0f:
        return None
    x0, y0, x1, y1 = box.split(1)
    cols = (torch.arange(c0, c1, device=prob.device).to(torch.float32) + 0.5 - x0) / (x1 - x0)
    rows = (torch.arange(r0, r1, device=prob.device).to(torch.float32) + 0.5 - y0) / (y1 - y0)
    cols, rows = cols * 2 - 1, rows * 2 - 1
    grid = torch.stack([cols[None, :].expand(len(rows), len(cols)),
                        rows[:, None].expand(len(rows), len(cols))], dim=2)
    region = F.grid_sample(prob[None, None].to(torch.float32), grid[None], align_corners=False)
    return region[0, 0] >= threshold, (c0, r0)


def paste_mask_crop(prob: torch.Tensor, box: torch.Tensor, height: int, width: int,
                    threshold: float) -> tuple[np.ndarray, tuple[int, int]] | None:
    """One object's mask as a bool crop to its pixels and the crop's (x, y); None if empty."""
    pasted = paste_mask_region(prob, box, box.tolist(), height, width, threshold)
    return None if pasted is None else _tight(pasted[0].cpu().numpy(), pasted[1])


def _tight(region: np.ndarray, origin: tuple[int, int]
           ) -> tuple[np.ndarray, tuple[int, int]] | None:
    cropped = crop_mask(region)
    if cropped is None:
        return None
    crop, (x, y) = cropped
    return crop, (x + origin[0], y + origin[1])


def _regions_to_host(regions: list[torch.Tensor]) -> list[np.ndarray]:
    """Bool regions to numpy with one device-to-host copy (not one per object on a GPU)."""
    if not regions:
        return []
    flat = torch.cat([r.reshape(-1) for r in regions]).cpu().numpy()
    sizes = np.cumsum([r.numel() for r in regions])[:-1]
    return [part.reshape(r.shape) for part, r in zip(np.split(flat, sizes), regions)]


@torch.no_grad()
def predict_mask_crops(detector: Any, data: dict, score_thr: float) -> list[list[Detection]]:
    """Detections (masks as crops, image coordinates) per image of a preprocessed batch."""
    from mmdet.structures.bbox import bbox2roi

    inputs, samples = data["inputs"], data["data_samples"]
    roi_head = detector.roi_head
    test_cfg = roi_head.test_cfg
    feats = detector.extract_feat(inputs)
    proposals = detector.rpn_head.predict(feats, samples, rescale=False)
    metas = [s.metainfo for s in samples]
    results = roi_head.predict_bbox(feats, metas, proposals, rcnn_test_cfg=test_cfg,
                                    rescale=False)
    rois = bbox2roi([r.bboxes for r in results])
    if rois.shape[0] == 0:
        return [[] for _ in results]
    logits = roi_head._mask_forward(feats, rois)["mask_preds"]
    out = []
    for res, logit, meta in zip(results, logits.split([len(r) for r in results]), metas):
        boxes = res.bboxes / res.bboxes.new_tensor(meta["scale_factor"]).repeat((1, 2))
        index = torch.arange(len(res), device=logit.device)
        if not roi_head.mask_head.class_agnostic:
            logit = logit[index, res.labels][:, None]
        probs = logit.sigmoid()
        height, width = meta["ori_shape"][:2]
        scores, labels = res.scores.cpu().numpy(), res.labels.cpu().numpy()
        keep = np.flatnonzero(scores >= score_thr)
        bounds = boxes[torch.as_tensor(keep, device=boxes.device)].tolist()
        pasted = [paste_mask_region(probs[i, 0], boxes[i], b, height, width,
                                    float(test_cfg.mask_thr_binary))
                  for i, b in zip(keep, bounds)]
        found = [(i, p) for i, p in zip(keep, pasted) if p is not None]
        dets = []
        for (i, (_, origin)), region in zip(found, _regions_to_host([p[0] for _, p in found])):
            tight = _tight(region, origin)
            if tight is None:  # empty after thresholding: no shape to measure
                continue
            dets.append(Detection.from_crop(int(labels[i]), float(scores[i]), *tight))
        out.append(dets)
    return out
