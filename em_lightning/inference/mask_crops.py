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
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from em_lightning.inference.detections import Detection, crop_mask

__all__ = ["paste_mask_crop", "predict_mask_crops", "supports_mask_crops"]


def supports_mask_crops(detector: torch.nn.Module) -> bool:
    """True for two-stage detectors with a standard RoI head and an FCN mask head."""
    from mmdet.models.detectors import TwoStageDetector
    from mmdet.models.roi_heads import StandardRoIHead
    from mmdet.models.roi_heads.mask_heads import FCNMaskHead

    roi_head = getattr(detector, "roi_head", None)
    return (isinstance(detector, TwoStageDetector) and type(roi_head) is StandardRoIHead
            and isinstance(getattr(roi_head, "mask_head", None), FCNMaskHead)
            and not getattr(roi_head, "semantic_head", None))


def paste_mask_crop(prob: torch.Tensor, box: torch.Tensor, height: int, width: int,
                    threshold: float) -> tuple[np.ndarray, tuple[int, int]] | None:
    """A (h, w) mask probability map resampled into its box's pixel region and thresholded.

    The arithmetic is that of mmdet's ``_do_paste_mask(skip_empty=True)`` for one box (same
    region, same float32 sampling grid, ``grid_sample``), so the pixels are identical; the region
    bounds come from Python floats because mmdet's tensor reductions for them cost 1-3 ms per
    object on a CPU (more than the resampling). None when the thresholded mask is empty.
    """
    x0f, y0f, x1f, y1f = box.tolist()
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
    cropped = crop_mask((region[0, 0] >= threshold).cpu().numpy())
    if cropped is None:
        return None
    crop, (x, y) = cropped
    return crop, (x + c0, y + r0)


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
        dets = []
        for i in np.flatnonzero(scores >= score_thr):
            pasted = paste_mask_crop(probs[i, 0], boxes[i], height, width,
                                     float(test_cfg.mask_thr_binary))
            if pasted is None:  # empty after thresholding: no shape to measure
                continue
            crop, (x0, y0) = pasted
            box = np.array([x0, y0, x0 + crop.shape[1], y0 + crop.shape[0]], float)
            dets.append(Detection(int(labels[i]), float(scores[i]), box, mask=crop,
                                  origin=(x0, y0)))
        out.append(dets)
    return out
