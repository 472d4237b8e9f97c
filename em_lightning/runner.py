"""Build the objects a config describes (data, model, callbacks, loggers, trainer)."""

from __future__ import annotations

import logging
import math
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from em_lightning.errors import ConfigError
from em_lightning.resume import continues_in_place, wandb_run_id

log = logging.getLogger(__name__)


def resolved(cfg: DictConfig) -> dict:
    """The run's config as plain data, interpolations resolved (Hydra's own node left out)."""
    return {key: OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node)
            else node for key, node in cfg.items() if key != "hydra"}


def build_data_and_model(cfg: DictConfig, pretrained: bool = True,
                         ) -> tuple[pl.LightningDataModule, pl.LightningModule]:
    """The datamodule and the model of ``cfg``. Both must use one OpenMMLab library (mmdet for
    vesicles, mmrotate for nanorods): a model picked for the other task otherwise fails only in
    the first step, in a bare assertion deep inside mmrotate."""
    model_scope, data_scope = cfg.model.get("scope", "mmdet"), cfg.data.get("scope", "mmdet")
    if model_scope != data_scope:
        raise ConfigError(
            "model", f"the model is an {model_scope} detector but task={cfg.get('task_name')} has "
            f"{data_scope} data: choose the model after the task (e.g. task=nanorods "
            f"model=oriented_rcnn)")
    # pretrained=False: trained weights are loaded next, no pretrained ones to fetch first
    no_pretrained = {} if pretrained else {"backbone_checkpoint": None, "load_from": None}
    return instantiate(cfg.data), instantiate(cfg.model, **no_pretrained)


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
    """The run's loggers; a W&B run gets the resolved config as its run config, and a training
    resumed in its own run directory continues that directory's W&B run (same id)."""
    out = []
    for node in (cfg.get("logger") or {}).values():
        if not node:
            continue
        if str(node.get("_target_", "")).endswith("WandbLogger"):
            # the config is passed as plain data: not a keyword of instantiate (its own first
            # parameter) and not to be instantiated recursively (it holds `_target_` nodes)
            params = OmegaConf.to_container(node, resolve=True)
            params.pop("config", None)
            out.append(instantiate(params, _partial_=True)(**wandb_kwargs(cfg, node)))
        else:
            out.append(instantiate(node))
    return out


def wandb_kwargs(cfg: DictConfig, node: DictConfig) -> dict[str, Any]:
    """``config``: the whole resolved config, with what the node sets already (a sweep trial's
    sampled values) on top; ``id``/``resume``: those of the run being resumed in place."""
    config = resolved(cfg)
    own = node.get("config")
    if own:
        config = OmegaConf.to_container(OmegaConf.merge(config, own), resolve=True)
    wandb_node = (config.get("logger") or {}).get("wandb")
    if isinstance(wandb_node, dict):
        wandb_node.pop("config", None)  # the sampled values are in the config already
    kwargs: dict[str, Any] = {"config": config}
    output_dir = cfg.paths.output_dir
    if continues_in_place(cfg.get("ckpt_path"), cfg.get("train", True), output_dir):
        run_id = wandb_run_id(output_dir)
        if run_id:
            log.info("continuing W&B run %s in %s", run_id, output_dir)
            kwargs.update(id=run_id, resume="allow")
    return kwargs


def build_trainer(cfg: DictConfig) -> pl.Trainer:
    """The Trainer with the run's callbacks and loggers. Without any logger (``logger=none``)
    the learning-rate monitor is left out: it has nothing to log to and Lightning refuses it."""
    loggers = build_loggers(cfg)
    callbacks = [c for c in build_callbacks(cfg)
                 if loggers or not isinstance(c, pl.callbacks.LearningRateMonitor)]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


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
