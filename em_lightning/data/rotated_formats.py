"""One in-memory record format for rotated-box datasets, and three annotation formats.

Rotated boxes are ``(cx, cy, w, h, angle)`` in pixels and radians. Everything here shares one
set of conventions so that a box means the same rectangle whichever file it came from:

* **Coordinates** are continuous image coordinates, x to the right and y *down*; pixel
  (row ``i``, column ``j``) covers ``[j, j+1) x [i, i+1)``, its centre is ``(j+0.5, i+0.5)``
  (the COCO / mmdet convention).
* **Angle** is in radians, positive = clockwise on screen (y points down), the same as OpenCV
  and mmrotate. A corner is ``c + R(angle) @ (+-w/2, +-h/2)`` with
  ``R = [[cos, -sin], [sin, cos]]``; ``w`` is measured along the rotated x axis. Readers
  reject a file with an angle beyond a full turn (``|angle| > 2*pi``): it is in degrees.
* **Normalisation** is mmrotate's ``'le90'``: ``w >= h`` and ``angle`` in ``[-pi/2, pi/2)``.
  All readers return le90 boxes, so the same rectangle has the same numbers whatever its source
  (up to float noise at the ``+-pi/2`` seam and for squares: compare boxes with
  :func:`rotated_iou`, not by value).

The file formats:

* **KITTI (LabelImg rotated)**: one ``<image stem>.txt`` per image, one object per line,
  ``class_idx cx cy w h angle_rad [optional trailing text, ignored]``; ``class_idx`` is a 0-based
  index into ``classes.txt`` (one name per line, in the label directory). ``angle_rad`` uses the
  convention above (clockwise in y-down). Image sizes come from the image files.
* **DOTA v1**: one ``<image stem>.txt`` per image; optional header lines ``imagesource:...`` and
  ``gsd:...``; object lines ``x1 y1 x2 y2 x3 y3 x4 y4 class [difficulty]``. The corners are in
  clockwise order as seen on screen (positive shoelace area in y-down coordinates). Readers
  accept either point order; general quadrilaterals are fitted by averaging opposite edges
  (exact for rectangles). Difficulty is read but not kept; writers write ``0`` and no header,
  because mmrotate's DOTA loader parses every line as an object.
* **COCO rotated**: a COCO JSON whose annotations carry ``"rbox": [cx, cy, w, h, angle_rad]``
  (same convention as KITTI). Writers also fill the standard ``"bbox"`` (axis-aligned bounds of
  the rotated box, not clipped to the image), ``"segmentation"`` (the 4-corner polygon) and
  ``"area"`` (``w*h``) so ordinary COCO tools still work. Category ids are 1-based.

Readers validate every object through a :class:`~em_lightning.data.errors.SkipReport`
(strict by default: the first problem raises :class:`DataError` naming file and line).
Writers are deterministic: sorted JSON keys, fixed float formatting (6 decimals for pixels,
9 for radians), so regenerating a dataset gives byte-identical files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import shapely
from shapely.geometry import Polygon

from em_lightning.data.errors import DataError, SkipReport

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
KITTI_CLASSES_FILE = "classes.txt"
PIXEL_DIGITS = 6
ANGLE_DIGITS = 9

RBox = tuple[float, float, float, float, float]


@dataclass
class RotatedObject:
    """One rotated box; ``angle`` in radians, clockwise in y-down image coordinates."""

    label: str
    cx: float
    cy: float
    w: float
    h: float
    angle: float

    @property
    def rbox(self) -> RBox:
        return (self.cx, self.cy, self.w, self.h, self.angle)


@dataclass
class RotatedImage:
    """One image and its objects; ``file_name`` is relative to the image root."""

    file_name: str
    width: int
    height: int
    objects: list[RotatedObject] = field(default_factory=list)


# --------------------------------------------------------------------------- geometry


def rbox_to_corners(cx: float, cy: float, w: float, h: float, angle: float) -> np.ndarray:
    """Return the (4, 2) corners, clockwise on screen, starting at the rotated top-left."""
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    local = np.array([[-w, -h], [w, -h], [w, h], [-w, h]], dtype=float) / 2.0
    return local @ rot.T + np.array([cx, cy], dtype=float)


def normalize_le90(cx: float, cy: float, w: float, h: float, angle: float) -> RBox:
    """Same rectangle with ``w >= h`` and ``angle`` in ``[-pi/2, pi/2)`` (mmrotate 'le90')."""
    if w < h:
        w, h, angle = h, w, angle + math.pi / 2
    angle = (angle + math.pi / 2) % math.pi - math.pi / 2
    if angle >= math.pi / 2:  # float guard; the modulo can round up to the open end
        angle -= math.pi
    return float(cx), float(cy), float(w), float(h), float(angle)


def normalize_le90_array(boxes: np.ndarray) -> np.ndarray:
    """:func:`normalize_le90` for an ``(N, 5)`` array (float64 copy; other columns kept).

    Every rotated IoU in the project goes through this first (see
    :mod:`em_lightning.evaluation.rotated_iou`), so a rectangle is written one way only.
    """
    out = np.array(boxes, dtype=np.float64, copy=True).reshape(-1, np.shape(boxes)[-1])
    swap = out[:, 2] < out[:, 3]
    out[swap, 2], out[swap, 3] = out[swap, 3].copy(), out[swap, 2].copy()
    out[swap, 4] += math.pi / 2
    out[:, 4] = np.remainder(out[:, 4] + math.pi / 2, math.pi) - math.pi / 2
    out[out[:, 4] >= math.pi / 2, 4] -= math.pi  # float guard at the open end
    return out


#: Largest |angle| accepted from a file: a full turn plus float noise. Angles beyond it are
#: almost certainly degrees (a 45-degree box written as 45), which would silently turn every
#: box by a wrong amount.
MAX_ABS_RADIANS = 2 * math.pi + 1e-3


def require_radians(angles: Iterable[float], where: object) -> None:
    """Raise :class:`DataError` naming ``where`` when an angle is clearly in degrees."""
    for angle in angles:
        if math.isfinite(angle) and abs(angle) > MAX_ABS_RADIANS:
            raise DataError(
                where,
                f"rotated-box angle {angle:g} is outside [-2*pi, 2*pi]: angles must be in "
                "radians (this looks like degrees; convert with math.radians)",
            )


def corners_to_rbox(corners: np.ndarray) -> RBox:
    """Invert :func:`rbox_to_corners` for 4 consecutive corners (either winding), le90.

    Opposite edges are averaged, which is exact for a rectangle and a stable fit for the
    slightly non-rectangular quadrilaterals found in hand-made DOTA labels.
    """
    p = np.asarray(corners, dtype=float)
    if p.shape != (4, 2):
        raise ValueError(f"expected (4, 2) corners, got shape {p.shape}")
    cx, cy = p.mean(axis=0)
    e_w = (p[1] - p[0]) + (p[2] - p[3])
    e_h = (p[2] - p[1]) + (p[3] - p[0])
    w = float(np.hypot(*e_w)) / 2.0
    h = float(np.hypot(*e_h)) / 2.0
    angle = math.atan2(e_w[1], e_w[0])
    return normalize_le90(cx, cy, w, h, angle)


def rbox_polygon(box: Sequence[float]) -> Polygon:
    return Polygon(rbox_to_corners(*box))


def rotated_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Polygon IoU of two ``(cx, cy, w, h, angle)`` boxes; 0 when either is degenerate."""
    # snapped to a 1e-9 px grid: GEOS loses the intersection of edges that coincide up to
    # float noise (see em_lightning.evaluation.rotated_iou)
    pa, pb = (shapely.set_precision(rbox_polygon(box), 1e-9) for box in (a, b))
    inter = pa.intersection(pb, grid_size=1e-9).area
    union = pa.area + pb.area - inter
    if union <= 0.0:
        return 0.0
    return float(min(inter / union, 1.0))


def axis_aligned_bounds(box: Sequence[float]) -> tuple[float, float, float, float]:
    """COCO ``[x, y, w, h]`` of the rotated box's corners (not clipped to the image)."""
    pts = rbox_to_corners(*box)
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    return float(x0), float(y0), float(x1 - x0), float(y1 - y0)


# --------------------------------------------------------------------------- validation


def _check_object(
    obj: RotatedObject, width: int, height: int, where: str, report: SkipReport
) -> RotatedObject | None:
    """Return the le90-normalised object, or report why it is unusable and return None."""
    values = obj.rbox
    require_radians([obj.angle], where)  # a file in degrees is wrong as a whole: never skipped
    if not all(math.isfinite(v) for v in values):
        report.problem(
            where, f"non-finite box values (cx, cy, w, h, angle) = {values}", "non_finite"
        )
        return None
    if obj.w <= 0 or obj.h <= 0:
        report.problem(
            where, f"box width and height must be > 0, got w={obj.w:g}, h={obj.h:g}", "degenerate"
        )
        return None
    reach = max(obj.w, obj.h)
    if not (-reach <= obj.cx <= width + reach and -reach <= obj.cy <= height + reach):
        report.problem(
            where,
            f"box centre ({obj.cx:g}, {obj.cy:g}) is more than max(w, h)={reach:g} px outside "
            f"the {width}x{height} image",
            "outside_image",
        )
        return None
    return RotatedObject(obj.label, *normalize_le90(*values))


def _parse_floats(tokens: Sequence[str], names: Sequence[str], where: str) -> list[float]:
    out = []
    for name, tok in zip(names, tokens):
        try:
            out.append(float(tok))
        except ValueError:
            raise DataError(where, f"field {name}={tok!r} is not a number") from None
    return out


# --------------------------------------------------------------------------- file helpers


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(path, f"{what} directory does not exist")
    return path


def _list_images(image_dir: Path, report: SkipReport) -> dict[str, Path]:
    """Map stem -> image path for the images directly in ``image_dir`` (sorted, flat)."""
    images: dict[str, Path] = {}
    for p in sorted(image_dir.iterdir()):
        if not (p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS):
            continue
        if p.stem in images:
            report.problem(
                p, f"another image with stem {p.stem!r} exists ({images[p.stem].name})", "ambiguous"
            )
            continue
        images[p.stem] = p
    return images


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header via PIL, falling back to a full OpenCV decode."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            return int(im.width), int(im.height)
    except Exception:  # any PIL failure: try OpenCV, which reads some TIFFs PIL cannot
        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise DataError(
                path, "cannot read image (neither PIL nor OpenCV can open it)"
            ) from None
        return int(arr.shape[1]), int(arr.shape[0])


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise DataError(path, f"not a UTF-8 text file ({err})") from None


def _per_image_txt(
    ann_dir: Path, image_dir: Path, report: SkipReport, exclude: Iterable[Path] = ()
) -> list[tuple[Path, int, int, Path | None]]:
    """Pair each image with its ``<stem>.txt`` (or None); report txt files without an image."""
    excluded = {p.resolve() for p in exclude}
    images = _list_images(image_dir, report)
    txts = {
        p.stem: p
        for p in sorted(ann_dir.glob("*.txt"))
        if p.is_file() and p.resolve() not in excluded
    }
    for stem, txt in txts.items():
        if stem not in images:
            report.problem(txt, f"no image named {stem}.* in {image_dir}", "missing_image")
    out = []
    for stem, img in images.items():
        try:
            width, height = image_size(img)
        except DataError as err:
            report.problem(err.path, err.problem, "unreadable_image")
            continue
        out.append((img, width, height, txts.get(stem)))
    return out


def _fmt(value: float, digits: int) -> str:
    """Fixed-point text without a negative zero, so equal boxes give equal bytes."""
    s = f"{value:.{digits}f}"
    return s[1:] if s.startswith("-") and float(s) == 0.0 else s


def _round(value: float, digits: int) -> float:
    return round(float(value), digits) + 0.0  # + 0.0 turns -0.0 into 0.0


def _unique_stems(images: Sequence[RotatedImage], out_dir: Path) -> list[str]:
    stems = [Path(im.file_name).stem for im in images]
    seen: set[str] = set()
    for im, stem in zip(images, stems):
        if stem in seen:
            raise DataError(
                out_dir / f"{stem}.txt", f"two images share the stem {stem!r} ({im.file_name})"
            )
        seen.add(stem)
    return stems


def _check_label(label: str, where: object) -> None:
    if not label or any(ch.isspace() for ch in label):
        raise DataError(where, f"class name {label!r} is empty or contains whitespace")


def _read_names(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(path, "classes file does not exist")
    names = [line.strip() for line in _read_lines(path)]
    while names and not names[-1]:
        names.pop()
    for i, name in enumerate(names, 1):
        if not name:
            raise DataError(f"{path}:{i}", "empty class name")
    if len(set(names)) != len(names):
        raise DataError(path, f"duplicate class names in {names}")
    if not names:
        raise DataError(path, "classes file is empty")
    return names


# --------------------------------------------------------------------------- KITTI


def _parse_kitti_line(line: str, where: str, classes: Sequence[str]) -> RotatedObject:
    tokens = line.split()
    if len(tokens) < 6:
        raise DataError(
            where, f"expected 'class_idx cx cy w h angle_rad', got {len(tokens)} fields: {line!r}"
        )
    try:
        idx = int(tokens[0])
    except ValueError:
        raise DataError(where, f"class index {tokens[0]!r} is not an integer") from None
    cx, cy, w, h, angle = _parse_floats(tokens[1:6], ("cx", "cy", "w", "h", "angle"), where)
    if not 0 <= idx < len(classes):
        raise _UnknownClass(where, f"class index {idx} not in 0..{len(classes) - 1} of {classes}")
    return RotatedObject(classes[idx], cx, cy, w, h, angle)


class _UnknownClass(DataError):
    """Internal: lets parsers tell an unknown class apart from a malformed line."""


def _reported(parse: Any, report: SkipReport, where: str, *args: Any) -> Any:
    """``parse(*args)``, or None after reporting an unknown class or a malformed entry."""
    try:
        return parse(*args)
    except _UnknownClass as err:
        report.problem(where, err.problem, "unknown_class")
    except DataError as err:
        report.problem(where, err.problem, "malformed")
    return None


def _objects_from_lines(
    lines: Sequence[str], path: Path, size: tuple[int, int], report: SkipReport, parse
) -> list[RotatedObject]:
    objects = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        obj = _reported(parse, report, where, line, where)
        if obj is None:
            continue
        checked = _check_object(obj, size[0], size[1], where, report)
        if checked is not None:
            objects.append(checked)
    return objects


def read_kitti(
    label_dir: str | Path,
    image_dir: str | Path,
    classes_file: str | Path | None = None,
    report: SkipReport | None = None,
) -> tuple[list[RotatedImage], list[str]]:
    """Read LabelImg-KITTI rotated labels; every image in ``image_dir`` yields one record.

    ``file_name`` is the image's name relative to ``image_dir``; images without a txt file get
    zero objects.
    """
    report = report if report is not None else SkipReport(strict=True)
    label_dir = _require_dir(Path(label_dir), "label")
    image_dir = _require_dir(Path(image_dir), "image")
    cls_path = Path(classes_file) if classes_file is not None else label_dir / KITTI_CLASSES_FILE
    classes = _read_names(cls_path)
    exclude = [cls_path, label_dir / KITTI_CLASSES_FILE]

    def parse(line: str, where: str) -> RotatedObject:
        return _parse_kitti_line(line, where, classes)

    images = []
    for img, width, height, txt in _per_image_txt(label_dir, image_dir, report, exclude):
        lines = _read_lines(txt) if txt is not None else []
        objects = _objects_from_lines(lines, txt, (width, height), report, parse)
        images.append(RotatedImage(img.name, width, height, objects))
    return images, classes


def write_kitti(
    images: Sequence[RotatedImage], classes: Sequence[str], label_dir: str | Path
) -> None:
    """Write ``classes.txt`` and one ``<stem>.txt`` per image (empty for zero objects)."""
    label_dir = Path(label_dir)
    label_dir.mkdir(parents=True, exist_ok=True)
    index = {name: i for i, name in enumerate(classes)}
    for name in classes:
        _check_label(name, label_dir / KITTI_CLASSES_FILE)
    (label_dir / KITTI_CLASSES_FILE).write_text("".join(f"{c}\n" for c in classes))
    for im, stem in zip(images, _unique_stems(images, label_dir)):
        path = label_dir / f"{stem}.txt"
        lines = []
        for obj in im.objects:
            if obj.label not in index:
                raise DataError(path, f"object class {obj.label!r} is not in classes {classes}")
            px = " ".join(_fmt(v, PIXEL_DIGITS) for v in (obj.cx, obj.cy, obj.w, obj.h))
            lines.append(f"{index[obj.label]} {px} {_fmt(obj.angle, ANGLE_DIGITS)}\n")
        path.write_text("".join(lines))


# --------------------------------------------------------------------------- DOTA

_DOTA_HEADERS = ("imagesource:", "gsd:")
_DOTA_FIELDS = ("x1", "y1", "x2", "y2", "x3", "y3", "x4", "y4")


def _parse_dota_line(line: str, where: str, classes: set[str] | None) -> RotatedObject | None:
    if line.strip().lower().startswith(_DOTA_HEADERS):
        return None
    tokens = line.split()
    if len(tokens) not in (9, 10):
        raise DataError(
            where,
            f"expected 'x1 y1 x2 y2 x3 y3 x4 y4 class [difficulty]', got {len(tokens)} fields: "
            f"{line!r}",
        )
    coords = _parse_floats(tokens[:8], _DOTA_FIELDS, where)
    label = tokens[8]
    if classes is not None and label not in classes:
        raise _UnknownClass(where, f"class {label!r} is not in the given classes {sorted(classes)}")
    if len(tokens) == 10 and not tokens[9].lstrip("-").isdigit():
        raise DataError(where, f"difficulty {tokens[9]!r} is not an integer")
    if not all(math.isfinite(v) for v in coords):
        return RotatedObject(label, math.nan, math.nan, math.nan, math.nan, math.nan)
    return RotatedObject(label, *corners_to_rbox(np.reshape(coords, (4, 2))))


def read_dota(
    ann_dir: str | Path,
    image_dir: str | Path,
    classes: Sequence[str] | None = None,
    report: SkipReport | None = None,
) -> tuple[list[RotatedImage], list[str]]:
    """Read DOTA v1 labels; ``classes`` fixes the order and rejects others, else sorted names."""
    report = report if report is not None else SkipReport(strict=True)
    ann_dir = _require_dir(Path(ann_dir), "annotation")
    image_dir = _require_dir(Path(image_dir), "image")
    allowed = set(classes) if classes is not None else None

    def parse(line: str, where: str) -> RotatedObject | None:
        return _parse_dota_line(line, where, allowed)

    images = []
    for img, width, height, txt in _per_image_txt(ann_dir, image_dir, report):
        lines = _read_lines(txt) if txt is not None else []
        objects = _objects_from_lines(lines, txt, (width, height), report, parse)
        images.append(RotatedImage(img.name, width, height, objects))
    if classes is None:
        names = sorted({o.label for im in images for o in im.objects})
    else:
        names = list(classes)
    return images, names


def write_dota(images: Sequence[RotatedImage], ann_dir: str | Path) -> None:
    """Write one ``<stem>.txt`` per image, corners clockwise on screen, no header lines."""
    ann_dir = Path(ann_dir)
    ann_dir.mkdir(parents=True, exist_ok=True)
    for im, stem in zip(images, _unique_stems(images, ann_dir)):
        path = ann_dir / f"{stem}.txt"
        lines = []
        for obj in im.objects:
            _check_label(obj.label, path)
            pts = rbox_to_corners(*obj.rbox).ravel()
            lines.append(" ".join(_fmt(v, PIXEL_DIGITS) for v in pts) + f" {obj.label} 0\n")
        path.write_text("".join(lines))


# --------------------------------------------------------------------------- COCO rotated


def _coco_images(data: dict, path: Path, report: SkipReport) -> dict[int, RotatedImage]:
    out: dict[int, RotatedImage] = {}
    for i, entry in enumerate(data.get("images", [])):
        where = f"{path}[images][{i}]"
        try:
            img_id = entry["id"]
            name, width, height = entry["file_name"], entry["width"], entry["height"]
        except (KeyError, TypeError):
            report.problem(
                where, "image entry needs 'id', 'file_name', 'width', 'height'", "bad_image"
            )
            continue
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            report.problem(
                where, f"image size must be positive ints, got {width}x{height}", "bad_image"
            )
            continue
        if img_id in out:
            report.problem(where, f"duplicate image id {img_id}", "bad_image")
            continue
        out[img_id] = RotatedImage(str(name), width, height, [])
    return out


def _coco_categories(data: dict, path: Path) -> dict[int, str]:
    cats = data.get("categories")
    if not isinstance(cats, list) or not cats:
        raise DataError(path, "no 'categories' list")
    out: dict[int, str] = {}
    for i, cat in enumerate(cats):
        try:
            out[int(cat["id"])] = str(cat["name"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}[categories][{i}]", "category needs 'id' and 'name'") from None
    return dict(sorted(out.items()))


def _coco_object(ann: dict, cats: dict[int, str], where: str) -> tuple[object, RotatedObject]:
    if not isinstance(ann, dict) or "image_id" not in ann:
        raise DataError(where, "annotation needs an 'image_id'")
    rbox = ann.get("rbox")
    if not (isinstance(rbox, list) and len(rbox) == 5):
        raise DataError(where, f"'rbox' must be [cx, cy, w, h, angle_rad], got {rbox!r}")
    values = _parse_floats([str(v) for v in rbox], ("cx", "cy", "w", "h", "angle"), where)
    cat = ann.get("category_id")
    if cat not in cats:
        raise _UnknownClass(where, f"category_id {cat!r} is not one of {sorted(cats)}")
    return ann["image_id"], RotatedObject(cats[cat], *values)


def read_coco_rotated(
    json_path: str | Path, report: SkipReport | None = None
) -> tuple[list[RotatedImage], list[str]]:
    """Read a rotated COCO JSON; classes are the category names ordered by category id."""
    report = report if report is not None else SkipReport(strict=True)
    path = Path(json_path)
    if not path.is_file():
        raise DataError(path, "annotation file does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(path, f"not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise DataError(path, "top level must be a JSON object")
    cats = _coco_categories(data, path)
    images = _coco_images(data, path, report)
    for i, ann in enumerate(data.get("annotations", [])):
        where = f"{path}[annotations][{i}]"
        if isinstance(ann, dict) and "id" in ann:
            where += f" (id={ann['id']})"
        parsed = _reported(_coco_object, report, where, ann, cats, where)
        if parsed is None:
            continue
        img_id, obj = parsed
        im = images.get(img_id)  # type: ignore[arg-type]
        if im is None:
            report.problem(where, f"image_id {img_id!r} is not in 'images'", "malformed")
            continue
        checked = _check_object(obj, im.width, im.height, where, report)
        if checked is not None:
            im.objects.append(checked)
    return list(images.values()), list(cats.values())


def _coco_annotation(obj: RotatedObject, ann_id: int, img_id: int, cat_id: int) -> dict:
    box = obj.rbox
    corners = rbox_to_corners(*box).ravel()
    return {
        "id": ann_id,
        "image_id": img_id,
        "category_id": cat_id,
        "rbox": [_round(v, PIXEL_DIGITS) for v in box[:4]] + [_round(box[4], ANGLE_DIGITS)],
        "bbox": [_round(v, PIXEL_DIGITS) for v in axis_aligned_bounds(box)],
        "segmentation": [[_round(v, PIXEL_DIGITS) for v in corners]],
        "area": _round(obj.w * obj.h, PIXEL_DIGITS),
        "iscrowd": 0,
    }


def write_coco_rotated(
    images: Sequence[RotatedImage], classes: Sequence[str], json_path: str | Path
) -> None:
    """Write rotated COCO JSON; ids are 1-based in the given image / object order."""
    path = Path(json_path)
    cat_ids = {name: i + 1 for i, name in enumerate(classes)}
    coco_images, annotations = [], []
    for img_id, im in enumerate(images, 1):
        coco_images.append(
            {"id": img_id, "file_name": im.file_name, "width": im.width, "height": im.height}
        )
        for obj in im.objects:
            if obj.label not in cat_ids:
                raise DataError(path, f"object class {obj.label!r} is not in classes {classes}")
            annotations.append(
                _coco_annotation(obj, len(annotations) + 1, img_id, cat_ids[obj.label])
            )
    data = {
        "info": {
            "description": "rotated boxes written by em_lightning.data.rotated_formats",
            "rbox_format": "[cx, cy, w, h, angle_rad], pixels, angle clockwise in y-down "
            "image coordinates (OpenCV / mmrotate), le90",
        },
        "images": coco_images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n, "supercategory": "object"} for n, i in cat_ids.items()],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, sort_keys=True) + "\n")
