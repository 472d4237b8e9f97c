"""COCO-style (masks, boxes, rotated boxes) and DOTA-style evaluation."""

from em_lightning.evaluation.metrics import DetectionEvaluator

__all__ = ["DetectionEvaluator"]
