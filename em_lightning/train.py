"""Train a detector: ``python -m em_lightning.train task=vesicles|nanorods [overrides]``.

Without ``data.root`` pointing at a dataset, the task's demo dataset is generated first.
Outputs (checkpoints, metrics.json, overlays, W&B offline run, CSV log, run record) go to
``outputs/<task>/runs/<time>/``. Returns the optimized metric to Hydra sweepers.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig

from em_lightning.cli import launch, user_errors
from em_lightning.config_checks import check_config
from em_lightning.errors import UserError
from em_lightning.evaluation.tables import json_ready
from em_lightning.quiet import quiet_third_party
from em_lightning.registry import register_all_modules
from em_lightning.runner import as_float, build_data_and_model, build_trainer, finish_loggers

log = logging.getLogger(__name__)
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def evaluate_split(trainer: pl.Trainer, model: pl.LightningModule, loader: object,
                   split: str, ckpt_path: str | None) -> dict[str, float]:
    """Validate ``model`` on ``loader`` logging under ``<split>/``; returns the metrics."""
    model.eval_split = split
    try:
        trainer.validate(model, dataloaders=loader, ckpt_path=ckpt_path, verbose=False)
    finally:
        model.eval_split = "val"
    return {f"{split}/{k}": v for k, v in model.last_metrics.items()}


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, then evaluate the best checkpoint on val and (optionally) train; write metrics.json."""
    check_config(cfg, "train")
    register_all_modules()
    pl.seed_everything(cfg.seed, workers=True)
    datamodule, model = build_data_and_model(cfg)
    trainer = build_trainer(cfg)
    out_dir = Path(cfg.paths.output_dir)
    try:
        if cfg.train:
            trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
            best = trainer.checkpoint_callback.best_model_path if \
                trainer.checkpoint_callback else ""
            ckpt = best or None
        else:
            ckpt = cfg.get("ckpt_path")
            datamodule.prepare_data()
        datamodule.setup("validate")
        metrics = evaluate_split(trainer, model, datamodule.val_dataloader(), "val", ckpt)
        if cfg.get("eval_train"):
            metrics.update(evaluate_split(trainer, model, datamodule.train_eval_dataloader(),
                                          "train", ckpt))
        metrics["nonfinite_steps"] = float(model.nonfinite_steps)
        if trainer.is_global_zero:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "metrics.json").write_text(json.dumps(
                {"metrics": json_ready(metrics), "checkpoint": ckpt,
                 "pretrained": getattr(model, "pretrained", None)}, indent=2, sort_keys=True))
            log.info("metrics of %s -> %s", ckpt or "the last weights", out_dir / "metrics.json")
            log.debug("metrics (checkpoint %s):\n%s", ckpt or "last weights",
                      "\n".join(f"  {k:40s} {v:.4f}" for k, v in sorted(metrics.items())))
    finally:
        finish_loggers(trainer)
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
@user_errors("train")
def main(cfg: DictConfig) -> float:
    """Train once; return the optimized metric (NaN if missing) to Hydra sweepers.

    As a trial of a multirun sweep, the W&B run joins the sweep's group with the sampled values
    as its config, and a crash or a missing/NaN metric raises: the Optuna sweeper records that
    as a failed trial and goes on (a returned NaN would end the whole sweep in optuna 2.10).
    """
    quiet_third_party(cfg)
    from em_lightning.sweeps.trial import in_multirun, prepare_trial, trial_value

    if not in_multirun():
        return as_float(train(cfg).get(cfg.optimized_metric))
    prepare_trial(cfg)
    try:
        metrics = train(cfg)
    except UserError:  # its message is the whole story: logged once by user_errors
        raise
    except Exception:
        log.exception("trial failed; the sweep records it and goes on")
        raise
    return trial_value(metrics, cfg.optimized_metric)


if __name__ == "__main__":
    launch(main, "train")
