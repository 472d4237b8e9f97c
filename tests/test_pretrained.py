"""Pretrained weights from local files: ImageNet backbones (torchvision or mmcls naming) and
full detector checkpoints (names, URLs and downloads: test_weights.py)."""

from __future__ import annotations

import hashlib
import json

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
    # no class in common: class-specific layers keep their fresh initialisation
    assert dst["roi_head.bbox_head.fc_cls.weight"].shape[0] == 2  # 1 class + background
    assert not torch.equal(dst["roi_head.bbox_head.fc_cls.weight"][-1],
                           src["roi_head.bbox_head.fc_cls.weight"][-1])  # not even background


def _class_rows(state, prefix=""):
    """The class-dependent RoI head tensors of a Mask R-CNN state dict."""
    names = ("roi_head.bbox_head.fc_cls.weight", "roi_head.bbox_head.fc_cls.bias",
             "roi_head.bbox_head.fc_reg.weight", "roi_head.mask_head.conv_logits.weight")
    return {n: state[prefix + n] for n in names}


@pytest.mark.parametrize("record", ["em_lightning", "mmengine"])
def test_class_group_model_keeps_the_heads_of_its_classes(tmp_path, record):
    """A model for a class group (or the same classes in another order) starts from the rows
    the checkpoint learnt for those classes, found by name, not from fresh heads."""
    source = tiny_model()  # big_vesicle, small_vesicle, hole
    old = _class_rows(source.detector.state_dict())
    path = tmp_path / "all_classes.ckpt"
    if record == "em_lightning":  # what em_lightning.train writes
        torch.save({"state_dict": {f"detector.{k}": v for k, v in
                                   source.detector.state_dict().items()},
                    "em_lightning_record": {"config": {"model": {"classes": source.classes}}}},
                   path)
    else:
        torch.save({"meta": {"dataset_meta": {"classes": tuple(source.classes)}},
                    "state_dict": source.detector.state_dict()}, path)

    group = tiny_model(f"model.load_from={path}", "data.classes=[hole,small_vesicle]")
    new = _class_rows(group.detector.state_dict())
    cls, reg = "roi_head.bbox_head.fc_cls.weight", "roi_head.bbox_head.fc_reg.weight"
    assert torch.equal(new[cls], old[cls][[2, 1, 3]])  # hole, small_vesicle, background
    assert torch.equal(new["roi_head.bbox_head.fc_cls.bias"],
                       old["roi_head.bbox_head.fc_cls.bias"][[2, 1, 3]])
    assert torch.equal(new[reg], torch.cat([old[reg][8:12], old[reg][4:8]]))
    logits = "roi_head.mask_head.conv_logits.weight"
    assert torch.equal(new[logits], old[logits][[2, 1]])

    # same count, other order: still mapped by name, not loaded by position
    reordered = tiny_model(f"model.load_from={path}",
                           "data.classes=[hole,big_vesicle,small_vesicle]")
    assert torch.equal(_class_rows(reordered.detector.state_dict())[logits], old[logits][[2, 0, 1]])


def test_missing_or_wrong_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(Exception, match="not found"):
        tiny_model(f"model.backbone_checkpoint={tmp_path / 'nope.pth'}")
    junk = tmp_path / "junk.pth"
    torch.save({"something": torch.zeros(3)}, junk)
    with pytest.raises(Exception, match="no tensor matched"):
        tiny_model(f"model.load_from={junk}")
    for name, content in (("text.ckpt", b"not a checkpoint"), ("empty.ckpt", b"")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(Exception, match=f"{name}: not a readable checkpoint"):
            tiny_model(f"model.load_from={tmp_path / name}")


def test_run_record_and_metrics_state_what_was_loaded(tiny_vesicles, tmp_path):
    from em_lightning.train import train

    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    cfg = compose_cfg(["task=vesicles", "experiment=tiny", "debug=fdr", "logger=csv",
                       f"data.root={tiny_vesicles}", f"model.backbone_checkpoint={path}"],
                      tmp_path)
    train(cfg)
    run = tmp_path / "run"
    expected = {"spec": str(path), "loaded": "file", "preset": None, "url": None,
                "path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "hash_check": "local file"}
    for saved in (json.loads((run / "metrics.json").read_text()),
                  json.loads((run / "run_record.json").read_text())):
        assert saved["pretrained"] == {"backbone_checkpoint": expected,
                                       "load_from": {"spec": "null", "loaded": "from scratch"}}
