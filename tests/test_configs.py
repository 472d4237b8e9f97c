"""Every config in conf/ composes, and each task selects its data, model and metric."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import CONF_DIR, compose_cfg

GROUPS = ["task", "data", "model", "trainer", "logger", "callbacks", "experiment", "debug",
          "hparams_search"]


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize("task", ["vesicles", "nanorods"])
def test_task_selects_data_model_and_metric(task):
    cfg = compose_cfg([f"task={task}"])
    OmegaConf.resolve(cfg.hydra.runtime) if "runtime" in cfg.hydra else None
    expected = {"vesicles": ("EMCocoDataset", "mmdet.MaskRCNN", "segm_mAP"),
                "nanorods": ("EMRotatedDataset", "mmdet.FasterRCNN", "rbox_mAP")}[task]
    assert (cfg.data.dataset.type, cfg.model.detector.type, cfg.task.monitor) == expected
    assert cfg.optimized_metric == f"val/{expected[2]}"
    assert list(cfg.model.classes) == list(cfg.data.classes)


@pytest.mark.parametrize("group", [g for g in GROUPS if g not in ("task",)])
def test_every_option_composes(group):
    options = group_options(group)
    assert options or group == "hparams_search"
    for option in options:
        extra = ["hydra/sweeper=optuna"] if group == "hparams_search" else []
        for task in ("vesicles", "nanorods"):
            cfg = compose_cfg([f"task={task}", f"{group}={option}", *extra])
            # resolve everything but hydra's runtime-only interpolations
            container = OmegaConf.to_container(cfg.data, resolve=True)
            assert container["classes"]
            OmegaConf.to_container(cfg.model, resolve=True)


def test_nanorod_formats_switch_paths():
    for fmt, ann in [("coco", "annotations/{split}.json"), ("dota", "dota/{split}"),
                     ("kitti", "kitti/{split}")]:
        cfg = compose_cfg(["task=nanorods", f"data.format={fmt}"])
        assert cfg.data.dataset.ann_file == ann
        assert cfg.data.dataset.ann_format == fmt


def test_class_group_is_a_one_line_override():
    cfg = compose_cfg(["task=vesicles", "data.classes=[big_vesicle]"])
    assert list(cfg.model.classes) == ["big_vesicle"]


def test_a_run_without_loggers_trains(tiny_vesicles, tmp_path):
    """logger=none: the learning-rate monitor (which Lightning refuses without a logger) is
    left out and a fast dev run finishes."""
    from em_lightning.train import train

    cfg = compose_cfg(["task=vesicles", "experiment=tiny", "logger=none", "debug=fdr",
                       f"data.root={tiny_vesicles}", "eval_train=false"], tmp_path)
    metrics = train(cfg)
    assert "val/segm_mAP" in metrics
