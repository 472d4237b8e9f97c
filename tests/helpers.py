"""Test helpers: build mmdet data samples with 'perfect' predictions from a dataset's GT."""

from __future__ import annotations

import torch
from mmengine.structures import InstanceData


def samples_with_gt_as_predictions(dataset, drop_all: bool = False) -> list:
    """Every item of ``dataset`` (test pipeline) with pred_instances equal to its ground truth."""
    samples = []
    for i in range(len(dataset)):
        sample = dataset[i]["data_samples"]
        gt = sample.gt_instances
        pred = InstanceData()
        boxes = gt.bboxes.tensor if hasattr(gt.bboxes, "tensor") else gt.bboxes
        keep = slice(0, 0) if drop_all else slice(None)
        pred.bboxes = boxes[keep].float()
        pred.labels = gt.labels[keep]
        pred.scores = torch.ones(len(pred.labels))
        if "masks" in gt:
            h, w = sample.ori_shape
            pred.masks = torch.from_numpy(gt.masks.to_ndarray()[keep]).bool()
            assert pred.masks.shape[1:] == (h, w)
        sample.pred_instances = pred
        samples.append(sample)
    return samples


def perfect_and_empty_metrics(dataset, kinds: list[str], classes: list[str]) -> dict:
    """Metrics of ground truth given as predictions (key True) and of no predictions (False)."""
    from em_lightning.evaluation import DetectionEvaluator

    out = {}
    for drop in (False, True):
        evaluator = DetectionEvaluator(kinds, classes)
        evaluator.process(samples_with_gt_as_predictions(dataset, drop_all=drop))
        out[not drop] = evaluator.compute(len(dataset))
    return out


def run_entry(entry: str, argv: list[str], capsys) -> tuple[int, str]:
    """(exit code, stdout + stderr) of ``python -m em_lightning.<entry> argv``, run in this
    process the way ``python -m`` runs it (``launch`` with ``sys.argv`` set)."""
    import importlib
    import sys

    from em_lightning.cli import launch

    module = importlib.import_module(f"em_lightning.{entry}")
    old = sys.argv
    sys.argv = [f"em_lightning.{entry}", *argv]
    try:
        launch(module.main, entry)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return code, out.out + out.err
