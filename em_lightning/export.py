"""Write a trained checkpoint as one self-describing model file:
``python -m em_lightning.export ckpt_path=.../last.ckpt output=model.pt``.

A Lightning checkpoint carries the optimizer and loop state (about twice the weights) and lives
in a run directory; the exported file holds the weights and the run record (training config
and overrides, classes, input normalisation, training image size, provenance), so
``python -m em_lightning.predict ckpt_path=model.pt input=...`` runs on another machine with
nothing else. The weights are checked to fit the model the record describes before writing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from em_lightning.cli import launch, user_errors
from em_lightning.config_checks import check_config
from em_lightning.errors import CheckpointError, ConfigError
from em_lightning.inference.engine import normalize_mode
from em_lightning.models.builder import read_checkpoint, state_dict_of
from em_lightning.models.trained_config import load_trained_weights
from em_lightning.quiet import quiet_third_party
from em_lightning.registry import register_all_modules

log = logging.getLogger(__name__)
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")
EXPORT_FORMAT = 1


def model_description(config: dict) -> dict[str, Any]:
    """What a user of the file needs to know about its input, from the training config."""
    data = config.get("data") or {}
    return {"task": config.get("task_name"), "classes": data.get("classes"),
            "normalisation": normalize_mode(data.get("test_pipeline") or []),
            "image_size": data.get("image_size"), "crop_size": data.get("crop_size"),
            # training images are read in px; a pixel size is recorded only if the config had one
            "pixel_size_nm": config.get("pixel_size_nm")}


def export(cfg: DictConfig) -> Path:
    """Write ``cfg.output`` from ``cfg.ckpt_path``; returns the written path."""
    check_config(cfg, "export")
    source = Path(str(cfg.ckpt_path)).expanduser()
    out = Path(str(cfg.output)).expanduser()
    if out.resolve() == source.resolve():
        raise ConfigError("output", f"{out} is the checkpoint itself: name a new file")
    ckpt = read_checkpoint(source)
    record = ckpt.get("em_lightning_record") if isinstance(ckpt, dict) else None
    if not (record or {}).get("config"):
        raise CheckpointError(f"{source} records no training config: export takes a "
                              "checkpoint written by em_lightning.train")
    register_all_modules()
    module = instantiate(cfg.model, backbone_checkpoint=None, load_from=None)
    load_trained_weights(module, cfg)  # the weights fit the model the record describes
    record = {**record, "export": {"format": EXPORT_FORMAT, "source": str(source),
                                   **model_description(record["config"])}}
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".part")  # an interrupted write leaves no `out`
    torch.save({"state_dict": state_dict_of(ckpt, source), "em_lightning_record": record},
               partial)
    os.replace(partial, out)
    log.info("model %s (%s, classes %s) written to %s (%.1f MB, from %.1f MB)",
             record["export"]["task"], cfg.ckpt_path, record["export"]["classes"], out,
             out.stat().st_size / 1e6, source.stat().st_size / 1e6)
    return out


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
@user_errors("export")
def main(cfg: DictConfig) -> None:
    quiet_third_party(cfg)
    export(cfg)


if __name__ == "__main__":
    launch(main, "export")
