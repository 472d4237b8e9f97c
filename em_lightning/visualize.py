"""Overlay pictures of predictions vs ground truth on EM images (green = truth, red/yellow =
prediction), shared by the training callback and the evaluate/predict entry points."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from em_lightning.data.rotated_formats import rbox_to_corners
from em_lightning.data.transforms import normalize_em, read_grayscale

GT_COLOR = (80, 220, 80)  # BGR
PRED_COLOR = (60, 60, 255)


def rbox_corners(boxes: np.ndarray) -> np.ndarray:
    """(N, 5) cx cy w h angle (rad, clockwise in y-down) -> (N, 4, 2) corners."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
    return np.stack([rbox_to_corners(*box) for box in boxes]) if len(boxes) else \
        np.zeros((0, 4, 2))


def gt_outlines(instances: list[dict]) -> list[np.ndarray]:
    """Outlines of raw dataset instances: polygons of masks, else box corners."""
    out = []
    for inst in instances:
        mask = inst.get("mask")
        if isinstance(mask, list) and mask:
            out.extend(np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in mask)
            continue
        bbox = np.asarray(inst["bbox"], dtype=np.float64)
        if bbox.size == 8:
            out.append(bbox.reshape(4, 2))
        elif bbox.size == 4:
            x1, y1, x2, y2 = bbox
            out.append(np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]]))
    return out


def pred_outlines(pred: Any, score_thr: float) -> list[np.ndarray]:
    """Outlines of predicted instances above ``score_thr`` (mask contours or box corners)."""
    keep = (pred.scores >= score_thr).cpu().numpy()
    if "masks" in pred and len(pred.masks):
        out = []
        for mask in pred.masks.cpu().numpy()[keep]:
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                           cv2.CHAIN_APPROX_SIMPLE)
            out.extend(c.reshape(-1, 2).astype(np.float64) for c in contours)
        return out
    boxes = pred.bboxes
    boxes = boxes.tensor if hasattr(boxes, "tensor") else boxes
    boxes = boxes.cpu().numpy()[keep]
    if boxes.shape[-1] == 5:
        return list(rbox_corners(boxes))
    return [np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]]) for x1, y1, x2, y2 in boxes]


def draw_overlay(gray: np.ndarray, truth: list[np.ndarray], preds: list[np.ndarray]
                 ) -> np.ndarray:
    """BGR uint8 picture: the image with truth (green) and prediction (red) outlines."""
    img = cv2.cvtColor(np.clip(gray, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    thickness = max(1, round(max(img.shape[:2]) / 600))
    cv2.polylines(img, [np.round(p).astype(np.int32) for p in truth], True, GT_COLOR,
                  thickness, cv2.LINE_AA)
    cv2.polylines(img, [np.round(p).astype(np.int32) for p in preds], True, PRED_COLOR,
                  thickness, cv2.LINE_AA)
    return img


def sample_overlay(sample: Any, score_thr: float = 0.3) -> np.ndarray:
    """Overlay for one mmdet ``DetDataSample`` with predictions (original image coordinates)."""
    gray = normalize_em(read_grayscale(sample.img_path))
    truth = gt_outlines(sample.metainfo.get("instances", []))
    return draw_overlay(gray, truth, pred_outlines(sample.pred_instances, score_thr))


def save_png(img: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"{path}: could not write PNG")
    return path
