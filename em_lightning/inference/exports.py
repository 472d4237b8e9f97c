"""Predictions as an annotated dataset: open them in an annotation tool, correct, train on them.

``predict export=[coco]`` (masks) or ``export=[coco,kitti,dota]`` (rotated boxes) writes
``<output>/dataset/``, laid out as the training data configs expect, so that
``data.root=<output>/dataset`` (plus ``data.format=kitti|dota`` for rotated boxes) loads it:

* ``images/<split>/`` -- copies of the input images (never links, and never written where the
  inputs are); names are the input paths relative to the input folder with ``/`` -> ``__``;
  a file that the training loader reads differently (microscope formats, stacks) is written
  as a TIFF of exactly the 2-D image predict saw, in its original dtype;
* ``annotations/<split>.json`` (coco): masks as COCO instances, each mask exact (a polygon
  along the pixel edges where that is exact, which annotation tools edit as a polygon, else
  RLE), rotated boxes as rotated COCO (``rbox`` + 4-corner polygon); CVAT imports it as
  "COCO 1.0" (put the images and the JSON in one zip);
* ``kitti/<split>/*.txt`` + ``classes.txt`` (LabelImg-KITTI rotated) and ``dota/<split>/*.txt``
  (DOTA v1) for rotated boxes.

Every processed image is included, also those without detections (missed objects are then
added in the tool). Scores are kept in the COCO annotations (``score``); the txt formats have
no field for them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from em_lightning.data.label_images import mask_annotation
from em_lightning.data.rotated_formats import (
    IMAGE_EXTENSIONS,
    RotatedImage,
    RotatedObject,
    write_coco_rotated,
    write_dota,
    write_kitti,
)
from em_lightning.errors import ConfigError
from em_lightning.inference.annotations import rle_crop
from em_lightning.inference.results import ImageInfo

__all__ = ["EXPORT_DIR", "EXPORT_FORMATS", "check_export", "export_annotations",
           "export_image_names"]

EXPORT_DIR = "dataset"
EXPORT_FORMATS = ("coco", "kitti", "dota")
ROTATED_ONLY = ("kitti", "dota")


def check_export(formats: Sequence[str] | str | None, rotated: bool) -> list[str]:
    """The export formats as a list; ConfigError (a ValueError naming the setting) for unknown
    names or for box formats with masks."""
    if formats is None:
        return []
    names = [formats] if isinstance(formats, str) else [str(f) for f in formats]
    unknown = [f for f in names if f not in EXPORT_FORMATS]
    if unknown:
        raise ConfigError("export", f"unknown format(s) {unknown}; choose from "
                                    f"{list(EXPORT_FORMATS)} (e.g. export=[coco])")
    if not rotated and any(f in ROTATED_ONLY for f in names):
        raise ConfigError("export", f"{[f for f in names if f in ROTATED_ONLY]} hold rotated "
                                    "boxes only; masks are exported as coco (export=[coco])")
    return list(dict.fromkeys(names))


def export_image_names(images: Sequence[ImageInfo]) -> list[str]:
    """Flat, unique file names (also unique stems, as the txt formats need) for the copies."""
    names, stems = [], set()
    for info in images:
        flat = Path(info.name.replace("/", "__"))
        suffix = flat.suffix if flat.suffix.lower() in IMAGE_EXTENSIONS else ".tif"
        stem = flat.stem
        if stem in stems:
            stem = f"{stem}__{flat.suffix.lstrip('.')}"
        if stem in stems:
            stem = f"{stem}__{info.id}"
        stems.add(stem)
        names.append(stem + suffix)
    return names


def _copy_image(info: ImageInfo, dst: Path) -> None:
    """Copy the file when training reads it as the same 2-D image, else write that image."""
    import tifffile

    from em_lightning.data.microscopy import read_em_image
    from em_lightning.data.transforms import read_grayscale

    src = Path(info.path)
    if src.resolve() == dst.resolve():
        raise ValueError(f"{dst}: export would overwrite its input image")
    if src.suffix.lower() == dst.suffix.lower() and src.suffix.lower() in IMAGE_EXTENSIONS:
        try:
            same = read_grayscale(src).shape == (info.height, info.width)
        except ValueError:  # DataError: not readable the plain way
            same = False
        if same:
            shutil.copyfile(src, dst)
            return
    tifffile.imwrite(dst, np.ascontiguousarray(read_em_image(src).data))


def _mask_coco(images: Sequence[ImageInfo], names: Sequence[str], results: Sequence[dict],
               classes: Sequence[str], split: str) -> dict:
    by_image: dict[int, list[dict]] = {}
    for entry in results:
        by_image.setdefault(entry["image_id"], []).append(entry)
    coco_images, annotations = [], []
    for info, name in zip(images, names):
        coco_images.append({"id": info.id, "file_name": f"{split}/{name}", "width": info.width,
                            "height": info.height})
        for entry in by_image.get(info.id, []):
            unpacked = rle_crop(entry["segmentation"])  # the object's pixels only
            if unpacked is None:
                continue
            ann, _ = mask_annotation(*unpacked, info.height, info.width, len(annotations) + 1,
                                     info.id, int(entry["category_id"]))
            ann["score"] = entry["score"]
            annotations.append(ann)
    return {
        "info": {"description": "detections of em_lightning.predict, for correction"},
        "images": coco_images, "annotations": annotations,
        "categories": [{"id": k + 1, "name": c, "supercategory": "object"}
                       for k, c in enumerate(classes)],
    }


def _rotated_images(images: Sequence[ImageInfo], names: Sequence[str], results: Sequence[dict],
                    classes: Sequence[str], prefix: str) -> list[RotatedImage]:
    out = {info.id: RotatedImage(prefix + name, info.width, info.height)
           for info, name in zip(images, names)}
    for entry in results:
        label = classes[int(entry["category_id"]) - 1]
        out[entry["image_id"]].objects.append(RotatedObject(label, *map(float, entry["rbox"])))
    return list(out.values())


def _readme(root: Path, formats: Sequence[str], split: str, task: str, rotated: bool) -> Path:
    lines = [f"Detections of em_lightning.predict (task {task}) as a training dataset, for "
             "correction in an annotation tool.", "",
             f"images/{split}/           copies of the processed images"]
    if "coco" in formats:
        lines.append(f"annotations/{split}.json  COCO "
                     + ("rotated boxes (rbox)" if rotated else "instances (polygons/RLE)"))
    if "kitti" in formats:
        lines.append(f"kitti/{split}/            LabelImg-KITTI txt + classes.txt")
    if "dota" in formats:
        lines.append(f"dota/{split}/             DOTA v1 txt")
    fmt = " data.format=<coco|kitti|dota>" if rotated else ""
    lines += ["", "Train on it (after correcting):",
              f"  python -m em_lightning.train task={task} data.root={root}{fmt} "
              f"+data.splits.train={split} +data.splits.val={split}",
              "(or move some images and their labels into a val split)."]
    path = root / "README.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def export_annotations(root: Path, formats: Sequence[str] | str | None,
                       images: Sequence[ImageInfo], results: Sequence[dict],
                       classes: Sequence[str], rotated: bool, split: str = "train",
                       task: str = "") -> list[Path]:
    """Write the dataset (layout in the module docstring) from predict's COCO results entries
    (:func:`em_lightning.inference.results.coco_entries`; ``rotated``: they are rotated
    boxes); returns the files to link from the report."""
    formats = check_export(formats, rotated)
    if not formats:
        return []
    if not split or "/" in split or "\\" in split or split in (".", ".."):
        raise ConfigError("export_split", f"must be a folder name such as train, got {split!r}")
    root = Path(root)
    image_dir = root / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    names = export_image_names(images)
    for info, name in zip(images, names):
        _copy_image(info, image_dir / name)
    written = [_readme(root, formats, split, task, rotated)]
    if "coco" in formats:
        path = root / "annotations" / f"{split}.json"
        if rotated:
            write_coco_rotated(_rotated_images(images, names, results, classes, f"{split}/"),
                               classes, path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(_mask_coco(images, names, results, classes, split)))
        written.append(path)
    boxes = _rotated_images(images, names, results, classes, "") if rotated else []
    if "kitti" in formats:
        write_kitti(boxes, classes, root / "kitti" / split)
        written.append(root / "kitti" / split / "classes.txt")
    if "dota" in formats:
        write_dota(boxes, root / "dota" / split)
        written.append(root / "dota" / split)
    return written
