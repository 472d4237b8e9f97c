"""COCO-style (masks, boxes, rotated boxes) and DOTA-style evaluation."""

from em_lightning.evaluation.metrics import DetectionEvaluator
from em_lightning.evaluation.rotated_iou import normalize_le90_boxes, rotated_iou_matrix

__all__ = ["DetectionEvaluator", "normalize_le90_boxes", "rotated_iou_matrix"]
