"""The compiled mmcv ops give correct results on small known inputs."""

import math

import pytest
import torch

mmcv_ops = pytest.importorskip("mmcv.ops")


def test_nms_keeps_the_right_boxes():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    _, keep = mmcv_ops.nms(boxes, scores, iou_threshold=0.5)
    # box 3 (0.95) suppresses 0 (IoU 0.9) and 1; box 2 is far away
    assert keep.tolist() == [3, 2]


def test_box_iou_rotated_matches_hand_computation():
    # 10x4 box vs the same box turned 90 degrees: overlap 4x4=16, union 40+40-16=64
    a = torch.tensor([[0.0, 0.0, 10.0, 4.0, 0.0]])
    b = torch.tensor([[0.0, 0.0, 10.0, 4.0, math.pi / 2]])
    assert mmcv_ops.box_iou_rotated(a, b).item() == pytest.approx(16 / 64, abs=1e-5)
    # shifted by half its width: overlap 5x4=20, union 60
    c = torch.tensor([[5.0, 0.0, 10.0, 4.0, 0.0]])
    assert mmcv_ops.box_iou_rotated(a, c).item() == pytest.approx(20 / 60, abs=1e-5)


def test_nms_rotated_suppresses_overlapping_rotated_box():
    boxes = torch.tensor([[50, 50, 40, 10, 0.3], [51, 50, 40, 10, 0.32], [50, 50, 40, 10, 1.8]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    _, keep = mmcv_ops.nms_rotated(boxes, scores, iou_threshold=0.5)
    assert sorted(keep.tolist()) == [0, 2]


def test_roi_align_averages_a_constant_map():
    feat = torch.full((1, 2, 16, 16), 3.0)
    rois = torch.tensor([[0, 2.0, 2.0, 10.0, 10.0]])
    out = mmcv_ops.roi_align(feat, rois, (4, 4), 1.0, 2, "avg", True)
    assert out.shape == (1, 2, 4, 4)
    assert torch.allclose(out, torch.full_like(out, 3.0))


def test_roi_align_rotated_of_a_ramp():
    # feature value = x coordinate; a 90-degree rotated roi samples along y, so every output
    # row is constant (the centre column's x)
    xs = torch.arange(32, dtype=torch.float32).expand(32, 32)
    feat = xs[None, None].clone()
    roi = torch.tensor([[0, 16.0, 16.0, 8.0, 8.0, math.pi / 2]])
    out = mmcv_ops.roi_align_rotated(feat, roi, (4, 4), 1.0, 2, True, False)
    assert out.shape == (1, 1, 4, 4)
    assert torch.allclose(out[0, 0].mean(), torch.tensor(15.5), atol=0.6)
    assert out[0, 0].std(dim=1).max() < 1e-4 or out[0, 0].std(dim=0).max() < 1e-4
