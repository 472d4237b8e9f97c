"""labelme JSON files -> COCO instance annotations.

One labelme file per image (``shapes`` with ``label``, ``points``, ``shape_type``,
``group_id``; ``imagePath`` relative to the JSON file). Shapes become objects:

* ``polygon`` -> its points as a COCO polygon; ``rectangle`` (two opposite corners) -> the
  4-corner polygon; ``circle`` (centre and a point on the circle) -> a polygon with one vertex
  per pixel of circumference (at least 16);
* ``mask`` (labelme >= 5.3: a PNG of the box given by the two points) -> compressed RLE;
* shapes sharing a ``label`` and a non-null ``group_id`` -> one object (several polygons, or
  their union as RLE when a mask is among them), as labelme's own COCO export does;
* ``line``, ``linestrip``, ``point`` have no area: bad data (error, or skipped when not strict).

Points are copied as they are: labelme and COCO both put pixel (row i, column j) at
``[j, j+1) x [i, i+1)``. ``area`` and ``bbox`` are those of the rasterised object
(``COCO.annToMask``), so they agree with what training sees.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path, PureWindowsPath

import numpy as np
import pycocotools.mask as mask_utils

from em_lightning.data.errors import DataError, SkipReport
from em_lightning.data.rotated_formats import image_size
from em_lightning.inference.detections import crop_to_rle

__all__ = ["AREA_SHAPES", "labelme_to_coco", "read_labelme"]

AREA_SHAPES = ("polygon", "rectangle", "circle", "mask")


def read_labelme(path: Path) -> dict:
    """The parsed labelme file; a clear error when it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(path, f"not valid JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise DataError(path, "not a labelme file (no 'shapes' list)")
    return data


def _points(shape: dict, where: str) -> np.ndarray:
    pts = np.asarray(shape.get("points"), dtype=float)
    if pts.ndim != 2 or pts.shape[1] != 2 or not np.all(np.isfinite(pts)):
        raise DataError(where, f"'points' must be a list of finite [x, y] pairs, got "
                               f"{shape.get('points')!r}")
    return pts


def _circle(pts: np.ndarray) -> np.ndarray:
    (cx, cy), edge = pts[0], pts[1]
    radius = float(np.hypot(*(edge - pts[0])))
    n = max(16, math.ceil(2 * math.pi * radius))
    t = np.arange(n) * (2 * math.pi / n)
    return np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], axis=1)


def _mask_rle(shape: dict, pts: np.ndarray, height: int, width: int, where: str) -> dict:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(base64.b64decode(shape["mask"]))) as im:
            crop = np.asarray(im).astype(bool)
    except Exception as exc:  # bad base64 or PNG
        raise DataError(where, f"'mask' is not a base64 PNG ({type(exc).__name__})") from None
    if crop.ndim == 3:
        crop = crop.any(axis=-1)
    x0, y0 = (int(round(v)) for v in pts[0])
    # the part inside the image (labelme can store masks reaching past its border)
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x0 + crop.shape[1], width), min(y0 + crop.shape[0], height)
    if cx1 <= cx0 or cy1 <= cy0:
        raise DataError(where, "mask lies outside the image")
    inside = crop[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    return crop_to_rle(np.ascontiguousarray(inside), (cx0, cy0), height, width)


class _NoArea(DataError):
    """Internal: a shape type without area (line, point), told apart from a malformed one."""


def _shape_geometry(shape: dict, height: int, width: int, where: str) -> list[float] | dict:
    """A flat polygon or an RLE dict for one shape."""
    kind = shape.get("shape_type") or "polygon"
    if kind not in AREA_SHAPES:
        raise _NoArea(where, f"shape_type {kind!r} has no area; only "
                               f"{', '.join(AREA_SHAPES)} shapes become COCO objects")
    pts = _points(shape, where)
    if kind == "mask":
        if len(pts) != 2 or "mask" not in shape:
            raise DataError(where, "a mask shape needs 2 points and a 'mask' PNG")
        return _mask_rle(shape, pts, height, width, where)
    if kind == "rectangle":
        if len(pts) not in (2, 4):
            raise DataError(where, f"a rectangle needs 2 corner points, got {len(pts)}")
        (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
        pts = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    elif kind == "circle":
        if len(pts) != 2:
            raise DataError(where, f"a circle needs 2 points (centre, edge), got {len(pts)}")
        pts = _circle(pts)
    elif len(pts) < 3:
        raise DataError(where, f"a polygon needs at least 3 points, got {len(pts)}")
    return [round(float(v), 3) for v in pts.ravel()]


def _rle_of(parts: Sequence[list[float] | dict], height: int, width: int) -> dict:
    rles = [mask_utils.frPyObjects([p], height, width)[0] if isinstance(p, list)
            else {**p, "counts": p["counts"].encode("ascii")} for p in parts]
    return mask_utils.merge(rles)


def _image_path(data: dict, json_path: Path, image_dir: Path) -> Path:
    rel = data.get("imagePath")
    if not rel:
        raise DataError(json_path, "no 'imagePath' (an image embedded only as imageData is not "
                                   "supported: save the image file next to the JSON)")
    path = (json_path.parent / Path(PureWindowsPath(rel).as_posix())).resolve()
    if not path.is_file():
        raise DataError(json_path, f"image {path} (imagePath {rel!r}) does not exist")
    if image_dir.resolve() not in path.parents:
        raise DataError(json_path, f"image {path} is not below the image folder {image_dir}")
    return path


def labelme_to_coco(json_dir: str | Path, image_dir: str | Path | None = None,
                    classes: Sequence[str] | None = None, report: SkipReport | None = None
                    ) -> dict:
    """COCO instances of every ``*.json`` in ``json_dir``.

    ``file_name`` is each image's path relative to ``image_dir`` (default ``json_dir``).
    Categories are ``classes`` in that order (other labels are bad data), else the labels
    found, sorted. Objects covering no pixel are bad data too.
    """
    report = report if report is not None else SkipReport(strict=True)
    json_dir = Path(json_dir)
    if not json_dir.is_dir():
        raise DataError(json_dir, "labelme directory does not exist")
    image_dir = Path(image_dir) if image_dir is not None else json_dir
    if not image_dir.is_dir():
        raise DataError(image_dir, "image directory does not exist")
    files = sorted(json_dir.glob("*.json"))
    if not files:
        raise DataError(json_dir, "no labelme *.json files in this folder")
    images, objects = [], []  # objects: (image_id, label, parts, where)
    for json_path in files:
        data = read_labelme(json_path)
        path = _image_path(data, json_path, image_dir)
        width, height = image_size(path)
        stated = (data.get("imageWidth"), data.get("imageHeight"))
        if None not in stated and tuple(stated) != (width, height):
            raise DataError(json_path, f"imageWidth x imageHeight {stated[0]}x{stated[1]} "
                                       f"differs from the image {path} ({width}x{height})")
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": path.relative_to(image_dir.resolve())
                       .as_posix(), "width": width, "height": height})
        groups: dict[tuple, int] = {}
        for k, shape in enumerate(data["shapes"]):
            where = f"{json_path}[shapes][{k}]"
            label = str(shape.get("label") or "").strip() if isinstance(shape, dict) else ""
            if not label:
                report.problem(where, "shape has no label", "malformed")
                continue
            if classes is not None and label not in classes:
                report.problem(where, f"label {label!r} is not in the given classes "
                                      f"{list(classes)}", "unknown_class")
                continue
            try:
                geometry = _shape_geometry(shape, height, width, where)
            except DataError as err:
                kind = "no_area" if isinstance(err, _NoArea) else "malformed"
                report.problem(err.path, err.problem, kind)
                continue
            group = shape.get("group_id")
            key = (label, group)
            if group is not None and key in groups:
                objects[groups[key]][2].append(geometry)
                continue
            if group is not None:
                groups[key] = len(objects)
            objects.append((image_id, label, [geometry], where, height, width))
    names = list(classes) if classes is not None else sorted({o[1] for o in objects})
    cat_ids = {name: k + 1 for k, name in enumerate(names)}
    annotations = []
    for image_id, label, parts, where, height, width in objects:
        rle = _rle_of(parts, height, width)
        area = int(mask_utils.area(rle))
        if area == 0:
            report.problem(where, "shape covers no pixel of the image", "empty")
            continue
        if all(isinstance(p, list) for p in parts):
            segmentation: list | dict = list(parts)
        else:
            segmentation = {"size": [height, width], "counts": rle["counts"].decode("ascii")}
        annotations.append({
            "id": len(annotations) + 1, "image_id": image_id, "category_id": cat_ids[label],
            "segmentation": segmentation, "area": area,
            "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": 0})
    return {
        "info": {"description": f"labelme files of {json_dir} (em_lightning.data.convert "
                                "labelme)"},
        "images": images, "annotations": annotations,
        "categories": [{"id": i, "name": n, "supercategory": "object"}
                       for n, i in cat_ids.items()],
    }
