"""Loading a run's checkpoint for predict/evaluate: the training config it records turns a
model mismatch into the overrides to pass, and a changed input scale into a warning."""

from __future__ import annotations

import logging

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from em_lightning.errors import CheckpointError
from em_lightning.models.trained_config import as_override, load_trained_weights
from tests.conftest import compose_cfg

TRAINED = ["task=vesicles", "experiment=tiny", "data.image_size=192"]


@pytest.fixture(scope="module")
def recorded_ckpt(tmp_path_factory):
    """A tiny Mask R-CNN saved with its training config, as em_lightning.train saves it."""
    cfg = compose_cfg(TRAINED)
    module = instantiate(cfg.model)
    path = tmp_path_factory.mktemp("run") / "checkpoints" / "best.ckpt"
    path.parent.mkdir()
    torch.save({"state_dict": module.state_dict(),
                "em_lightning_record": {"config": {
                    "task_name": cfg.task_name,
                    "model": OmegaConf.to_container(cfg.model, resolve=True),
                    "data": OmegaConf.to_container(cfg.data, resolve=True)}}}, path)
    (path.parent.parent / ".hydra").mkdir()
    (path.parent.parent / ".hydra" / "overrides.yaml").write_text("- experiment=tiny\n")
    return path, module


def _load(path, overrides):
    cfg = compose_cfg([*overrides, f"+ckpt_path={path}"])
    module = instantiate(cfg.model)
    load_trained_weights(module, cfg)
    return module


def test_other_model_overrides_name_what_the_checkpoint_was_trained_with(recorded_ckpt):
    path, _ = recorded_ckpt
    with pytest.raises(CheckpointError, match="does not fit") as err:
        _load(path, ["task=vesicles", "experiment=tiny", "model.detector.neck.out_channels=32"])
    message = str(err.value)
    assert "trained with task=vesicles" in message
    assert "model.detector.neck.out_channels=64" in message
    assert "data.image_size=192" in message
    assert "overrides.yaml" in message


def test_same_model_at_another_scale_loads_with_a_warning(recorded_ckpt, caplog):
    path, trained = recorded_ckpt
    with caplog.at_level(logging.WARNING):
        module = _load(path, ["task=vesicles", "experiment=tiny"])  # image_size 128
    assert torch.equal(module.state_dict()["detector.backbone.conv1.weight"],
                       trained.state_dict()["detector.backbone.conv1.weight"])
    assert "trained with data.image_size=192 but runs with data.image_size=128" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _load(path, TRAINED)
    assert "trained with" not in caplog.text


def test_checkpoint_without_record_keeps_the_generic_hint(tmp_path):
    cfg = compose_cfg(["task=vesicles", "experiment=tiny"])
    path = tmp_path / "bare.ckpt"
    torch.save({"state_dict": instantiate(cfg.model).state_dict()}, path)
    with pytest.raises(CheckpointError, match="pass the task/experiment/model overrides"):
        _load(path, ["task=vesicles", "experiment=tiny", "model.detector.neck.out_channels=32"])


def test_overrides_are_written_in_hydra_syntax():
    assert as_override("data.classes", ["small_vesicle", "hole"]) == \
        "data.classes=[small_vesicle,hole]"
    assert as_override("model.detector.neck.in_channels", [64, 128]) == \
        "model.detector.neck.in_channels=[64,128]"
    assert as_override("data.image_size", None) == "data.image_size=null"
    assert as_override("model.detector.backbone.norm_eval", False) == \
        "model.detector.backbone.norm_eval=false"
