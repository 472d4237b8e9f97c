"""Pretrained weights from local files: ImageNet backbones (torchvision or mmcls naming) and
full detector checkpoints; never a download."""

from __future__ import annotations

import pytest
import torch
import torchvision
from hydra.utils import instantiate

from tests.conftest import compose_cfg


def tiny_model(*extra):
    cfg = compose_cfg(["task=vesicles", "experiment=tiny", *extra])
    return instantiate(cfg.model)


def test_torchvision_and_mmcls_backbone_checkpoints(tmp_path):
    reference = torchvision.models.resnet18(weights=None).state_dict()
    tv_path = tmp_path / "resnet18_torchvision.pth"
    torch.save(reference, tv_path)
    mmcls_path = tmp_path / "resnet18_mmcls.pth"
    torch.save({"meta": {"mmcls_version": "0.25"},
                "state_dict": {f"backbone.{k}": v for k, v in reference.items()}}, mmcls_path)
    for path in (tv_path, mmcls_path):
        model = tiny_model(f"model.backbone_checkpoint={path}")
        backbone = model.detector.backbone.state_dict()
        assert torch.equal(backbone["conv1.weight"], reference["conv1.weight"])
        assert torch.equal(backbone["layer4.1.bn2.running_var"],
                           reference["layer4.1.bn2.running_var"])


def test_full_detector_checkpoint_fine_tunes_to_other_classes(tmp_path):
    source = tiny_model()
    path = tmp_path / "mask_rcnn.pth"
    torch.save({"meta": {"CLASSES": ("a", "b", "c")}, "state_dict": source.detector.state_dict()},
               path)
    target = tiny_model(f"model.load_from={path}", "data.classes=[hole]")
    src, dst = source.detector.state_dict(), target.detector.state_dict()
    assert torch.equal(src["backbone.conv1.weight"], dst["backbone.conv1.weight"])
    assert torch.equal(src["rpn_head.rpn_cls.weight"], dst["rpn_head.rpn_cls.weight"])
    # class-specific layers have other shapes and keep their fresh initialisation
    assert dst["roi_head.bbox_head.fc_cls.weight"].shape[0] == 2  # 1 class + background


def test_missing_or_wrong_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(Exception, match="not found"):
        tiny_model(f"model.backbone_checkpoint={tmp_path / 'nope.pth'}")
    junk = tmp_path / "junk.pth"
    torch.save({"something": torch.zeros(3)}, junk)
    with pytest.raises(Exception, match="no tensor matched"):
        tiny_model(f"model.load_from={junk}")
