"""Task `vesicles`: data loading and validation, evaluation, training, resume."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from em_lightning.data.errors import DataError
from em_lightning.evaluation import DetectionEvaluator
from tests.conftest import compose_cfg
from tests.helpers import perfect_and_empty_metrics, samples_with_gt_as_predictions


def datamodule(root, tmp_path, *extra):
    cfg = compose_cfg(["task=vesicles", "experiment=tiny", f"data.root={root}", *extra], tmp_path)
    return instantiate(cfg.data)


@pytest.fixture
def broken_copy(tiny_vesicles, tmp_path):
    """A writable copy of the tiny dataset plus a function editing its train annotations."""
    root = tmp_path / "broken"
    shutil.copytree(tiny_vesicles, root)
    ann_path = root / "annotations" / "train.json"

    def edit(fn):
        data = json.loads(ann_path.read_text())
        fn(data)
        ann_path.write_text(json.dumps(data))
        return root

    return edit


def first_ann(data):
    return data["annotations"][0]


BAD_CASES = {
    "unknown_image": lambda d: first_ann(d).update(image_id=999),
    "unknown_category": lambda d: first_ann(d).update(category_id=42),
    "bad_segmentation": lambda d: first_ann(d).update(segmentation=[[1.0, 2.0, 3.0, 4.0]]),
    "bad_box": lambda d: first_ann(d).update(bbox=[10, 10, 0, 5]),
}


@pytest.mark.parametrize("kind", sorted(BAD_CASES))
def test_bad_annotation_strict_error_or_counted_skip(kind, broken_copy, tmp_path):
    root = broken_copy(BAD_CASES[kind])
    with pytest.raises(DataError) as err:
        datamodule(root, tmp_path).build_dataset("train", augment=False)
    assert "train.json" in str(err.value) and "annotation id" in str(err.value)
    dataset = datamodule(root, tmp_path, "data.strict=false").build_dataset("train", False)
    assert dataset.report.counts == {kind: 1}


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_bad_image_names_the_file(damage, broken_copy, tmp_path):
    root = broken_copy(lambda d: None)
    path = root / "images" / "train" / "vesicles_001.png"
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="vesicles_001.png"):
        datamodule(root, tmp_path).build_dataset("train", augment=False)
    dataset = datamodule(root, tmp_path, "data.strict=false").build_dataset("train", False)
    assert dataset.report.counts == {"bad_image": 1}
    assert len(dataset) == 3


def test_unknown_class_selection_is_a_clear_error(tiny_vesicles, tmp_path):
    with pytest.raises(DataError, match="unknown class"):
        datamodule(tiny_vesicles, tmp_path, "data.classes=[mitochondrion]").build_dataset(
            "val", False)


def test_class_group_selection_keeps_only_that_class(tiny_vesicles, tmp_path):
    dataset = datamodule(tiny_vesicles, tmp_path, "data.classes=[hole]").build_dataset(
        "train", False)
    coco = COCO(str(tiny_vesicles / "annotations" / "train.json"))
    expected = len(coco.getAnnIds(catIds=coco.getCatIds(catNms=["hole"])))
    labels = [inst["bbox_label"] for i in range(len(dataset))
              for inst in dataset.get_data_info(i)["instances"]]
    assert len(labels) == expected > 0 and set(labels) == {0}


def test_sixteen_bit_tiff_and_images_in_subfolders_and_empty_images(tiny_vesicles, tmp_path):
    import tifffile

    root = tmp_path / "ds16"
    shutil.copytree(tiny_vesicles, root)
    data = json.loads((root / "annotations" / "val.json").read_text())
    img0 = data["images"][0]
    src = cv2.imread(str(root / "images" / img0["file_name"]), cv2.IMREAD_UNCHANGED)
    sixteen = src.astype(np.uint16) * 200 + 1000  # uses 1000..52000 of the 16-bit range
    (root / "images" / "deep" / "er").mkdir(parents=True)
    tifffile.imwrite(root / "images" / "deep" / "er" / "a.tif", sixteen)
    img0["file_name"] = "deep/er/a.tif"
    data["images"].append({"id": 777, "file_name": img0["file_name"], "width": img0["width"],
                           "height": img0["height"]})  # an image without annotations
    (root / "annotations" / "val.json").write_text(json.dumps(data))
    dataset = datamodule(root, tmp_path).build_dataset("val", augment=False)
    assert len(dataset) == 3
    item = dataset[0]
    img = item["inputs"].float()
    assert img.max() == pytest.approx(255.0, abs=1.0) and img.min() == pytest.approx(0, abs=1)
    # min-max normalisation of the 16-bit data reproduces the 8-bit picture's structure
    assert np.corrcoef(img[0].numpy().ravel(), cv2.resize(src, img.shape[1:][::-1]).ravel()
                       )[0, 1] > 0.99
    assert len(dataset[2]["data_samples"].gt_instances) == 0


def test_perfect_and_empty_predictions(tiny_vesicles, tmp_path):
    dm = datamodule(tiny_vesicles, tmp_path)
    dataset = dm.build_dataset("val", augment=False)
    results = perfect_and_empty_metrics(dataset, ["bbox", "segm"], dm.classes)
    for perfect, expected in ((True, 1.0), (False, 0.0)):
        metrics = results[perfect]
        for key in ("bbox_mAP", "segm_mAP", "segm_mAP_50", "big_vesicle_segm_AP",
                    "hole_segm_AP"):
            assert metrics[key] == pytest.approx(expected, abs=1e-3), key


def test_evaluator_equals_pycocotools_on_the_same_predictions(tiny_vesicles, tmp_path):
    """Degraded predictions (jittered boxes, some dropped) give the same AP both ways."""
    dm = datamodule(tiny_vesicles, tmp_path)
    dataset = dm.build_dataset("val", augment=False)
    samples = samples_with_gt_as_predictions(dataset)
    gen = torch.Generator().manual_seed(0)
    for s in samples:
        p = s.pred_instances
        n = len(p)
        p.scores = torch.rand(n, generator=gen)
        p.bboxes = p.bboxes + torch.randn(n, 4, generator=gen) * 2
        p.masks = torch.roll(p.masks, shifts=1, dims=2)
        s.pred_instances = p[torch.rand(n, generator=gen) > 0.2]
    prefix = tmp_path / "pred" / "val"
    evaluator = DetectionEvaluator(["bbox", "segm"], dm.classes, outfile_prefix=prefix,
                                   category_ids=dataset.cat_ids)
    evaluator.process(samples)
    ours = evaluator.compute(len(dataset))
    gt = COCO(str(tiny_vesicles / "annotations" / "val.json"))
    for iou_type in ("bbox", "segm"):
        dt = gt.loadRes(str(prefix) + f".{iou_type}.json")
        ev = COCOeval(gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        assert 0.05 < ev.stats[0] < 0.95  # a non-trivial number
        assert ours[f"{iou_type}_mAP"] == pytest.approx(ev.stats[0], abs=6e-4)
        assert ours[f"{iou_type}_mAP_50"] == pytest.approx(ev.stats[1], abs=6e-4)


def test_augmentation_keeps_masks_on_their_objects(tiny_vesicles, tmp_path):
    """After flips/transpose/resize/crop/jitter, mask pixels still sit on the objects:
    holes (bright) stay brighter than small vesicles (dark) in the augmented image."""
    dm = datamodule(tiny_vesicles, tmp_path, "data.augment.noise_std=0")
    dataset = dm.build_dataset("train", augment=True)
    torch.manual_seed(0)
    np.random.seed(0)
    bright, dark = [], []
    for i in range(8):
        item = dataset[i % len(dataset)]
        img = item["inputs"][0].float().numpy()
        gt = item["data_samples"].gt_instances
        masks = gt.masks.to_ndarray().astype(bool)
        for mask, label in zip(masks, gt.labels.tolist()):
            if mask.sum() < 4:
                continue
            (bright if label == 2 else dark if label == 1 else []).append(img[mask].mean())
    assert np.mean(bright) > np.mean(dark) + 30


def test_fast_dev_run_trains_and_reports_metrics(tiny_vesicles, tmp_path):
    from em_lightning.train import train

    cfg = compose_cfg(["task=vesicles", "experiment=tiny", "debug=fdr", "logger=csv",
                       f"data.root={tiny_vesicles}"], tmp_path)
    metrics = train(cfg)
    assert 0.0 <= metrics["val/segm_mAP"] <= 1.0
    assert metrics["nonfinite_steps"] == 0
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["metrics"]["val/segm_mAP"] == metrics["val/segm_mAP"]
    record = json.loads((tmp_path / "run" / "run_record.json").read_text())
    assert record["packages"]["mmdet"] == "3.1.0" and record["packages"]["mmcv"] == "2.0.1"
    assert record["config"]["data"]["classes"] == ["big_vesicle", "small_vesicle", "hole"]
    assert len(record["git"]["commit"] or "x" * 40) == 40
    fingerprints = record["dataset_fingerprints"]
    assert set(fingerprints) == {"train", "val"} and len(fingerprints["train"]) == 64


def _train(root, out, *extra):
    from em_lightning.train import train

    cfg = compose_cfg(["task=vesicles", "experiment=tiny", "logger=csv", "eval_train=false",
                       f"data.root={root}", "trainer.check_val_every_n_epoch=10",
                       "callbacks.overlays=null", *extra], out)
    return train(cfg)


def _weights(ckpt):
    return torch.load(ckpt, map_location="cpu", weights_only=False)


def test_resume_continues_exactly(tiny_vesicles, tmp_path):
    """2 epochs straight == 1 epoch + resume from last.ckpt for 1 more (weights, optimizer,
    scheduler, epoch, RNG)."""
    _train(tiny_vesicles, tmp_path / "a", "trainer.max_epochs=2")
    _train(tiny_vesicles, tmp_path / "b", "trainer.max_epochs=1")
    first = _weights(tmp_path / "b" / "run" / "checkpoints" / "last.ckpt")
    assert first["global_step"] == 2
    _train(tiny_vesicles, tmp_path / "c", "trainer.max_epochs=2",
           f"ckpt_path={tmp_path / 'b' / 'run' / 'checkpoints' / 'last.ckpt'}")
    straight = _weights(tmp_path / "a" / "run" / "checkpoints" / "last.ckpt")
    resumed = _weights(tmp_path / "c" / "run" / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == straight["global_step"] == 4
    assert resumed["lr_schedulers"][0]["last_epoch"] == 4
    for name, value in straight["state_dict"].items():
        assert torch.allclose(value.float(), resumed["state_dict"][name].float(), atol=1e-6), name


def test_rle_and_polygon_annotations_give_the_same_masks(tiny_vesicles, tmp_path):
    from pycocotools import mask as mask_utils

    root = tmp_path / "rle"
    shutil.copytree(tiny_vesicles, root)
    path = root / "annotations" / "val.json"
    data = json.loads(path.read_text())
    images = {i["id"]: i for i in data["images"]}
    for k, ann in enumerate(data["annotations"]):
        img = images[ann["image_id"]]
        rles = mask_utils.frPyObjects(ann["segmentation"], img["height"], img["width"])
        rle = mask_utils.merge(rles)
        if k % 2:  # compressed RLE (counts as string)
            ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
        else:  # uncompressed RLE (counts as run lengths)
            flat = mask_utils.decode(rle).ravel(order="F")
            bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
            runs = np.diff(bounds).tolist()
            counts = runs if flat[0] == 0 else [0, *runs]
            ann["segmentation"] = {"size": rle["size"], "counts": [int(c) for c in counts]}
    path.write_text(json.dumps(data))
    polygons = datamodule(tiny_vesicles, tmp_path).build_dataset("val", augment=False)
    rle_set = datamodule(root, tmp_path).build_dataset("val", augment=False)
    for i in range(len(polygons)):
        a = polygons[i]["data_samples"].gt_instances.masks.to_ndarray()
        b = rle_set[i]["data_samples"].gt_instances.masks.to_ndarray()
        assert a.shape == b.shape and a.shape[0] > 0
        assert (a == b).mean() > 0.9999
