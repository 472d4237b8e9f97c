"""Instance label images -> exact COCO instance annotations.

A label image holds one integer per pixel: 0 is background, every other value one object
(what Fiji's label images, ilastik's object identities, Cellpose ``*_masks`` and StarDist
write). Values need not be consecutive; 16- and 32-bit values are kept as they are.

Each object becomes one COCO annotation whose mask is *exactly* the object's pixels:

* a **polygon** when the object is one piece without holes and its outline (the 0.5 iso-line
  of the object's pixels, which runs along pixel edges with the corners cut) rasterises back
  to the same pixels under pycocotools -- checked object by object, RLE against RLE;
* otherwise compressed **RLE** (objects with holes, in several pieces, or the rare outline
  that pycocotools would rasterise one pixel off).

``bbox`` is the pixel extent ``[x0, y0, w, h]`` and ``area`` the pixel count, both equal to
what ``COCO.annToMask`` gives. Coordinates follow COCO: pixel (row i, column j) covers
``[j, j+1) x [i, i+1)``. :func:`mask_segmentation` is shared with predict's COCO export.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
from skimage.measure import find_contours, regionprops

from em_lightning.data.errors import DataError, SkipReport
from em_lightning.data.rotated_formats import IMAGE_EXTENSIONS, image_size
from em_lightning.inference.detections import crop_to_rle

__all__ = ["LABEL_EXTENSIONS", "ClassMap", "label_images_to_coco", "label_objects",
           "mask_annotation", "mask_segmentation", "read_class_map", "read_label_image"]

LABEL_EXTENSIONS = (".png", ".tif", ".tiff")


# --------------------------------------------------------------------------- reading


def read_label_image(path: str | Path) -> np.ndarray:
    """A 2-D array of non-negative integers; clear errors for colour, 3-D or fractional data."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "label image does not exist")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            labels = np.asarray(tifffile.imread(path))
        else:
            from PIL import Image

            with Image.open(path) as im:  # PIL keeps palette indices and 16-bit values
                labels = np.asarray(im)
    except Exception as exc:  # any decoder failure: name the file
        raise DataError(path, f"label image cannot be decoded ({type(exc).__name__}: {exc})"
                        ) from None
    labels = np.squeeze(labels)
    if labels.ndim != 2:
        raise DataError(path, f"label image must be 2-D with one integer per pixel, got shape "
                              f"{labels.shape} (a colour image or a stack?)")
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if np.issubdtype(labels.dtype, np.floating):
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise DataError(path, "label image has non-integer values; expected one integer "
                                  "per object (0 = background)")
        labels = labels.astype(np.int64)
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(path, f"label image has unsupported type {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise DataError(path, f"label image has negative values (min {labels.min()})")
    return labels


def label_objects(labels: np.ndarray) -> Iterator[tuple[int, np.ndarray, tuple[int, int]]]:
    """(value, bool crop, (x0, y0)) of every non-zero value, in increasing value order."""
    for region in regionprops(labels.astype(np.int64, copy=False)):
        y0, x0 = region.bbox[:2]
        yield int(region.label), np.ascontiguousarray(region.image, bool), (int(x0), int(y0))


# --------------------------------------------------------------------------- masks -> COCO


def _outline(crop: np.ndarray, origin: tuple[int, int]) -> list[float] | None:
    """The single closed outline of a crop in image coordinates, or None (several pieces or
    holes give several iso-lines)."""
    contours = find_contours(np.pad(crop, 1).astype(np.float32), 0.5)
    if len(contours) != 1:
        return None
    rc = contours[0][:-1]  # closed: the last point repeats the first
    prev, nxt = np.roll(rc, 1, axis=0), np.roll(rc, -1, axis=0)
    turn = (rc - prev)[:, 0] * (nxt - rc)[:, 1] - (rc - prev)[:, 1] * (nxt - rc)[:, 0]
    rc = rc[turn != 0]  # only corners (coordinates are multiples of 0.5: exact arithmetic)
    if len(rc) < 3:
        return None
    x = rc[:, 1] - 0.5 + origin[0]  # padded index -> pixel-centre coordinate +0.5 -> COCO
    y = rc[:, 0] - 0.5 + origin[1]
    return [round(float(v), 2) for v in np.stack([x, y], axis=1).ravel()]


def mask_segmentation(crop: np.ndarray, origin: tuple[int, int], height: int,
                      width: int) -> tuple[list[list[float]] | dict, str]:
    """(COCO segmentation, ``"polygon"`` or ``"rle"``) whose mask equals the crop exactly."""
    rle = crop_to_rle(crop, origin, height, width)
    polygon = _outline(crop, origin)
    if polygon is not None:
        drawn = mask_utils.merge(mask_utils.frPyObjects([polygon], height, width))
        if drawn["counts"].decode("ascii") == rle["counts"]:
            return [polygon], "polygon"
    return rle, "rle"


def mask_annotation(crop: np.ndarray, origin: tuple[int, int], height: int, width: int,
                    ann_id: int, image_id: int, category_id: int) -> tuple[dict, str]:
    """A COCO annotation of a bool crop placed at ``origin`` and its segmentation kind."""
    segmentation, kind = mask_segmentation(crop, origin, height, width)
    h, w = crop.shape
    ann = {"id": ann_id, "image_id": image_id, "category_id": category_id,
           "segmentation": segmentation, "area": int(np.count_nonzero(crop)),
           "bbox": [origin[0], origin[1], w, h], "iscrowd": 0}
    return ann, kind


# --------------------------------------------------------------------------- classes


@dataclass
class ClassMap:
    """Label value -> class name, for all files (``file`` empty) or per label file."""

    path: Path
    common: dict[int, str] = field(default_factory=dict)
    per_file: dict[str, dict[int, str]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        found = set(self.common.values())
        for table in self.per_file.values():
            found.update(table.values())
        return sorted(found)

    def lookup(self, label_file: Path) -> Mapping[int, str]:
        for key in (label_file.name, label_file.stem):
            if key in self.per_file:
                return {**self.common, **self.per_file[key]}
        return self.common


def read_class_map(path: str | Path) -> ClassMap:
    """Read a CSV with a header naming ``value`` and ``class`` columns and optionally ``file``
    (a label file's name or stem; rows without one apply to every file)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "class map does not exist")
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
        columns = set(rows[0]) if rows else set()
    if not {"value", "class"} <= columns:
        raise DataError(path, "class map needs a header line with columns 'value,class' "
                              f"(and optionally 'file'), got {sorted(columns) or 'no rows'}")
    out = ClassMap(path)
    for lineno, row in enumerate(rows, 2):
        where = f"{path}:{lineno}"
        try:
            value = int(str(row["value"]).strip())
        except ValueError:
            raise DataError(where, f"value {row['value']!r} is not an integer") from None
        name = str(row["class"] or "").strip()
        if value <= 0 or not name or any(ch.isspace() for ch in name):
            raise DataError(where, f"need a value > 0 and a class name without spaces, got "
                                   f"{row['value']!r}, {row['class']!r}")
        key = str(row.get("file") or "").strip()
        table = out.per_file.setdefault(key, {}) if key else out.common
        if value in table and table[value] != name:
            raise DataError(where, f"value {value} is already mapped to {table[value]!r}")
        table[value] = name
    return out


# --------------------------------------------------------------------------- files


def _label_files(label_dir: Path, suffix: str) -> list[Path]:
    files = sorted(p for p in label_dir.iterdir()
                   if p.is_file() and p.suffix.lower() in LABEL_EXTENSIONS
                   and p.stem.endswith(suffix))
    if not files:
        raise DataError(label_dir, f"no label images (*{suffix}{{{','.join(LABEL_EXTENSIONS)}}}) "
                                   "in this folder")
    return files


def _image_index(image_dir: Path, exclude: set[Path]) -> dict[str, list[Path]]:
    """stem -> image files anywhere below ``image_dir`` (label files excluded)."""
    index: dict[str, list[Path]] = {}
    for p in sorted(image_dir.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and p.resolve() not in exclude:
            index.setdefault(p.stem, []).append(p)
    return index


def _match_image(label_file: Path, suffix: str, index: dict[str, list[Path]],
                 image_dir: Path) -> Path:
    stem = label_file.stem[: len(label_file.stem) - len(suffix)] if suffix else label_file.stem
    found = index.get(stem, [])
    if not found:
        raise DataError(label_file, f"no image named {stem}.* below {image_dir}")
    if len(found) > 1:
        names = ", ".join(str(p.relative_to(image_dir)) for p in found)
        raise DataError(label_file, f"several images named {stem}.* below {image_dir}: {names}")
    return found[0]


def label_images_to_coco(label_dir: str | Path, image_dir: str | Path,
                         class_name: str | None = None, class_map: ClassMap | None = None,
                         label_suffix: str = "", report: SkipReport | None = None
                         ) -> tuple[dict, dict[str, int]]:
    """COCO instances of every label image in ``label_dir`` and counts of polygon/RLE objects.

    Each label file ``<stem><label_suffix>.png|tif`` is paired with the image ``<stem>.*``
    found below ``image_dir``; ``file_name`` is that image's path relative to ``image_dir``.
    Objects take ``class_name``, or their value's class from ``class_map`` (values missing
    from the map are bad data: an error, or skipped and counted when not strict).
    """
    if (class_name is None) == (class_map is None):
        raise ValueError("give exactly one of class_name and class_map")
    report = report if report is not None else SkipReport(strict=True)
    label_dir, image_dir = Path(label_dir), Path(image_dir)
    for folder, what in ((label_dir, "label"), (image_dir, "image")):
        if not folder.is_dir():
            raise DataError(folder, f"{what} directory does not exist")
    files = _label_files(label_dir, label_suffix)
    if label_dir.resolve() == image_dir.resolve() and not label_suffix:
        raise DataError(label_dir, "labels and images are in the same folder: give the label "
                                   "files' suffix (e.g. --label-suffix _masks for Cellpose)")
    index = _image_index(image_dir, {p.resolve() for p in files})
    names = [class_name] if class_name is not None else class_map.names  # type: ignore[union-attr]
    cat_ids = {name: k + 1 for k, name in enumerate(names)}
    images: list[dict] = []
    annotations: list[dict] = []
    kinds = {"polygon": 0, "rle": 0}
    for label_file in files:
        image_path = _match_image(label_file, label_suffix, index, image_dir)
        labels = read_label_image(label_file)
        height, width = labels.shape
        if image_size(image_path) != (width, height):
            w, h = image_size(image_path)
            raise DataError(label_file, f"label image is {width}x{height} but its image "
                                        f"{image_path} is {w}x{h}")
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": image_path.relative_to(image_dir).as_posix(),
                       "width": width, "height": height})
        mapping = class_map.lookup(label_file) if class_map is not None else {}
        for value, crop, origin in label_objects(labels):
            name = class_name if class_name is not None else mapping.get(value)
            if name is None:
                report.problem(f"{label_file} (value {value})",
                               f"label value {value} is not in the class map {class_map.path}",
                               "unmapped_value")
                continue
            ann, kind = mask_annotation(crop, origin, height, width, len(annotations) + 1,
                                        image_id, cat_ids[name])
            annotations.append(ann)
            kinds[kind] += 1
    data = {
        "info": {"description": f"instance label images of {label_dir} "
                                "(em_lightning.data.convert label-images)"},
        "images": images, "annotations": annotations,
        "categories": [{"id": i, "name": n, "supercategory": "object"}
                       for n, i in cat_ids.items()],
    }
    return data, kinds

