"""Validate a COCO instance-segmentation file before mmdet parses it.

pycocotools and mmdet silently ignore annotations that point at unknown images, drop zero-area
boxes and unknown categories, and crash deep inside a worker on a corrupt image. Here every such
problem is found up front and either raised (strict) or counted and logged (non-strict).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from PIL import Image

from em_lightning.data.errors import SkipReport


def _finite(values: Any) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)


def _polygon_area(flat: list[float]) -> float:
    xs, ys = flat[0::2], flat[1::2]
    n = len(xs)
    return 0.5 * abs(sum(xs[i] * ys[(i + 1) % n] - xs[(i + 1) % n] * ys[i] for i in range(n)))


def check_image_file(path: Path, width: int | None, height: int | None) -> str | None:
    """Return a problem description, or None when the file exists, decodes and has the size."""
    if not path.is_file():
        return "image file not found"
    try:
        with Image.open(path) as im:
            size = im.size
            im.verify()
    except Exception as exc:  # PIL raises many types for corrupt data
        return f"image cannot be decoded ({type(exc).__name__}: {exc})"
    if width and height and tuple(size) != (int(width), int(height)):
        return f"image is {size[0]}x{size[1]} but the annotation file says {width}x{height}"
    return None


def segmentation_problem(seg: Any, width: int, height: int) -> str | None:
    """Problem with a COCO ``segmentation`` (polygons or RLE), or None."""
    if seg is None or seg == []:
        return None  # box-only annotation; mmdet handles it
    if isinstance(seg, dict):
        size = seg.get("size")
        if "counts" not in seg or not size or list(size) != [height, width]:
            return f"RLE size {size} does not match image {height}x{width} or has no counts"
        return None
    if not isinstance(seg, list):
        return f"segmentation of unknown type {type(seg).__name__}"
    for poly in seg:
        if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
            return "degenerate polygon (needs >= 3 points as x,y pairs)"
        if not _finite(poly):
            return "polygon has non-finite coordinates"
        if _polygon_area(poly) <= 0:
            return "polygon has zero area"
    return None


def validate_coco(data: dict, ann_path: Path, img_root: Path, report: SkipReport,
                  check_images: bool = True) -> dict:
    """Return ``data`` without the bad images/annotations; every drop goes through ``report``."""
    cats = {c["id"]: c for c in data.get("categories", [])}
    images, image_ids = [], {}
    for img in data.get("images", []):
        where = f"{ann_path} (image id {img.get('id')})"
        if not {"id", "file_name"} <= img.keys():
            report.problem(where, "image entry needs 'id' and 'file_name'", "bad_image_entry")
            continue
        path = img_root / img["file_name"]
        problem = check_image_file(path, img.get("width"), img.get("height")) if check_images \
            else None
        if problem:
            report.problem(path, problem, "bad_image")
            continue
        if not img.get("width") or not img.get("height"):
            with Image.open(path) as im:
                img = {**img, "width": im.size[0], "height": im.size[1]}
        images.append(img)
        image_ids[img["id"]] = img
    anns, seen = [], set()
    all_image_ids = {i.get("id") for i in data.get("images", [])}
    for ann in data.get("annotations", []):
        where = f"{ann_path} (annotation id {ann.get('id')})"
        problem, kind = None, ""
        img = image_ids.get(ann.get("image_id"))
        bbox = ann.get("bbox")
        if ann.get("id") in seen:
            problem, kind = "duplicate annotation id", "duplicate_id"
        elif ann.get("image_id") not in all_image_ids:
            problem, kind = f"refers to unknown image id {ann.get('image_id')}", "unknown_image"
        elif img is None:
            continue  # its image was skipped above and already reported
        elif ann.get("category_id") not in cats:
            problem = f"unknown category id {ann.get('category_id')} (known: {sorted(cats)})"
            kind = "unknown_category"
        elif not isinstance(bbox, list) or len(bbox) != 4 or not _finite(bbox):
            problem, kind = f"bbox must be 4 finite numbers, got {bbox}", "bad_box"
        elif bbox[2] <= 0 or bbox[3] <= 0:
            problem, kind = f"zero-area box {bbox}", "bad_box"
        else:
            seg_problem = segmentation_problem(ann.get("segmentation"), img["width"],
                                               img["height"])
            if seg_problem:
                problem, kind = seg_problem, "bad_segmentation"
        if problem:
            report.problem(where, problem, kind)
            continue
        if ann.get("area", bbox[2] * bbox[3]) <= 0:
            report.problem(where, f"zero area (area={ann.get('area')})", "bad_box")
            continue
        seen.add(ann["id"])
        anns.append({**ann, "area": ann.get("area", bbox[2] * bbox[3])})
    return {**data, "images": images, "annotations": anns}
