"""Turn detections of one image into table rows, COCO results and an overlay picture.

Measurements reuse :func:`em_lightning.analysis.objects_table`; masks are passed as crops (the
measures do not depend on where the crop sits) and the centroid is shifted back to image
coordinates afterwards.

COCO results (``coco_results.json``) are a list as COCOeval expects, one entry per object:
``image_id``, ``category_id`` (1-based class index), ``score``, ``bbox`` [x, y, w, h] and
``area``; masks add ``segmentation`` as compressed RLE; rotated boxes add
``"rbox": [cx, cy, w, h, angle_rad]`` (pixels; angle clockwise in y-down image coordinates,
mmrotate le90) with ``bbox`` the box's axis-aligned bounds and ``segmentation`` its 4 corners
as a polygon. ``coco_images.json`` holds the matching ``images`` and ``categories``, so
``COCO("coco_images.json").loadRes("coco_results.json")`` works with plain pycocotools.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from em_lightning.analysis.morphology import objects_table
from em_lightning.analysis.plots import bgr_class_colors, save_with_legend
from em_lightning.analysis.summary import touches_border
from em_lightning.inference.detections import Detection, crop_to_rle

__all__ = ["ImageInfo", "RBOX_FORMAT", "coco_entries", "coco_images", "draw_overlay",
           "measure"]

RBOX_FORMAT = ("[cx, cy, w, h, angle_rad]: pixels, angle in radians clockwise in y-down image "
               "coordinates (OpenCV / mmrotate le90: w >= h, angle in [-pi/2, pi/2))")


@dataclass
class ImageInfo:
    """One processed image: its id in the COCO files, its name in the tables, and its scale."""

    id: int
    name: str
    path: str
    height: int
    width: int
    pixel_size_nm: float | None
    pixel_size_source: str


def _rbox_mean(intensity: np.ndarray, det: Detection) -> float:
    """Mean intensity inside a rotated box (pixel centres inside the polygon)."""
    h, w = intensity.shape
    x0, y0 = max(int(math.floor(det.box[0])), 0), max(int(math.floor(det.box[1])), 0)
    x1, y1 = min(int(math.ceil(det.box[2])), w), min(int(math.ceil(det.box[3])), h)
    if x1 <= x0 or y1 <= y0:
        return math.nan
    canvas = np.zeros((y1 - y0, x1 - x0), np.uint8)
    pts = np.round((det.outline() - [x0 + 0.5, y0 + 0.5]) * 16).astype(np.int32)
    cv2.fillPoly(canvas, [pts], 1, lineType=cv2.LINE_8, shift=4)
    inside = canvas.astype(bool)
    return float(intensity[y0:y1, x0:x1][inside].mean()) if inside.any() else math.nan


def measure(detections: Sequence[Detection], info: ImageInfo, classes: Sequence[str],
            intensity: np.ndarray | None = None) -> pd.DataFrame:
    """Objects table of one image (see :func:`em_lightning.analysis.objects_table`).

    ``intensity`` (the image in its original units) gives ``mean_intensity``. Columns added
    here: ``image_id`` (as in the COCO files), the axis-aligned ``bbox_*`` in px and
    ``touches_border`` (the object reaches the image border, so it is cut off: see
    :func:`em_lightning.analysis.summary.touches_border`). This one table is the record of
    each object for both ``predict`` and ``analyze``.
    """
    records, offsets = [], []
    for det in detections:
        record = {"image": info.name, "class": classes[det.label], "score": det.score}
        if det.mask is not None:
            x0, y0 = det.origin
            h, w = det.mask.shape
            record["mask"] = det.mask
            if intensity is not None:
                record["intensity"] = intensity[y0:y0 + h, x0:x0 + w]
            offsets.append((x0, y0))
        else:
            record["rbox"] = tuple(float(v) for v in det.rbox)  # type: ignore[union-attr]
            offsets.append((0, 0))
        records.append(record)
    table = objects_table(records, info.pixel_size_nm)
    if not len(table):
        table["image_id"] = pd.Series(dtype=int)
        table["touches_border"] = pd.Series(dtype=bool)
        return table
    off = np.asarray(offsets, float)
    table["cx"] = table["cx"].to_numpy(float) + off[:, 0]
    table["cy"] = table["cy"].to_numpy(float) + off[:, 1]
    if intensity is not None:
        for row, det in enumerate(detections):
            if det.rbox is not None:
                table.loc[row, "mean_intensity"] = _rbox_mean(intensity, det)
    boxes = np.array([d.box for d in detections], float)
    table["bbox_x"], table["bbox_y"] = boxes[:, 0], boxes[:, 1]
    table["bbox_w"], table["bbox_h"] = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    table["touches_border"] = touches_border(boxes, info.height, info.width)
    table.insert(0, "image_id", info.id)
    return table


def _bbox(det: Detection) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in det.box)
    return [round(x0, 3), round(y0, 3), round(x1 - x0, 3), round(y1 - y0, 3)]


def coco_entries(detections: Sequence[Detection], info: ImageInfo,
                 first_id: int = 1) -> list[dict]:
    """COCO results entries of one image (format in the module docstring)."""
    out = []
    for k, det in enumerate(detections):
        entry = {"id": first_id + k, "image_id": info.id, "category_id": det.label + 1,
                 "score": round(det.score, 5), "bbox": _bbox(det)}
        if det.mask is not None:
            entry["segmentation"] = crop_to_rle(det.mask, det.origin, info.height, info.width)
            entry["area"] = int(np.count_nonzero(det.mask))
        else:
            rbox = [float(v) for v in det.rbox]  # type: ignore[union-attr]
            entry["rbox"] = [round(v, 3) for v in rbox[:4]] + [round(rbox[4], 6)]
            entry["segmentation"] = [[round(float(v), 3) for v in det.outline().ravel()]]
            entry["area"] = round(rbox[2] * rbox[3], 3)
        out.append(entry)
    return out


def coco_images(images: Sequence[ImageInfo], classes: Sequence[str]) -> dict:
    """The COCO ``images``/``categories`` document that the results refer to."""
    return {
        "info": {"description": "images processed by em_lightning.predict",
                 "rbox_format": RBOX_FORMAT},
        "images": [{"id": i.id, "file_name": i.name, "height": i.height, "width": i.width,
                    "pixel_size_nm": i.pixel_size_nm, "pixel_size_source": i.pixel_size_source}
                   for i in images],
        "categories": [{"id": k + 1, "name": name} for k, name in enumerate(classes)],
        "annotations": [],
    }


def draw_overlay(gray: np.ndarray, detections: Sequence[Detection], classes: Sequence[str],
                 path: str | Path) -> Path:
    """PNG of the image (values in [0, 255]) with each detection outlined in its class colour.

    Drawn from the mask crops (contours offset into place), so memory stays bounded; colours
    match the figures of :mod:`em_lightning.analysis.plots`.
    """
    canvas = cv2.cvtColor(np.clip(gray, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    colors = bgr_class_colors(classes)
    thickness = max(1, round(max(gray.shape) / 1500))
    for det in detections:
        color = colors[classes[det.label]]
        if det.mask is not None:
            contours, _ = cv2.findContours(det.mask.astype(np.uint8), cv2.RETR_LIST,
                                           cv2.CHAIN_APPROX_NONE, offset=det.origin)
            cv2.drawContours(canvas, contours, -1, color, thickness)
        else:
            cv2.polylines(canvas, [np.rint(det.outline()).astype(np.int32)], True, color,
                          thickness)
    return save_with_legend(canvas, colors, path)
