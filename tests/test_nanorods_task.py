"""Task `nanorods`: three annotation formats, rotation-aware augmentation, rotated metrics,
NaN-loss handling and a fast_dev_run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from em_lightning.data.rotated_formats import rotated_iou
from em_lightning.evaluation import DetectionEvaluator
from em_lightning.models.detector_module import NonFiniteLossError
from tests.conftest import compose_cfg
from tests.helpers import perfect_and_empty_metrics, samples_with_gt_as_predictions


def datamodule(root, tmp_path, *extra):
    cfg = compose_cfg(["task=nanorods", "experiment=tiny", f"data.root={root}", *extra], tmp_path)
    return instantiate(cfg.data)


def rboxes(dataset) -> list[list[tuple]]:
    """Per image, the le90 rotated boxes the pipeline produces (test pipeline, no resize)."""
    out = []
    for i in range(len(dataset)):
        gt = dataset[i]["data_samples"].gt_instances
        out.append([tuple(b) for b in gt.bboxes.tensor.tolist()])
    return out


def test_three_formats_load_the_same_objects(tiny_nanorods, tmp_path):
    per_format = {fmt: rboxes(datamodule(tiny_nanorods, tmp_path, f"data.format={fmt}")
                              .build_dataset("val", augment=False))
                  for fmt in ("coco", "dota", "kitti")}
    ref = per_format["coco"]
    assert sum(len(b) for b in ref) > 10
    for fmt in ("dota", "kitti"):
        assert [len(b) for b in per_format[fmt]] == [len(b) for b in ref]
        for boxes_a, boxes_b in zip(ref, per_format[fmt]):
            for a, b in zip(boxes_a, boxes_b):
                assert rotated_iou(a, b) > 0.999


def test_perfect_predictions_give_rotated_ap_one(tiny_nanorods, tmp_path):
    dm = datamodule(tiny_nanorods, tmp_path)
    dataset = dm.build_dataset("val", augment=False)
    results = perfect_and_empty_metrics(dataset, ["rbox", "dota"], dm.classes)
    for perfect, expected in ((True, 1.0), (False, 0.0)):
        metrics = results[perfect]
        for key in ("rbox_mAP", "rbox_mAP_50", "rbox_mAP_75", "nanorod_rbox_AP", "dota_AP50"):
            assert metrics[key] == pytest.approx(expected, abs=1e-3), key


def test_rotated_ap_counts_a_quarter_overlap_as_a_miss(tiny_nanorods, tmp_path):
    """Turning every predicted box by 90 degrees (IoU with its rod ~ h/w < 0.5) gives AP50 = 0;
    shifting by 1 px keeps AP50 = 1 (IoU of rods >= 5 px wide stays above 0.5)."""
    dm = datamodule(tiny_nanorods, tmp_path)
    dataset = dm.build_dataset("val", augment=False)
    for change, expected in (("turn", 0.0), ("shift", 1.0)):
        samples = samples_with_gt_as_predictions(dataset)
        for s in samples:
            boxes = s.pred_instances.bboxes.clone()
            if change == "turn":
                boxes[:, 4] += math.pi / 2
            else:
                boxes[:, 0] += 1.0
            s.pred_instances.bboxes = boxes
        evaluator = DetectionEvaluator(["rbox"], dm.classes)
        evaluator.process(samples)
        assert evaluator.compute(len(dataset))["rbox_mAP_50"] == pytest.approx(expected, abs=0.02)


def _rod_image(size=128):
    """A dark image with one bright rod and its exact box (le90)."""
    from em_lightning.data.rotated_formats import rbox_to_corners

    box = (70.0, 50.0, 60.0, 8.0, 0.5)
    img = np.zeros((size, size), np.uint8)
    import cv2

    # pixel (i, j) is centred at (j + 0.5, i + 0.5): fillPoly works in pixel-centre units
    corners = rbox_to_corners(*box) - 0.5
    cv2.fillPoly(img, [np.round(corners * 16).astype(np.int32)], 255, shift=4)
    return img, box


def _rod_dataset(tmp_path, *overrides):
    """The augmented training set of one image holding the rod of ``_rod_image``."""
    import cv2

    from em_lightning.data.rotated_formats import RotatedImage, RotatedObject, write_coco_rotated

    img, box = _rod_image()
    root = tmp_path / "rod"
    (root / "images" / "train").mkdir(parents=True)
    cv2.imwrite(str(root / "images" / "train" / "rod.png"), img)
    (root / "annotations").mkdir()
    write_coco_rotated([RotatedImage("train/rod.png", 128, 128, [RotatedObject("nanorod", *box)])],
                       ["nanorod"], root / "annotations" / "train.json")
    no_jitter = ["data.augment.noise_std=0", "data.augment.brightness=0",
                 "data.augment.contrast=0", "data.augment.gamma=0"]
    return datamodule(root, tmp_path, *no_jitter, *overrides).build_dataset("train", augment=True)


def _assert_box_covers_rod(image: np.ndarray, rbox: np.ndarray, edge: float = 1.0) -> None:
    """The rod's pixels are bright inside the box and (almost) none lie further than ``edge``
    pixels (interpolated edges) outside it."""
    import cv2

    from em_lightning.visualize import rbox_corners

    def fill(box):
        mask = np.zeros(image.shape, np.uint8)
        cv2.fillPoly(mask, [np.round((rbox_corners(box)[0] - 0.5) * 16).astype(np.int32)], 1,
                     shift=4)
        return mask > 0

    grown = rbox + np.array([0, 0, 2 * edge, 2 * edge, 0], np.float32)
    inside, covered = image[fill(rbox)].mean(), fill(grown)[image > 127].mean()
    assert inside > 200 and covered > 0.995, (rbox, inside, covered)


def test_augmented_box_still_covers_the_rod_pixels(tmp_path):
    """Flip, transpose and free rotation move the image and the rotated box together."""
    dataset = _rod_dataset(tmp_path, "data.augment.flip_prob=0.3", "data.augment.rotate_prob=1.0",
                           "data.augment.transpose_prob=0.5")
    np.random.seed(3)
    angles = set()
    for _ in range(12):
        item = dataset[0]
        rbox = item["data_samples"].gt_instances.bboxes.tensor[0].numpy()
        angles.add(round(float(rbox[4]), 2))
        _assert_box_covers_rod(item["inputs"][0].numpy(), rbox)
    assert len(angles) > 4  # the rotations really varied


def test_magnified_crops_scale_the_box_with_the_rod(tmp_path):
    """image_size 2x the image, crop_size = the image: crops of the magnified image whose rod
    (60 x 8 px) is 120 x 16 px; a rod whose centre leaves the crop leaves the annotations."""
    dataset = _rod_dataset(tmp_path, "data.image_size=256", "data.crop_size=128",
                           "data.augment.flip_prob=0", "data.augment.rotate_prob=0",
                           "data.augment.transpose_prob=0")
    np.random.seed(0)
    kept = 0
    for _ in range(12):
        item = dataset[0]
        image = item["inputs"][0].numpy()
        assert image.shape == (128, 128)
        boxes = item["data_samples"].gt_instances.bboxes.tensor.numpy()
        for rbox in boxes:
            kept += 1
            assert rbox[2:4] == pytest.approx([120.0, 16.0], abs=0.01)
            assert 0 <= rbox[0] < 128 and 0 <= rbox[1] < 128
            _assert_box_covers_rod(image, rbox, edge=2.0)  # edges blur over 2 px at 2x
        if len(boxes) == 0:
            assert (image > 127).sum() < 120 * 16 / 2  # at most a cut end of the rod
    assert 0 < kept < 12


@pytest.mark.parametrize("override", ["data.crop_size=0", "data.image_size=-512"])
def test_nonpositive_sizes_are_a_clear_error(override, tmp_path):
    from hydra.errors import InstantiationException  # wraps the datamodule's ValueError

    key = override.split("=")[0]
    with pytest.raises(InstantiationException, match=f"{key} must be a positive"):
        datamodule(tmp_path / "unused", tmp_path, override)


def test_nonfinite_loss_is_skipped_then_stops(tiny_nanorods, tmp_path):
    from mmengine.dataset import pseudo_collate

    cfg = compose_cfg(["task=nanorods", "experiment=tiny", f"data.root={tiny_nanorods}",
                       "model.max_nonfinite_steps=2"], tmp_path)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    model = instantiate(cfg.model)
    batch = pseudo_collate([dm.datasets["train"][0], dm.datasets["train"][1]])
    assert torch.isfinite(model.training_step(batch, 0))
    with torch.no_grad():
        model.detector.roi_head.bbox_head.fc_cls.weight.fill_(float("nan"))
    assert model.training_step(batch, 1) is None  # skipped: no backward, no optimizer step
    assert model.training_step(batch, 2) is None
    assert model.nonfinite_steps == 2
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps"):
        model.training_step(batch, 3)


def test_fast_dev_run_trains_and_reports_rotated_metrics(tiny_nanorods, tmp_path):
    from em_lightning.train import train

    cfg = compose_cfg(["task=nanorods", "experiment=tiny", "debug=fdr", "logger=csv",
                       f"data.root={tiny_nanorods}", "data.format=kitti"], tmp_path)
    metrics = train(cfg)
    for key in ("val/rbox_mAP", "val/dota_AP50", "val/nanorod_rbox_AP"):
        assert 0.0 <= metrics[key] <= 1.0
