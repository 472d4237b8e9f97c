"""Test-time augmentation over the symmetries of the square: flips and transposes.

EM images have no preferred orientation, so a detector sees each image in several flipped or
transposed views; the detections of all views are mapped back and fused. Fusing (rather than
NMS) averages the box edges of the views and votes their masks, so boxes get tighter, and a
detection seen in few views loses score (docs/experiments.md, "Test-time augmentation": held-out
rotated AP 0.107 -> 0.180 for d4 on a nanorods checkpoint). mmdet's own ``DetTTAModel``
keeps one box per object by NMS and does not handle masks or rotated boxes, hence this module.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["View", "fuse_instances", "predict_with_views", "views_for"]

#: ``test_time_aug`` setting -> number of views
VIEW_SETS = {"none": 1, "flip": 4, "d4": 8}


@dataclass(frozen=True)
class View:
    """One symmetry of the image: optional transpose, then vertical / horizontal flip."""

    transpose: bool = False
    flip_v: bool = False
    flip_h: bool = False

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        """The view of ``image`` (..., H, W)."""
        if self.transpose:
            image = image.transpose(-1, -2)
        if self.flip_v:
            image = image.flip(-2)
        if self.flip_h:
            image = image.flip(-1)
        return image

    def restore_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """Masks (..., H', W') predicted on the view, in the original image's orientation."""
        if self.flip_h:
            masks = masks.flip(-1)
        if self.flip_v:
            masks = masks.flip(-2)
        if self.transpose:
            masks = masks.transpose(-1, -2)
        return masks

    def restore_boxes(self, boxes: torch.Tensor, view_hw: Sequence[int]) -> torch.Tensor:
        """Boxes ``x1 y1 x2 y2`` or rotated ``cx cy w h angle`` (angle clockwise, y down)
        predicted on a view of height/width ``view_hw``, in original image coordinates."""
        height, width = float(view_hw[0]), float(view_hw[1])
        boxes = boxes.clone()
        if boxes.shape[-1] == 4:
            if self.flip_h:
                boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
            if self.flip_v:
                boxes[:, [1, 3]] = height - boxes[:, [3, 1]]
            if self.transpose:
                boxes = boxes[:, [1, 0, 3, 2]]
            return boxes
        # a flip mirrors the rod's direction (cos a, sin a): angle -> -a; a transpose swaps
        # x and y: angle -> pi/2 - a. Width runs along the direction, so w and h stay.
        if self.flip_h:
            boxes[:, 0] = width - boxes[:, 0]
            boxes[:, 4] = -boxes[:, 4]
        if self.flip_v:
            boxes[:, 1] = height - boxes[:, 1]
            boxes[:, 4] = -boxes[:, 4]
        if self.transpose:
            boxes = boxes[:, [1, 0, 2, 3, 4]]
            boxes[:, 4] = math.pi / 2 - boxes[:, 4]
        return boxes


def views_for(setting: str | None) -> list[View]:
    """``none`` (one view), ``flip`` (4: flips) or ``d4`` (8: flips and transposes)."""
    key = str(setting or "none").lower()
    if key not in VIEW_SETS:
        raise ValueError(f"test_time_aug must be one of {sorted(VIEW_SETS)}, got {setting!r}")
    views = [View(t, v, h) for t, v, h in itertools.product([False, True], repeat=3)]
    return views[:VIEW_SETS[key]]


def _box_tensor(boxes: Any) -> torch.Tensor:
    return boxes.tensor if hasattr(boxes, "tensor") else boxes


def _as_boxes_like(tensor: torch.Tensor, like: Any) -> Any:
    return type(like)(tensor) if hasattr(like, "tensor") else tensor


def _swap_hw(value: Sequence) -> tuple:
    return (value[1], value[0], *value[2:])


_SHAPE_KEYS = ("img_shape", "ori_shape", "batch_input_shape", "pad_shape", "scale_factor")


def _view_batch(inputs: torch.Tensor, samples: Sequence[Any], view: View
                ) -> tuple[torch.Tensor, list[Any]]:
    """The batch seen in ``view``: each image's valid region (``img_shape``, top-left; the
    rest is padding) is flipped in place, so the padding stays bottom/right."""
    out = (inputs.transpose(-1, -2) if view.transpose else inputs).clone()
    view_samples = copy.deepcopy(list(samples))
    for i, sample in enumerate(view_samples):
        h, w = sample.metainfo["img_shape"][:2]
        flipped = View(False, view.flip_v, view.flip_h)
        if view.transpose:
            h, w = w, h
            sample.set_metainfo({k: _swap_hw(sample.metainfo[k]) for k in _SHAPE_KEYS
                                 if k in sample.metainfo})
        out[i, ..., :h, :w] = flipped.apply(out[i, ..., :h, :w])
    return out, view_samples


def _half_extents(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 2) half width/height of the axis-aligned bounds of rotated boxes."""
    cos, sin = torch.cos(boxes[:, 4]).abs(), torch.sin(boxes[:, 4]).abs()
    return torch.stack([boxes[:, 2] * cos + boxes[:, 3] * sin,
                        boxes[:, 2] * sin + boxes[:, 3] * cos], 1) / 2


def _overlaps(boxes: torch.Tensor, seed: torch.Tensor, among: torch.Tensor) -> torch.Tensor:
    """IoU with one box of the boxes flagged in ``among`` (0 for the others).

    Rotated IoU is the project's exact, convention-free
    :func:`~em_lightning.evaluation.rotated_iou.rotated_iou_matrix` (mmcv's is wrong for the
    coincident boxes that different views of one object give), computed only for the boxes
    whose axis-aligned bounds meet the seed's."""
    ious = torch.zeros(len(boxes), dtype=torch.float32, device=boxes.device)
    if boxes.shape[-1] != 5:
        from torchvision.ops import box_iou

        ious[among] = box_iou(boxes[among].float(), seed[None].float())[:, 0]
        return ious
    from em_lightning.evaluation.rotated_iou import rotated_iou_matrix

    reach = _half_extents(boxes) + _half_extents(seed[None])
    near = torch.nonzero(among & ((boxes[:, :2] - seed[:2]).abs() < reach).all(1)).flatten()
    if len(near):
        values = rotated_iou_matrix(boxes[near], seed[None])[:, 0]
        ious[near] = torch.from_numpy(values).float().to(boxes.device)
    return ious


def _align_to(boxes: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Rotated boxes rewritten as the same rectangles with angles within pi/4 of ``ref``'s:
    turning by a quarter turn swaps w and h, so members of one object can be averaged even
    when their views wrote it differently (le90 flips w/h of a nearly square box)."""
    boxes = boxes.clone()
    turns = torch.round((boxes[:, 4] - ref[4]) / (math.pi / 2))
    boxes[:, 4] -= turns * (math.pi / 2)
    odd = torch.remainder(turns, 2) == 1
    boxes[odd, 2], boxes[odd, 3] = boxes[odd, 3].clone(), boxes[odd, 2].clone()
    return boxes


def _mean_box(boxes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Score-weighted mean box; rotated members are first aligned to the first (the seed),
    and the mean is returned in le90."""
    if boxes.shape[-1] == 5:
        boxes = _align_to(boxes, boxes[0])
    mean = (boxes * weights[:, None]).sum(0) / weights.sum()
    if boxes.shape[-1] == 5:
        from em_lightning.evaluation.rotated_iou import normalize_le90_boxes

        mean = normalize_le90_boxes(mean[None])[0]
    return mean


def _vote_mask(masks: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Pixels that the score-weighted majority of the members' masks cover."""
    height, width = masks.shape[-2:]
    out = torch.zeros((height, width), dtype=torch.bool, device=masks.device)
    nonzero = masks.any(0).nonzero() if masks.numel() else None
    if nonzero is None or not len(nonzero):
        return out
    y0, x0 = nonzero.min(0).values.tolist()
    y1, x1 = (nonzero.max(0).values + 1).tolist()
    region = masks[:, y0:y1, x0:x1].float()
    vote = (region * weights[:, None, None]).sum(0) / weights.sum()
    out[y0:y1, x0:x1] = vote >= 0.5
    return out


def fuse_instances(views: Sequence[Any], iou_thr: float = 0.5,
                   max_per_img: int | None = None) -> Any:
    """Fuse the predictions of one image from ``len(views)`` views (mmengine ``InstanceData``
    with ``bboxes``, ``scores``, ``labels`` and optionally ``masks``, all in the original
    image's frame).

    Greedy, by falling score: a detection and the best-scoring detection of the same class
    from each other view that overlaps it by ``iou_thr`` (box IoU) form one object. Its box is
    the score-weighted mean, its mask the weighted majority vote, its score the sum of the
    members' scores over the number of views: an object found in one view of four keeps a
    quarter of its score.
    """
    from mmengine.structures import InstanceData

    boxes = torch.cat([_box_tensor(v.bboxes) for v in views])
    scores = torch.cat([v.scores for v in views])
    labels = torch.cat([v.labels for v in views])
    view_of = torch.cat([torch.full((len(v.scores),), i, dtype=torch.long,
                                    device=scores.device) for i, v in enumerate(views)])
    has_masks = "masks" in views[0]
    masks = torch.cat([torch.as_tensor(v.masks) for v in views]) if has_masks else None
    used = torch.zeros(len(scores), dtype=torch.bool, device=scores.device)
    fused_boxes, fused_scores, fused_labels, fused_masks = [], [], [], []
    for seed in torch.argsort(scores, descending=True).tolist():
        if used[seed]:
            continue
        candidates = (~used) & (labels == labels[seed])
        candidates &= _overlaps(boxes, boxes[seed], candidates) >= iou_thr
        members = [seed]
        for view in range(len(views)):
            if view == int(view_of[seed]):
                continue
            idx = torch.nonzero(candidates & (view_of == view)).flatten()
            if len(idx):
                members.append(int(idx[torch.argmax(scores[idx])]))
        member_idx = torch.tensor(members, device=scores.device)
        used[member_idx] = True
        weights = scores[member_idx]
        fused_boxes.append(_mean_box(boxes[member_idx], weights))
        fused_scores.append(weights.sum() / len(views))
        fused_labels.append(labels[seed])
        if masks is not None:
            fused_masks.append(_vote_mask(masks[member_idx], weights))
    result = InstanceData()
    n = len(fused_scores)
    result.bboxes = _as_boxes_like(
        torch.stack(fused_boxes) if n else boxes[:0], views[0].bboxes)
    result.scores = torch.stack(fused_scores) if n else scores[:0]
    result.labels = torch.stack(fused_labels) if n else labels[:0]
    if masks is not None:
        result.masks = torch.stack(fused_masks) if n else masks[:0]
    if max_per_img and n > max_per_img:  # already sorted by falling score
        result = result[:max_per_img]
    return result


def predict_with_views(detector: torch.nn.Module, data: dict, views: Sequence[View],
                       iou_thr: float = 0.5) -> list[Any]:
    """``detector.predict`` on every view of a preprocessed batch, fused per image.

    Returns the batch's data samples with fused ``pred_instances`` in original image
    coordinates, set on them as ``detector(**data, mode="predict")`` does.
    """
    inputs, samples = data["inputs"], data["data_samples"]
    per_view = []
    for view in views:
        view_inputs, view_samples = _view_batch(inputs, samples, view)
        preds = detector.predict(view_inputs, view_samples, rescale=True)
        restored = []
        for pred in preds:
            inst = pred.pred_instances
            boxes = _box_tensor(inst.bboxes)
            inst.bboxes = _as_boxes_like(
                view.restore_boxes(boxes, pred.metainfo["ori_shape"]), inst.bboxes)
            if "masks" in inst:
                inst.masks = view.restore_masks(torch.as_tensor(inst.masks))
            restored.append(inst)
        per_view.append(restored)
    test_cfg = getattr(getattr(detector, "roi_head", None), "test_cfg", None) or {}
    for i, sample in enumerate(samples):
        sample.pred_instances = fuse_instances([pv[i] for pv in per_view], iou_thr,
                                               test_cfg.get("max_per_img"))
    return list(samples)
