"""Evaluation of detections on a whole split, reusing OpenMMLab's metrics.

mmdet's ``CocoMetric`` (bbox, segm) and mmrotate's ``RotatedCocoMetric`` (COCO AP with rotated IoU)
run pycocotools; ``mmengine`` gathers their per-rank results before computing (so DDP sees ALL
images). mmrotate's ``DOTAMetric`` always opens a 4-process spawn pool per evaluation, so the
DOTA/VOC AP50 here calls its per-image ``tpfp_default`` in-process instead.

Both rotated metrics call mmcv's ``box_iou_rotated``, which is wrong for coincident boxes
written differently (angle + pi: IoU 0.2 down to 0.0). While they compute, that name is bound to
the project's exact :func:`~em_lightning.evaluation.rotated_iou.rotated_iou_matrix`, and the
predictions they receive are normalised to le90, so ground truth fed back in any equivalent form
scores AP 1.0.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from em_lightning.quiet import output_to_debug
from em_lightning.registry import register_all_modules

log = logging.getLogger(__name__)

#: metric name -> COCO iou type, per task kind
COCO_KINDS = {"bbox": "bbox", "segm": "segm", "rbox": "bbox"}


#: the mmrotate modules whose ``box_iou_rotated`` (imported from mmcv.ops) the metrics call
_IOU_USERS = ("mmrotate.evaluation.functional.mean_ap",
              "mmrotate.evaluation.metrics.rotated_coco_metric")


def _exact_box_iou_rotated(bboxes1: Any, bboxes2: Any, mode: str = "iou",
                           aligned: bool = False, clockwise: bool = True) -> Any:
    """mmcv ``box_iou_rotated``'s signature and result type, computed exactly."""
    import torch

    from em_lightning.evaluation.rotated_iou import rotated_iou_matrix

    if aligned:
        raise NotImplementedError("aligned rotated IoU is not used by the metrics")
    a = torch.as_tensor(bboxes1, dtype=torch.float64)
    b = torch.as_tensor(bboxes2, dtype=torch.float64)
    if not clockwise:  # mmcv flips the angle of counter-clockwise boxes
        a, b = a.clone(), b.clone()
        a[:, 4], b[:, 4] = -a[:, 4], -b[:, 4]
    ious = rotated_iou_matrix(a, b, mode=mode)
    return torch.from_numpy(ious).to(dtype=torch.as_tensor(bboxes1).dtype)


@contextmanager
def exact_rotated_iou() -> Iterator[None]:
    """While inside, mmrotate's rotated metrics use the exact IoU instead of mmcv's."""
    import importlib

    modules = [importlib.import_module(name) for name in _IOU_USERS]
    for module in modules:
        if not hasattr(module, "box_iou_rotated"):  # a newer mmrotate moved it: say so
            raise RuntimeError(f"{module.__name__} no longer uses box_iou_rotated; update "
                               "em_lightning.evaluation.metrics._IOU_USERS")
    saved = [module.box_iou_rotated for module in modules]
    try:
        for module in modules:
            module.box_iou_rotated = _exact_box_iou_rotated
        yield
    finally:
        for module, original in zip(modules, saved):
            module.box_iou_rotated = original


def _le90_boxes(sample: dict) -> dict:
    """``sample`` with its rotated predicted and ground-truth boxes in le90 (a sample without
    rotated boxes is returned as it is)."""
    from em_lightning.evaluation.rotated_iou import normalize_le90_boxes

    out = dict(sample)
    for key in ("pred_instances", "gt_instances", "ignored_instances"):
        inst = sample.get(key)
        inst = inst.to_dict() if hasattr(inst, "to_dict") else inst
        boxes = inst.get("bboxes") if isinstance(inst, dict) else None
        boxes = getattr(boxes, "tensor", boxes)
        if boxes is not None and boxes.ndim == 2 and boxes.shape[-1] == 5:
            out[key] = {**inst, "bboxes": normalize_le90_boxes(boxes)}
    return out


def _dota_metric_class() -> type:
    register_all_modules()
    from mmdet.evaluation.functional import average_precision
    from mmrotate.evaluation.functional.mean_ap import get_cls_results, tpfp_default
    from mmrotate.evaluation.metrics import DOTAMetric

    class InProcessDOTAMetric(DOTAMetric):
        """DOTA (VOC07 11-point) AP at one IoU, computed without a process pool."""

        def compute_metrics(self, results: list) -> dict[str, float]:
            gts, preds = zip(*results)
            dets = [p["pred_bbox_scores"] for p in preds]
            out: dict[str, float] = {}
            aps = []
            for label, name in enumerate(self.dataset_meta["classes"]):
                cls_dets, cls_gts, cls_ignore = get_cls_results(dets, list(gts), label, "rbox")
                tp, fp = [], []
                for d, g, gi in zip(cls_dets, cls_gts, cls_ignore):
                    t, f = tpfp_default(d, g, gi, self.iou_thrs[0], "rbox", None)
                    tp.append(t)
                    fp.append(f)
                num_gts = sum(g.shape[0] for g in cls_gts)
                all_dets = np.vstack(cls_dets)
                order = np.argsort(-all_dets[:, -1])
                tp_c = np.cumsum(np.hstack(tp)[0, order])
                fp_c = np.cumsum(np.hstack(fp)[0, order])
                eps = np.finfo(np.float32).eps
                recall = tp_c / max(num_gts, eps)
                precision = tp_c / np.maximum(tp_c + fp_c, eps)
                mode = "11points" if self.use_07_metric else "area"
                ap = float(average_precision(recall, precision, mode)) if num_gts else float("nan")
                out[f"{name}_precision"] = ap
                if num_gts:
                    aps.append(ap)
            out["mAP"] = float(np.mean(aps)) if aps else 0.0
            return out

    return InProcessDOTAMetric


def build_metric(kind: str, classes: Sequence[str], outfile_prefix: str | None = None) -> Any:
    """One mmengine metric for ``kind`` in {bbox, segm, rbox, dota}, restricted to ``classes``."""
    register_all_modules()
    if kind in ("bbox", "segm"):
        from mmdet.evaluation import CocoMetric

        metric = CocoMetric(metric=kind, classwise=True, prefix=kind,
                            outfile_prefix=outfile_prefix)
    elif kind == "rbox":
        from mmrotate.evaluation import RotatedCocoMetric

        metric = RotatedCocoMetric(metric="bbox", classwise=True, prefix=kind,
                                   outfile_prefix=outfile_prefix)
    elif kind == "dota":
        metric = _dota_metric_class()(metric="mAP", iou_thrs=[0.5], prefix=kind)
    else:
        raise ValueError(f"unknown metric kind {kind!r}; expected bbox, segm, rbox or dota")
    metric.dataset_meta = {"classes": tuple(classes)}
    return metric


def _rename(kind: str, key: str, classes: Sequence[str]) -> str:
    """'segm/segm_mAP_50' -> 'segm_mAP_50'; 'segm/hole_precision' -> 'hole_segm_AP'."""
    name = key.split("/", 1)[-1]
    for cls in classes:
        if name == f"{cls}_precision":
            return f"{cls}_{kind}_AP" if kind != "dota" else f"{cls}_dota_AP50"
    if kind == "dota":
        return "dota_AP50" if name == "mAP" else f"dota_{name}"
    if kind == "rbox":
        return name.replace("bbox_", "rbox_")
    return name


class DetectionEvaluator:
    """Collects predictions of one split and computes all of its metrics at once.

    ``process`` takes mmdet ``DetDataSample``s carrying ``pred_instances``, ``gt_instances`` and the
    raw ``instances`` meta (the GT is converted from them, so skipped/filtered annotations never
    leak into the metric). ``compute(size)`` gathers across ranks and returns flat floats such as
    ``segm_mAP``, ``segm_mAP_50``, ``big_vesicle_segm_AP``.
    """

    def __init__(self, kinds: Sequence[str], classes: Sequence[str],
                 outfile_prefix: str | Path | None = None,
                 category_ids: Sequence[int] | None = None) -> None:
        self.kinds = list(kinds)
        self.classes = list(classes)
        self.outfile_prefix = str(outfile_prefix) if outfile_prefix else None
        self.category_ids = list(category_ids) if category_ids is not None else None
        self.metrics = {
            k: build_metric(k, classes, self._prefix_for(k)) for k in self.kinds
        }

    def _prefix_for(self, kind: str) -> str | None:
        if self.outfile_prefix is None or kind == "dota":
            return None
        Path(self.outfile_prefix).parent.mkdir(parents=True, exist_ok=True)
        return self.outfile_prefix

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.results.clear()
            if hasattr(metric, "_coco_api"):
                metric._coco_api = None  # GT is rebuilt from this split's samples
                metric.cat_ids = None
                metric.img_ids = None

    def process(self, data_samples: Sequence[Any]) -> None:
        samples = [_le90_boxes(s.to_dict() if hasattr(s, "to_dict") else s)
                   for s in data_samples]
        for metric in self.metrics.values():
            metric.process({}, samples)

    def compute(self, size: int) -> dict[str, float]:
        """All metrics over ``size`` samples (padding from distributed samplers is dropped)."""
        out: dict[str, float] = {}
        for kind, metric in self.metrics.items():
            # pycocotools' summarize() and mmengine's tables: to the log file (DEBUG)
            with exact_rotated_iou(), output_to_debug(log, f"{kind} evaluation"):
                values = metric.evaluate(size)
            if not values:  # mmdet returns nothing when there is not a single detection
                log.warning("no %s detections at all: AP is 0", kind)
                values = self._zero_result(kind)
            out.update({_rename(kind, k, self.classes): float(v) for k, v in values.items()})
        self.reset()
        self._restore_category_ids()
        return out

    def _zero_result(self, kind: str) -> dict[str, float]:
        if kind == "dota":
            return {"dota/mAP": 0.0, **{f"dota/{c}_precision": 0.0 for c in self.classes}}
        name = "bbox" if kind == "rbox" else kind
        keys = [f"{kind}/{name}_mAP{s}" for s in ("", "_50", "_75")]
        keys += [f"{kind}/{c}_precision" for c in self.classes]
        return dict.fromkeys(keys, 0.0)

    def _restore_category_ids(self) -> None:
        """Written predictions and ground truth use label indices as category ids; map them
        back to the dataset's own ids so the JSON files match the user's annotation file (and
        each other: ``<split>.gt.json`` with ``<split>.segm.json`` in pycocotools)."""
        from mmengine.dist import is_main_process

        if self.outfile_prefix is None or self.category_ids is None or not is_main_process():
            return  # only rank 0 computed metrics and wrote the files
        for suffix in ("bbox", "segm"):
            path = Path(f"{self.outfile_prefix}.{suffix}.json")
            if not path.is_file():
                continue
            results = json.loads(path.read_text())
            for det in results:
                det["category_id"] = self.category_ids[det["category_id"]]
            path.write_text(json.dumps(results))
        gt_path = Path(f"{self.outfile_prefix}.gt.json")
        if gt_path.is_file():
            gt = json.loads(gt_path.read_text())
            for category in gt.get("categories", []):
                category["id"] = self.category_ids[category["id"]]
            for ann in gt.get("annotations", []):
                ann["category_id"] = self.category_ids[ann["category_id"]]
            gt_path.write_text(json.dumps(gt))
