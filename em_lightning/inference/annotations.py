"""Annotations and saved predictions as :class:`Detection` lists, for ``analyze``.

Ground truth is read through the task's own dataset class (the same validation and formats as
training: COCO polygons/RLE, COCO-rbox, DOTA, KITTI), so the annotated statistics describe
exactly the objects the model was trained and evaluated on. Polygons are rasterised with
pycocotools (as ``COCO.annToMask``) inside their bounding box only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pycocotools.mask as mask_utils

from em_lightning.data.errors import DataError
from em_lightning.data.rotated_formats import corners_to_rbox
from em_lightning.inference.detections import Detection, crop_mask, rle_to_crop

__all__ = ["instance_detection", "load_prediction_table", "match_names",
           "read_results_json", "results_detections"]


def _polygon_crop(polygons: Sequence[Sequence[float]], height: int, width: int
                  ) -> tuple[np.ndarray, tuple[int, int]] | None:
    pts = np.concatenate([np.asarray(p, float).reshape(-1, 2) for p in polygons])
    x0 = max(int(math.floor(pts[:, 0].min())) - 1, 0)
    y0 = max(int(math.floor(pts[:, 1].min())) - 1, 0)
    x1 = min(int(math.ceil(pts[:, 0].max())) + 1, width)
    y1 = min(int(math.ceil(pts[:, 1].max())) + 1, height)
    if x1 <= x0 or y1 <= y0:
        return None
    shifted = [(np.asarray(p, float).reshape(-1, 2) - [x0, y0]).ravel().tolist()
               for p in polygons]
    rle = mask_utils.merge(mask_utils.frPyObjects(shifted, y1 - y0, x1 - x0))
    cropped = crop_mask(mask_utils.decode(rle).astype(bool))
    if cropped is None:
        return None
    crop, (cx, cy) = cropped
    return crop, (cx + x0, cy + y0)


def instance_detection(instance: Mapping[str, Any], height: int, width: int
                       ) -> Detection | None:
    """An annotated instance (mmdet data_list format) as a detection with score 1.

    Masks (polygons or RLE) give mask objects; 8-value boxes (rotated datasets) give rotated
    boxes. None for instances without a measurable shape (box-only or empty masks).
    """
    label = int(instance["bbox_label"])
    seg = instance.get("mask")
    if seg:
        cropped = rle_to_crop(seg) if isinstance(seg, dict) else _polygon_crop(seg, height,
                                                                             width)
        if cropped is None:
            return None
        return Detection.from_crop(label, 1.0, *cropped)
    bbox = np.asarray(instance.get("bbox", []), float)
    if bbox.size != 8:
        return None
    det = Detection(label, 1.0, np.zeros(4), rbox=np.array(corners_to_rbox(bbox.reshape(4, 2))))
    corners = det.outline()
    det.box = np.array([*corners.min(0), *corners.max(0)])
    return det


def results_detections(entries: Sequence[Mapping[str, Any]], label_of: Mapping[int, int],
                       height: int, width: int, where: str) -> list[Detection]:
    """COCO results entries of one image as detections (``rbox`` field, else RLE/polygons)."""
    out = []
    for k, entry in enumerate(entries):
        cat = entry.get("category_id")
        if cat not in label_of:
            raise DataError(where, f"result {k}: category_id {cat!r} is not one of "
                                   f"{sorted(label_of)}")
        score = float(entry.get("score", 1.0))
        if entry.get("rbox") is not None:
            rbox = np.asarray(entry["rbox"], float)
            det = Detection(label_of[cat], score, np.zeros(4), rbox=rbox)
            corners = det.outline()
            det.box = np.array([*corners.min(0), *corners.max(0)])
        elif entry.get("segmentation"):
            det = instance_detection({"bbox_label": label_of[cat],
                                      "mask": entry["segmentation"]}, height, width)
            if det is None:
                continue
            det.score = score
        else:
            raise DataError(where, f"result {k} has neither 'rbox' nor 'segmentation': "
                                   "shapes cannot be measured from boxes alone")
        out.append(det)
    return out


def load_prediction_table(folder: Path) -> pd.DataFrame:
    """The objects table of a predict output folder (Parquet, else CSV)."""
    parquet, csv = folder / "objects.parquet", folder / "objects.csv"
    if parquet.is_file():
        try:
            return pd.read_parquet(parquet)
        except ImportError:
            pass
    if csv.is_file():
        return pd.read_csv(csv, float_precision="round_trip")
    raise DataError(folder, "not a predict output folder (no objects.parquet or objects.csv)")


def match_names(predicted: Sequence[str], annotated: Sequence[str]) -> dict[str, str]:
    """Map predicted image names to annotated ones: same relative path, else same file name
    when that is unique on both sides (predict may have run on another folder level)."""
    known = set(annotated)
    by_base: dict[str, list[str]] = {}
    for name in annotated:
        by_base.setdefault(Path(name).name, []).append(name)
    pred_base: dict[str, int] = {}
    for name in predicted:
        pred_base[Path(name).name] = pred_base.get(Path(name).name, 0) + 1
    out = {}
    for name in predicted:
        base = Path(name).name
        if name in known:
            out[name] = name
        elif len(by_base.get(base, [])) == 1 and pred_base[base] == 1:
            out[name] = by_base[base][0]
    return out


def read_results_json(path: Path) -> tuple[list[dict], dict | None]:
    """(results list, companion coco_images.json document or None)."""
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read the results JSON ({exc})") from None
    if not isinstance(results, list):
        raise DataError(path, "a COCO results file must be a JSON list of detections")
    images = path.parent / "coco_images.json"
    doc = json.loads(images.read_text()) if images.is_file() else None
    return results, doc
