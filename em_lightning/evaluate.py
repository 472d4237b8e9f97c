"""Evaluate a checkpoint: ``python -m em_lightning.evaluate task=... ckpt_path=...``.

Prints the per-class table, writes ``metrics.json``, COCO-format predictions
(``predictions/<split>.bbox.json`` / ``.segm.json``) and overlay PNGs to the run directory.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

from em_lightning.callbacks import PredictionOverlays
from em_lightning.cli import launch, user_errors
from em_lightning.config_checks import check_config
from em_lightning.evaluation import DetectionEvaluator
from em_lightning.evaluation.tables import compact_table, json_ready
from em_lightning.models.trained_config import load_trained_weights
from em_lightning.quiet import quiet_third_party
from em_lightning.registry import register_all_modules
from em_lightning.runner import build_data_and_model

log = logging.getLogger(__name__)
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def evaluate(cfg: DictConfig) -> dict[str, dict[str, float]]:
    check_config(cfg, "evaluate")
    register_all_modules()
    pl.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    datamodule, model = build_data_and_model(cfg, pretrained=False)
    datamodule.prepare_data()
    load_trained_weights(model, cfg)
    # the task's trainer config: `trainer=ddp` evaluates on several devices/processes, the
    # metric gathers every rank's predictions before running pycocotools
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False,
                          callbacks=[PredictionOverlays(str(out_dir / "overlays"),
                                                        cfg.score_thr)])
    loaders = {"val": datamodule.val_dataloader, "test": datamodule.test_dataloader,
               "train": datamodule.train_eval_dataloader}
    results: dict[str, dict[str, float]] = {}
    for split in cfg.splits:
        if split == "val":
            datamodule.setup("validate")
        loader = loaders[split]()
        model._evaluators[split] = DetectionEvaluator(
            model.metric_kinds, model.classes, outfile_prefix=out_dir / "predictions" / split,
            category_ids=getattr(loader.dataset, "cat_ids", None))
        model.eval_split = split
        model.log_tables = False  # the table below, with the checkpoint, instead
        trainer.validate(model, dataloaders=loader, verbose=False)
        results[split] = dict(model.last_metrics)
        if trainer.is_global_zero:
            print(f"\n== {cfg.task_name}: {split} split, checkpoint {cfg.ckpt_path}\n"
                  + compact_table(results[split], model.classes, model.metric_kinds,
                                  model.monitor, f"{split} split"))
    if trainer.is_global_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.json").write_text(json.dumps(
            {"checkpoint": str(cfg.ckpt_path), "world_size": trainer.world_size,
             "metrics": json_ready(results)}, indent=2, sort_keys=True))
        log.info("metrics and predictions written to %s", out_dir)
    return results


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
@user_errors("evaluate")
def main(cfg: DictConfig) -> None:
    quiet_third_party(cfg)
    evaluate(cfg)


if __name__ == "__main__":
    launch(main, "evaluate")
