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


@pytest.mark.parametrize("task,fixture,extra,rpn,roi_layer", [
    ("vesicles", "tiny_vesicles", [], "RPNHead", "RoIAlign"),
    ("nanorods", "tiny_nanorods", [], "RPNHead", "RoIAlign"),
    ("nanorods", "tiny_nanorods", ["model=oriented_rcnn"], "OrientedRPNHead", "RoIAlignRotated"),
])
def test_forward_backward_step(task, fixture, extra, rpn, roi_layer, request, tmp_path):
    root = request.getfixturevalue(fixture)
    loss, grads, model = one_training_step(task, root, tmp_path, *extra)
    assert type(model.detector.rpn_head).__name__ == rpn
    assert type(model.detector.roi_head.bbox_roi_extractor.roi_layers[0]).__name__ == roi_layer
    assert torch.isfinite(torch.tensor(loss)) and loss > 0
    assert grads > 10  # gradients reach backbone, neck and heads


def test_model_of_the_other_task_is_a_clear_error():
    from em_lightning.runner import build_data_and_model

    cfg = compose_cfg(["task=vesicles", "model=oriented_rcnn", "experiment=tiny"])
    with pytest.raises(ValueError, match="mmrotate detector but task=vesicles has mmdet data"):
        build_data_and_model(cfg)


def test_default_models_build_at_full_size():
    for task, head in (("vesicles", "mask_head"), ("nanorods", "bbox_head")):
        cfg = compose_cfg([f"task={task}"])
        model = instantiate(cfg.model)
        n_params = sum(p.numel() for p in model.parameters())
        assert n_params > 30e6  # ResNet-50-FPN detectors
        assert hasattr(model.detector.roi_head, head)
