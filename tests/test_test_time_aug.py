"""Test-time augmentation: views map back exactly, fusion merges what the views agree on, and
a model with all 8 views is exactly equivariant to flipping or transposing its input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from em_lightning.models.test_time_aug import View, fuse_instances, views_for
from tests.conftest import compose_cfg

ALL_VIEWS = views_for("d4")


def _rbox_mask(rbox: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixels whose centres (j + 0.5, i + 0.5) lie in the rotated box (angle clockwise, y down)."""
    cx, cy, w, h, a = rbox.tolist()
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    along = (xs - cx) * math.cos(a) + (ys - cy) * math.sin(a)
    across = -(xs - cx) * math.sin(a) + (ys - cy) * math.cos(a)
    return (along.abs() <= w / 2) & (across.abs() <= h / 2)


def _box_mask(box: torch.Tensor, height: int, width: int) -> torch.Tensor:
    x1, y1, x2, y2 = box.tolist()
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    return (xs >= x1) & (xs <= x2) & (ys >= y1) & (ys <= y2)


def test_setting_names_the_views():
    assert [len(views_for(s)) for s in ("none", None, "flip", "D4")] == [1, 1, 4, 8]
    assert len(set(ALL_VIEWS)) == 8
    with pytest.raises(ValueError, match="test_time_aug must be one of"):
        views_for("rotate")


@pytest.mark.parametrize("view", ALL_VIEWS, ids=str)
def test_boxes_and_rotated_boxes_map_back_like_their_pixels(view):
    """A box drawn on the view, mapped back, covers the pixels of the drawing mapped back."""
    height, width = 40, 56
    view_hw = (width, height) if view.transpose else (height, width)
    box = torch.tensor([[7.0, 5.0, 30.0, 17.0]])
    rbox = torch.tensor([[25.0, 18.0, 24.0, 7.0, 0.4]])
    for boxes, draw in ((box, _box_mask), (rbox, _rbox_mask)):
        drawn = draw(boxes[0], *view_hw)
        want = view.restore_masks(drawn)
        got = draw(view.restore_boxes(boxes, view_hw)[0], height, width)
        assert want.shape == (height, width) and want.sum() > 50
        assert (want ^ got).sum() <= 2  # pixel centres on an edge may round either way
        assert torch.equal(view.apply(view.restore_masks(drawn)), drawn)


def _instances(boxes, scores, labels, masks=None):
    from mmengine.structures import InstanceData

    inst = InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32),
                        scores=torch.tensor(scores), labels=torch.tensor(labels))
    if masks is not None:
        inst.masks = masks
    return inst


def test_fusion_averages_agreeing_views_and_discounts_lone_detections():
    size = 64
    boxes = [[[10, 10, 30, 30], [40, 40, 50, 50]],  # view 0: the object and a lone detection
             [[12, 10, 32, 30]],                     # view 1: the object, shifted
             [[11, 12, 31, 28], [10, 10, 30, 30]]]   # view 2: the object twice (other class)
    scores = [[0.9, 0.8], [0.6], [0.6, 0.7]]
    labels = [[0, 0], [0], [0, 1]]
    views = []
    for b, s, lab in zip(boxes, scores, labels):
        masks = torch.stack([_box_mask(torch.tensor(x, dtype=torch.float32) - 0.5, size, size)
                             for x in b])
        views.append(_instances(b, s, lab, masks))
    fused = fuse_instances(views, iou_thr=0.5)
    assert len(fused) == 3
    order = torch.argsort(fused.scores, descending=True)
    obj, lone, other_class = (int(i) for i in order)  # scores 0.7, 0.8 / 3, 0.7 / 3
    assert fused.scores[obj] == pytest.approx((0.9 + 0.6 + 0.6) / 3)
    want = (0.9 * torch.tensor([10, 10, 30, 30.]) + 0.6 * torch.tensor([12, 10, 32, 30.])
            + 0.6 * torch.tensor([11, 12, 31, 28.])) / 2.1
    assert torch.allclose(fused.bboxes[obj], want)
    # the mask is the weighted vote: column 10 is covered by views 0 and 2 (1.5 of 2.1)
    assert fused.masks[obj][20, 10] and not fused.masks[obj][20, 31]
    assert fused.labels[other_class] == 1 and fused.scores[other_class] == pytest.approx(0.7 / 3)
    assert fused.scores[lone] == pytest.approx(0.8 / 3)
    assert len(fuse_instances(views, max_per_img=2)) == 2


def test_rotated_fusion_averages_angles_across_the_pi_wrap():
    """Two views of a nearly vertical rod, angles -1.55 and 1.55 (2.9 rad apart as numbers,
    0.04 rad apart as boxes): the fused angle is vertical, not horizontal."""
    views = [_instances([[30.0, 30.0, 40.0, 6.0, -1.55]], [0.8], [0]),
             _instances([[31.0, 30.0, 40.0, 6.0, 1.55]], [0.8], [0])]
    fused = fuse_instances(views)
    assert len(fused) == 1
    assert abs(abs(float(fused.bboxes[0, 4])) - math.pi / 2) < 0.03
    assert float(fused.bboxes[0, 0]) == pytest.approx(30.5)


def _predict(module, image: np.ndarray, task: str) -> object:
    from omegaconf import OmegaConf

    from em_lightning.inference.engine import build_pipeline
    from em_lightning.registry import scope as openmmlab_scope

    cfg = compose_cfg([f"task={task}", "experiment=tiny"])
    scope = cfg.model.scope
    pipeline = build_pipeline(OmegaConf.to_container(cfg.data.test_pipeline, resolve=True),
                              scope)
    rgb = np.repeat(image.astype(np.float32)[..., None], 3, axis=-1)
    packed = pipeline({"img": rgb, "img_shape": rgb.shape[:2], "ori_shape": rgb.shape[:2],
                       "img_path": "", "img_id": 0})
    with torch.no_grad(), openmmlab_scope(scope):
        return module.predict_samples({"inputs": [packed["inputs"]],
                                       "data_samples": [packed["data_samples"]]})[0]


@pytest.mark.parametrize("task,fixture", [("vesicles", "tiny_vesicles"),
                                          ("nanorods", "tiny_nanorods")])
@pytest.mark.parametrize("turn", [View(transpose=True), View(flip_h=True, flip_v=True)],
                         ids=str)
def test_all_eight_views_make_a_model_equivariant(task, fixture, turn, request):
    """The 8 views of a turned image are the 8 views of the image: an (untrained) Mask R-CNN /
    rotated Faster R-CNN with ``test_time_aug=d4`` finds the same objects in both, turned.
    The image is not square and not a multiple of 32 px, so the padding moves under
    transposes."""
    import cv2
    from hydra.utils import instantiate

    from em_lightning.registry import register_all_modules

    register_all_modules()
    torch.manual_seed(0)
    cfg = compose_cfg([f"task={task}", "experiment=tiny", "model.test_time_aug=d4"])
    module = instantiate(cfg.model).eval()
    path = sorted((request.getfixturevalue(fixture) / "images" / "val").glob("*.png"))[0]
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)[:120, :100]
    turned = turn.apply(torch.from_numpy(image)).numpy()
    plain = _predict(module, image, task).pred_instances
    seen = _predict(module, turned, task).pred_instances
    assert len(plain) > 5 and len(seen) == len(plain)
    a, b = torch.argsort(plain.scores), torch.argsort(seen.scores)
    assert torch.allclose(plain.scores[a], seen.scores[b], atol=1e-5)
    plain_boxes = plain.bboxes.tensor if hasattr(plain.bboxes, "tensor") else plain.bboxes
    seen_boxes = seen.bboxes.tensor if hasattr(seen.bboxes, "tensor") else seen.bboxes
    back = turn.restore_boxes(seen_boxes, turned.shape)
    if task == "nanorods":
        # compare parameters, an angle +- pi being the same box (not mmcv's box_iou_rotated:
        # it is wrong for boxes within ~0.01 px of each other, e.g. 0.6 for a box and itself
        # turned by 1e-7 rad; mmcv issue #2621)
        assert plain_boxes.shape[-1] == 5
        diff = (plain_boxes[a] - back[b]).abs()
        diff[:, 4] = torch.remainder(diff[:, 4] + math.pi / 2, math.pi) - math.pi / 2
        assert diff.abs().max() < 1e-3
        return
    assert torch.allclose(plain_boxes[a], back[b], atol=1e-3)
    assert plain.masks.shape[-2:] == (120, 100)
    back_masks = turn.restore_masks(seen.masks)
    assert (plain.masks[a] ^ back_masks[b]).float().mean() < 1e-3


def test_rotated_fusion_merges_nearly_coincident_boxes():
    """mmcv's box_iou_rotated gives 0.6 for these two (1e-7 rad apart): fusion still sees one
    box."""
    box = [29.99856185913086, 116.04951477050781, 16.10309600830078, 7.915014266967773]
    views = [_instances([[*box, 4.184246063232422e-05]], [0.8], [0]),
             _instances([[*box, 4.1961669921875e-05]], [0.6], [0])]
    fused = fuse_instances(views, iou_thr=0.7)
    assert len(fused) == 1 and float(fused.scores[0]) == pytest.approx(0.7)


def test_predictor_thresholds_fused_scores(tiny_vesicles):
    """With views, predict keeps the detector's own low threshold (a fused score is a mean
    over views) and applies ``score_thr`` to the fused detections."""
    import cv2
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from em_lightning.data.transforms import normalize_em
    from em_lightning.inference.engine import ModelRunner, normalize_mode
    from em_lightning.registry import register_all_modules

    register_all_modules()
    torch.manual_seed(0)
    cfg = compose_cfg(["task=vesicles", "experiment=tiny", "model.test_time_aug=flip"])
    module = instantiate(cfg.model).eval()
    pipeline = OmegaConf.to_container(cfg.data.test_pipeline, resolve=True)
    image = cv2.imread(str(tiny_vesicles / "images" / "val" / "vesicles_000.png"),
                       cv2.IMREAD_GRAYSCALE)
    fused = _predict(module, normalize_em(image, normalize_mode(pipeline)),
                     "vesicles").pred_instances
    thr = float(fused.scores.median())
    runner = ModelRunner(module, pipeline, cfg.data.scope, score_thr=thr)
    assert not runner.mask_crops
    assert runner.detector.roi_head.test_cfg.score_thr == cfg.model.detector.test_cfg.rcnn.score_thr
    dets = runner([normalize_em(image, normalize_mode(pipeline))])[0]
    want = sorted(float(s) for s, m in zip(fused.scores, fused.masks) if s >= thr and m.any())
    assert len(want) > 3
    assert np.allclose(sorted(d.score for d in dets), want, atol=1e-5)


def test_rotated_fusion_sees_one_box_however_the_views_write_it():
    """Four views report the same rod as angle, angle + pi, w/h swapped with angle + pi/2 and
    angle - pi (mmcv's IoU of some of these pairs is 0.2 or less): one fused detection, the
    same rectangle, in le90."""
    from em_lightning.evaluation.rotated_iou import rotated_iou_matrix

    box = [40.0, 30.0, 24.0, 6.0, 1.2]
    forms = [box, [*box[:4], box[4] + math.pi], [*box[:2], box[3], box[2], box[4] + math.pi / 2],
             [*box[:4], box[4] - math.pi]]
    views = [_instances([b], [0.9 - 0.1 * k], [0]) for k, b in enumerate(forms)]
    fused = fuse_instances(views, iou_thr=0.9)
    assert len(fused) == 1 and float(fused.scores[0]) == pytest.approx(0.75)
    out = fused.bboxes[0]
    assert out[2] >= out[3] and -math.pi / 2 <= float(out[4]) < math.pi / 2
    assert torch.allclose(out[:4], torch.tensor(box[:4]), atol=1e-4)
    assert rotated_iou_matrix(out[None], [box])[0, 0] == pytest.approx(1.0, abs=1e-5)
