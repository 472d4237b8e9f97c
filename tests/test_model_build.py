"""Both detectors build from the project's configs and run a CPU forward/backward step."""

import pytest
import torch
from hydra.utils import instantiate
from mmengine.dataset import pseudo_collate

from tests.conftest import compose_cfg


def one_training_step(task: str, root, tmp_path, *extra: str) -> tuple[float, int, object]:
    cfg = compose_cfg([f"task={task}", "experiment=tiny", f"data.root={root}", *extra], tmp_path)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    model = instantiate(cfg.model)
    batch = pseudo_collate([dm.datasets["train"][0], dm.datasets["train"][1]])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001)
    loss = model.training_step(batch, 0)
    loss.backward()
    grads = sum(int(p.grad is not None and p.grad.abs().sum() > 0) for p in model.parameters())
    optimizer.step()
    return float(loss), grads, model


@pytest.mark.parametrize("task,fixture", [("vesicles", "tiny_vesicles"),
                                          ("nanorods", "tiny_nanorods")])
def test_forward_backward_step(task, fixture, request, tmp_path):
    root = request.getfixturevalue(fixture)
    loss, grads, _ = one_training_step(task, root, tmp_path)
    assert torch.isfinite(torch.tensor(loss)) and loss > 0
    assert grads > 10  # gradients reach backbone, neck and heads


def test_oriented_rcnn_pools_rotated_rois(tiny_nanorods, tmp_path):
    loss, grads, model = one_training_step("nanorods", tiny_nanorods, tmp_path,
                                           "model=oriented_rcnn")
    roi_layer = model.detector.roi_head.bbox_roi_extractor.roi_layers[0]
    assert type(model.detector.rpn_head).__name__ == "OrientedRPNHead"
    assert type(roi_layer).__name__ == "RoIAlignRotated"
    assert torch.isfinite(torch.tensor(loss)) and loss > 0
    assert grads > 10


def test_default_models_build_at_full_size():
    for task, head in (("vesicles", "mask_head"), ("nanorods", "bbox_head")):
        cfg = compose_cfg([f"task={task}"])
        model = instantiate(cfg.model)
        n_params = sum(p.numel() for p in model.parameters())
        assert n_params > 30e6  # ResNet-50-FPN detectors
        assert hasattr(model.detector.roi_head, head)
