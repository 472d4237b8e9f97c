"""Shared fixtures: composed Hydra configs and tiny demo datasets (generated once per session)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# tests never download weights (`backbone_checkpoint: auto` trains from scratch, one warning)
os.environ.setdefault("EM_LIGHTNING_OFFLINE", "1")


def compose_cfg(overrides: list[str], tmp_path: Path | None = None, config: str = "train",
                output_dir: Path | None = None) -> DictConfig:
    """The config as ``python -m em_lightning.<config> <overrides>`` would see it.

    The run's output directory is ``output_dir``, else ``tmp_path/run`` (else Hydra's default).
    """
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config, overrides=overrides, return_hydra_config=True)
    if output_dir is None and tmp_path is not None:
        output_dir = tmp_path / "run"
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
            cfg.hydra.runtime.output_dir = str(output_dir)
    return cfg


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def tiny_vesicles(data_dir: Path) -> Path:
    from em_lightning.data.demo_vesicles import generate_vesicles_dataset

    return generate_vesicles_dataset(data_dir / "vesicles", n_train=4, n_val=2, image_size=128,
                                     n_big=4, n_small=12, n_holes=4, seed=1)


@pytest.fixture(scope="session")
def tiny_nanorods(data_dir: Path) -> Path:
    from em_lightning.data.demo_nanorods import generate_nanorods_dataset

    return generate_nanorods_dataset(data_dir / "nanorods", n_train=4, n_val=2, image_size=128,
                                     rods_per_image=10, seed=1)
