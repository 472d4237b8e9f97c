"""The project's rotated IoU: exact for every way of writing a box, where mmcv's is not, and
rotated AP 1.0 for ground truth fed back in any equivalent form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from em_lightning.data.rotated_formats import normalize_le90, rotated_iou
from em_lightning.evaluation.rotated_iou import normalize_le90_boxes, rotated_iou_matrix


def _random_boxes(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(20, 2000, n), rng.uniform(20, 2000, n), rng.uniform(3, 60, n),
                     rng.uniform(3, 60, n), rng.uniform(-math.pi, math.pi, n)], 1)


def _equivalent(boxes: np.ndarray, form: str, seed: int = 1) -> np.ndarray:
    """The same rectangles written another way (angle + pi, w/h swapped + pi/2, ...)."""
    out = np.array(boxes, dtype=np.float64, copy=True)
    if form == "mixed":
        forms = ["same", "plus_pi", "minus_pi", "swap_plus", "swap_minus", "plus_2pi"]
        pick = np.random.default_rng(seed).integers(0, len(forms), len(out))
        for k, name in enumerate(forms):
            out[pick == k] = _equivalent(boxes[pick == k], name)
        return out
    if form.startswith("swap"):
        out[:, [2, 3]] = out[:, [3, 2]]
    out[:, 4] += {"same": 0.0, "plus_pi": math.pi, "minus_pi": -math.pi, "plus_2pi": 2 * math.pi,
                  "swap_plus": math.pi / 2, "swap_minus": -math.pi / 2}[form]
    return out


FORMS = ["same", "plus_pi", "minus_pi", "swap_plus", "swap_minus", "plus_2pi", "mixed"]


def test_identical_boxes_have_iou_one_where_mmcv_fails():
    """500 random boxes and themselves turned by pi: mmcv gives < 0.99 for many, the project's
    IoU gives 1 for all (and for every other way of writing them)."""
    from mmcv.ops import box_iou_rotated

    boxes = _random_boxes(500).astype(np.float32)
    turned = _equivalent(boxes, "plus_pi").astype(np.float32)
    raw = box_iou_rotated(torch.from_numpy(boxes), torch.from_numpy(turned), aligned=True)
    assert int((raw < 0.99).sum()) >= 20  # the bug this module exists for (81 of 500 seen)
    for form in FORMS:
        other = _equivalent(boxes, form).astype(np.float32)
        ious = np.diag(rotated_iou_matrix(torch.from_numpy(boxes), torch.from_numpy(other)))
        assert ious.min() > 1 - 1e-5, form


def test_iou_agrees_with_mmcv_and_shapely_away_from_coincidence():
    """Pairs that mmcv gets right (boxes that do not coincide) and known analytic values."""
    from mmcv.ops import box_iou_rotated

    a, b = _random_boxes(60, seed=2), _random_boxes(40, seed=3)
    b[:, :2] = b[:, :2] * 0.03 + 70  # crowd them so that many pairs overlap
    a[:, :2] = a[:, :2] * 0.03 + 70
    a, b = a.astype(np.float32), b.astype(np.float32)
    ours = rotated_iou_matrix(a, b)
    ref = box_iou_rotated(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    assert (ours > 0.05).sum() > 200
    assert np.abs(ours - ref).max() < 1e-4
    for i, j in ((0, 0), (5, 7), (59, 39)):
        assert ours[i, j] == pytest.approx(rotated_iou(a[i], b[j]), abs=1e-12)
    # 10 x 4 box and itself turned by 90 degrees: 16 / (40 + 40 - 16); shifted by half its
    # length: 20 / 60; far apart: 0
    box = [50.0, 50.0, 10.0, 4.0, 0.3]
    pairs = [[50, 50, 10, 4, 0.3 + math.pi / 2],
             [50 + 5 * math.cos(0.3), 50 + 5 * math.sin(0.3), 10, 4, 0.3], [90, 90, 10, 4, 0]]
    # (exact up to the 1e-9 px snapping grid of the overlay)
    assert rotated_iou_matrix([box], pairs)[0] == pytest.approx([0.25, 1 / 3, 0.0], abs=1e-9)


def test_iof_degenerate_and_empty_inputs():
    big, small = [50, 50, 20, 10, 0.4], [50, 50, 4, 2, 1.0]
    assert rotated_iou_matrix([small], [big], mode="iof")[0, 0] == pytest.approx(1.0)
    assert rotated_iou_matrix([big], [small], mode="iof")[0, 0] == pytest.approx(8 / 200)
    bad = [[50, 50, 0, 10, 0.0], [50, 50, math.nan, 10, 0.0]]
    assert np.array_equal(rotated_iou_matrix(bad, [big]), np.zeros((2, 1)))
    assert rotated_iou_matrix(np.zeros((0, 5)), [big]).shape == (0, 1)
    assert rotated_iou_matrix(torch.zeros((3, 5)), torch.zeros((0, 5))).shape == (3, 0)
    with pytest.raises(ValueError, match="mode"):
        rotated_iou_matrix([big], [big], mode="giou")


def test_normalize_le90_boxes_matches_the_scalar_rule_and_keeps_the_tensor_kind():
    boxes = _equivalent(_random_boxes(200, seed=4), "mixed")
    want = np.array([normalize_le90(*b) for b in boxes])
    got = normalize_le90_boxes(boxes)
    assert np.allclose(got, want, atol=1e-9)
    assert (got[:, 2] >= got[:, 3]).all()
    assert ((got[:, 4] >= -math.pi / 2) & (got[:, 4] < math.pi / 2)).all()
    scored = torch.from_numpy(np.hstack([boxes, np.full((200, 1), 0.7)])).float()
    out = normalize_le90_boxes(scored)
    assert out.dtype == torch.float32 and out.shape == (200, 6)
    assert torch.allclose(out[:, :5], torch.from_numpy(want).float(), atol=1e-4)
    assert torch.all(out[:, 5] == scored[:, 5])


@pytest.fixture(scope="module")
def nanorod_val(tiny_nanorods, tmp_path_factory):
    from hydra.utils import instantiate

    from tests.conftest import compose_cfg

    cfg = compose_cfg(["task=nanorods", "experiment=tiny", f"data.root={tiny_nanorods}"],
                      tmp_path_factory.mktemp("cfg"))
    dm = instantiate(cfg.data)
    return dm.build_dataset("val", augment=False), dm.classes


@pytest.mark.parametrize("form", FORMS)
def test_ground_truth_in_any_equivalent_form_scores_ap_one(nanorod_val, form):
    """Ground truth fed back as predictions, written as angle +- pi, w/h swapped with angle
    +- pi/2, plus a full turn, or a mixture: rotated COCO AP and DOTA AP50 are 1.0 (mmcv's IoU
    gave AP 0.94 and below for some of these)."""
    from em_lightning.evaluation import DetectionEvaluator
    from tests.helpers import samples_with_gt_as_predictions

    dataset, classes = nanorod_val
    samples = samples_with_gt_as_predictions(dataset)
    for k, sample in enumerate(samples):
        boxes = sample.pred_instances.bboxes.double().numpy()
        sample.pred_instances.bboxes = torch.from_numpy(_equivalent(boxes, form, seed=k)).float()
    evaluator = DetectionEvaluator(["rbox", "dota"], classes)
    evaluator.process(samples)
    metrics = evaluator.compute(len(dataset))
    for key in ("rbox_mAP", "rbox_mAP_50", "rbox_mAP_75", "dota_AP50"):
        assert metrics[key] == pytest.approx(1.0, abs=1e-6), (form, key)


@pytest.mark.parametrize("form", ["plus_pi", "swap_plus", "minus_pi"])
def test_tile_merging_sees_one_rod_however_the_tiles_write_it(form):
    """A rod in the overlap of two tiles, reported by each in another equivalent form, is
    merged into one detection (tile merging compares the boxes' corner polygons)."""
    from em_lightning.inference.detections import Detection
    from em_lightning.inference.merge import flag_detection, merge_tiles
    from em_lightning.inference.tiling import tile_grid

    tiles = tile_grid(64, 96, 64, 32)
    assert len(tiles) == 2
    box = np.array([48.0, 30.0, 14.0, 4.0, 0.7])
    dets = []
    for tile, rbox in zip(tiles, (box, _equivalent(box[None], form)[0])):
        det = Detection(0, 0.9 - 0.1 * tile.index, np.zeros(4), rbox=rbox)
        corners = det.outline()
        det.box = np.array([*corners.min(0), *corners.max(0)])
        dets.append(flag_detection(det, tile, margin=2))
    merged = merge_tiles(dets, tiles, iou_thr=0.5)
    assert len(merged) == 1
    assert rotated_iou_matrix([merged[0].rbox], [box])[0, 0] == pytest.approx(1.0, abs=1e-9)


def test_boxes_equal_up_to_float_noise_have_iou_one():
    """GEOS without a snapping grid returned an empty intersection for 124 of these 20,000
    near-axis-aligned pairs (cx differing by ~1e-14 px); both IoUs of the project must not."""
    from em_lightning.data.rotated_formats import rotated_iou

    rng = np.random.default_rng(0)
    n = 20000
    a = np.column_stack([rng.uniform(10, 100, n), rng.uniform(10, 100, n),
                         rng.uniform(5, 80, n), rng.uniform(5, 40, n),
                         rng.uniform(-0.002, 0.002, n)])
    b = a.copy()
    b[:, 0] += 1e-14 * rng.standard_normal(n)
    ious = np.array([rotated_iou_matrix(a[k:k + 1], b[k:k + 1])[0, 0] for k in range(n)])
    assert ious.min() > 1 - 1e-6
    assert rotated_iou((36.115, 71.905, 72.363, 31.911, -0.000804),
                       (36.115 + 1e-14, 71.905, 72.363, 31.911, -0.000804)) > 1 - 1e-6
