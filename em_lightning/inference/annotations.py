"""Annotations and saved predictions as :class:`Detection` lists, for ``analyze``.

Ground truth is read through the task's own dataset class (the same validation and formats as
training: COCO polygons/RLE, COCO-rbox, DOTA, KITTI), so the annotated statistics describe
exactly the objects the model was trained and evaluated on. Masks are rasterised exactly as
``COCO.annToMask`` does (pycocotools, polygons in full-image coordinates, several polygons of
one object merged), and the RLE is then unpacked into a crop of the object's own pixels: the
pixel counts equal ``annToMask``'s, and no image-sized array is made per object.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pycocotools.mask as mask_utils

from em_lightning.data.errors import DataError
from em_lightning.data.rotated_formats import corners_to_rbox, require_radians
from em_lightning.inference.detections import Detection

__all__ = ["instance_detection", "load_prediction_table", "match_names",
           "read_results_json", "results_detections", "rle_crop", "segmentation_crop"]


def _rle_counts(counts: str) -> np.ndarray:
    """Run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``)."""
    out: list[int] = []
    pos = 0
    while pos < len(counts):
        value, shift, more = 0, 0, True
        while more:
            c = ord(counts[pos]) - 48
            value |= (c & 0x1F) << (5 * shift)
            more = bool(c & 0x20)
            pos += 1
            shift += 1
            if not more and c & 0x10:
                value |= -1 << (5 * shift)
        if len(out) > 2:
            value += out[-2]
        out.append(value)
    return np.asarray(out, np.int64)


def rle_crop(rle: Mapping[str, Any]) -> tuple[np.ndarray, tuple[int, int]] | None:
    """A COCO RLE (compressed or not) as a bool crop and its (x, y); None when empty.

    The runs are unpacked directly (column-major, as COCO stores them), so the cost is that
    of the object's pixels, not of the image.
    """
    height = int(rle["size"][0])
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    runs = _rle_counts(counts) if isinstance(counts, str) else np.asarray(counts, np.int64)
    bounds = np.concatenate([[0], np.cumsum(runs)])
    starts, ends = bounds[1:-1:2], bounds[2::2]  # runs of ones: odd positions
    lengths = ends - starts
    if not lengths.sum():
        return None
    keep = lengths > 0
    starts, lengths = starts[keep], lengths[keep]
    index = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    cols, rows = np.divmod(index, height)
    x0, y0 = int(cols.min()), int(rows.min())
    crop = np.zeros((int(rows.max()) - y0 + 1, int(cols.max()) - x0 + 1), bool)
    crop[rows - y0, cols - x0] = True
    return crop, (x0, y0)


def segmentation_crop(seg: Any, height: int, width: int
                      ) -> tuple[np.ndarray, tuple[int, int]] | None:
    """A COCO segmentation (polygons, compressed or uncompressed RLE) rasterised as
    ``COCO.annToMask`` does, as a crop and its (x, y); None when it covers no pixel."""
    if isinstance(seg, Mapping):
        return rle_crop(seg)
    polygons = [list(map(float, p)) for p in seg if len(p) >= 6]
    if not polygons:
        return None
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    return rle_crop(rle)


def instance_detection(instance: Mapping[str, Any], height: int, width: int
                       ) -> Detection | None:
    """An annotated instance (mmdet data_list format) as a detection with score 1.

    Masks (polygons or RLE) give mask objects; 8-value boxes (rotated datasets) give rotated
    boxes. None for instances without a measurable shape (box-only or empty masks).
    """
    label = int(instance["bbox_label"])
    seg = instance.get("mask")
    if seg:
        cropped = segmentation_crop(seg, height, width)
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
            require_radians(rbox[4:5], f"{where} (result {k})")
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
