"""mmdet/mmrotate datasets that validate their input first (see :mod:`coco_validation`).

Both produce MMEngine ``data_list`` records (``img_path``, ``img_id``, ``height``, ``width``,
``instances`` with ``bbox``, ``bbox_label``, ``ignore_flag`` and ``mask``), so everything after
loading (pipelines, models, metrics) is OpenMMLab's own code.
"""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path

from mmdet.datasets import BaseDetDataset, CocoDataset
from mmdet.datasets.api_wrappers import COCO

from em_lightning.data.coco_validation import check_image_file, validate_coco
from em_lightning.data.errors import DataError, SkipReport
from em_lightning.data.layout import kitti_classes_file
from em_lightning.quiet import output_to_debug

log = logging.getLogger(__name__)


def coco_from_dict(data: dict, _path: str | None = None) -> COCO:
    """An mmdet ``COCO`` API object over an in-memory (already validated) dataset dict."""
    coco = COCO()
    coco.dataset = data
    coco.createIndex()
    return coco


def _check_classes(requested: tuple, available: list[str], source: Path) -> None:
    unknown = [c for c in requested if c not in available]
    if unknown:
        raise DataError(source, f"unknown class(es) {unknown}; the file has {available}")


class EMCocoDataset(CocoDataset):
    """mmdet's ``CocoDataset`` with up-front validation and an explicit ``strict`` switch."""

    def __init__(self, *args: object, strict: bool = True, check_images: bool = True,
                 **kwargs: object) -> None:
        self.report = SkipReport(strict=strict)
        self.check_images = check_images
        super().__init__(*args, **kwargs)

    def load_data_list(self) -> list[dict]:
        ann_path = Path(self.ann_file)
        if not ann_path.is_file():
            raise DataError(ann_path, "annotation file not found")
        try:
            data = json.loads(ann_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(ann_path, f"not valid JSON ({exc})") from exc
        if not isinstance(data, dict) or "images" not in data or "categories" not in data:
            raise DataError(ann_path, "not a COCO file (needs 'images' and 'categories')")
        cleaned = validate_coco(data, ann_path, Path(self.data_prefix["img"]), self.report,
                                self.check_images)
        _check_classes(self.metainfo["classes"], [c["name"] for c in cleaned["categories"]],
                       ann_path)
        self.COCOAPI = partial(coco_from_dict, cleaned)
        with output_to_debug(log, "pycocotools"):  # its "creating index..." lines
            data_list = super().load_data_list()
        log.info("%s: %d images, %d annotations; %s", ann_path, len(cleaned["images"]),
                 len(cleaned["annotations"]), self.report.summary())
        return data_list


class EMRotatedDataset(BaseDetDataset):
    """Rotated boxes from COCO-rotated JSON, DOTA txt or LabelImg-KITTI txt.

    ``ann_file`` is the JSON file (coco) or the folder of txt files (dota, kitti); images are
    found under ``data_prefix['img']``. Boxes are stored as 4 corners (mmrotate ``qbox``) and
    become ``rbox`` (le90) through ``ConvertBoxType`` in the pipeline.
    """

    METAINFO = {"classes": ("nanorod",), "palette": [(220, 20, 60)]}

    def __init__(self, *args: object, ann_format: str = "coco", strict: bool = True,
                 **kwargs: object) -> None:
        self.ann_format = ann_format
        self.report = SkipReport(strict=strict)
        super().__init__(*args, **kwargs)

    def _read(self) -> tuple[list, list[str]]:
        from em_lightning.data import rotated_formats as fmt

        source, img_root = Path(self.ann_file), Path(self.data_prefix["img"])
        if not source.exists():
            raise DataError(source, "annotation file or folder not found")
        if self.ann_format == "coco":
            return fmt.read_coco_rotated(source, report=self.report)
        if self.ann_format == "dota":
            return fmt.read_dota(source, img_root, report=self.report)
        if self.ann_format == "kitti":
            classes_file = kitti_classes_file(Path(self.data_root or source.parent), source)
            return fmt.read_kitti(source, img_root, classes_file, report=self.report)
        raise ValueError(f"unknown ann_format {self.ann_format!r}; expected coco, dota or kitti")

    def load_data_list(self) -> list[dict]:
        from em_lightning.data.rotated_formats import rbox_to_corners

        images, file_classes = self._read()
        classes = list(self.metainfo["classes"])
        _check_classes(tuple(classes), list(file_classes), Path(self.ann_file))
        img_root = Path(self.data_prefix["img"])
        data_list = []
        for img_id, image in enumerate(images):
            path = img_root / image.file_name
            problem = check_image_file(path, image.width, image.height)
            if problem:
                self.report.problem(path, problem, "bad_image")
                continue
            instances = [
                {"bbox": rbox_to_corners(o.cx, o.cy, o.w, o.h, o.angle).reshape(-1).tolist(),
                 "bbox_label": classes.index(o.label), "ignore_flag": 0}
                for o in image.objects if o.label in classes
            ]
            data_list.append({"img_path": str(path), "img_id": img_id, "height": image.height,
                              "width": image.width, "instances": instances})
        log.info("%s (%s): %d images, %d objects; %s", self.ann_file, self.ann_format,
                 len(data_list), sum(len(d["instances"]) for d in data_list),
                 self.report.summary())
        return data_list


def register_datasets() -> None:
    """Register both datasets in mmdet's and mmrotate's DATASETS registries (idempotent)."""
    from mmdet.registry import DATASETS as MMDET_DATASETS
    from mmrotate.registry import DATASETS as MMROTATE_DATASETS

    for registry in (MMDET_DATASETS, MMROTATE_DATASETS):
        for cls in (EMCocoDataset, EMRotatedDataset):
            registry.register_module(module=cls, force=True)
