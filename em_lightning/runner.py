"""Build the objects a config describes (data, model, callbacks, loggers, trainer)."""

from __future__ import annotations

import logging
import math
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def resolved(cfg: DictConfig) -> dict:
    """The run's config as plain data, interpolations resolved (Hydra's own node left out)."""
    return {key: OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node)
            else node for key, node in cfg.items() if key != "hydra"}


def build_data_and_model(cfg: DictConfig) -> tuple[pl.LightningDataModule, pl.LightningModule]:
    """The datamodule and the model of ``cfg``. Both must use one OpenMMLab library (mmdet for
    vesicles, mmrotate for nanorods): a model picked for the other task otherwise fails only in
    the first step, in a bare assertion deep inside mmrotate."""
    model_scope, data_scope = cfg.model.get("scope", "mmdet"), cfg.data.get("scope", "mmdet")
    if model_scope != data_scope:
        raise ValueError(
            f"the model is an {model_scope} detector but task={cfg.get('task_name')} has "
            f"{data_scope} data: choose the model after the task (e.g. task=nanorods "
            f"model=oriented_rcnn)")
    return instantiate(cfg.data), instantiate(cfg.model)


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    out = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None:
            continue
        # the run record gets the whole config as data: not recursively instantiated
        kwargs = {"run_config": resolved(cfg), "_recursive_": False} \
            if name == "run_record" else {}
        out.append(instantiate(node, **kwargs))
    return out


def build_loggers(cfg: DictConfig) -> list[Any]:
    return [instantiate(node) for node in (cfg.get("logger") or {}).values() if node]


def build_trainer(cfg: DictConfig) -> pl.Trainer:
    return instantiate(cfg.trainer, callbacks=build_callbacks(cfg), logger=build_loggers(cfg)
                       or False)


def finish_loggers(trainer: pl.Trainer) -> None:
    """Close W&B runs so each job of a multirun sweep is its own run."""
    for logger in trainer.loggers:
        experiment = getattr(logger, "_experiment", None)
        if experiment is not None and hasattr(experiment, "finish"):
            experiment.finish()


def as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
