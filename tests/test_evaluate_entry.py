"""`python -m em_lightning.evaluate` on a checkpoint: table, metrics.json, COCO predictions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pycocotools.coco import COCO

from tests.conftest import compose_cfg


def train_one_epoch(task: str, root: Path, out: Path) -> Path:
    from em_lightning.train import train

    cfg = compose_cfg([f"task={task}", "experiment=tiny", "logger=csv", "eval_train=false",
                       "trainer.max_epochs=1", f"data.root={root}"], out)
    train(cfg)
    return out / "run" / "checkpoints" / "last.ckpt"


def evaluate_cfg(task: str, root: Path, ckpt: Path, out: Path):
    return compose_cfg([f"task={task}", "experiment=tiny", f"data.root={root}",
                        f"ckpt_path={ckpt}", "splits=[val,train]"],
                       config="evaluate", output_dir=out)


@pytest.mark.parametrize("task,fixture", [("vesicles", "tiny_vesicles"),
                                          ("nanorods", "tiny_nanorods")])
def test_evaluate_writes_table_metrics_and_predictions(task, fixture, request, tmp_path, capsys):
    from em_lightning.evaluate import evaluate

    root = request.getfixturevalue(fixture)
    ckpt = train_one_epoch(task, root, tmp_path / "train")
    out = tmp_path / "eval"
    results = evaluate(evaluate_cfg(task, root, ckpt, out))
    printed = capsys.readouterr().out
    headline = "segm_mAP" if task == "vesicles" else "rbox_mAP"
    for split in ("val", "train"):
        assert 0.0 <= results[split][headline] <= 1.0
        assert f"{split} split" in printed
    first_class = "big_vesicle" if task == "vesicles" else "nanorod"
    assert first_class in printed
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["metrics"]["val"][headline] == results["val"][headline]
    assert list((out / "overlays").glob("*.png"))
    if task == "vesicles":
        gt = COCO(str(root / "annotations" / "val.json"))
        preds = json.loads((out / "predictions" / "val.segm.json").read_text())
        assert {p["category_id"] for p in preds} <= set(gt.getCatIds())
        assert len(gt.loadRes(str(out / "predictions" / "val.segm.json")).getAnnIds()) == \
            len(preds)
        # the ground truth written beside them uses the same category ids and names
        written = COCO(str(out / "predictions" / "val.gt.json"))
        assert {c["id"]: c["name"] for c in written.loadCats(written.getCatIds())} == \
            {c["id"]: c["name"] for c in gt.loadCats(gt.getCatIds())}
        per_class = {c: len(gt.getAnnIds(catIds=[c], iscrowd=False)) for c in gt.getCatIds()}
        assert {c: len(written.getAnnIds(catIds=[c])) for c in written.getCatIds()} == per_class
    else:
        preds = json.loads((out / "predictions" / "val.bbox.json").read_text())
        assert preds and len(preds[0]["bbox"]) == 5  # cx cy w h angle
