"""Apply a trained model to new images and measure the microstructure.

``python -m em_lightning.predict task=vesicles ckpt_path=.../last.ckpt input=DIR_OR_GLOB``

Reads PNG/JPEG/TIFF and microscope formats with their pixel size, detects objects (large
images in overlapping tiles, merged across seams; see :mod:`em_lightning.inference.merge`),
and writes to the run dir (or ``output=``): ``objects.csv``/``.parquet``, per-image and
per-dataset summaries, ``images.csv``, ``coco_results.json`` + ``coco_images.json``,
``overlays/*.png``, ``plots/*.png``, ``summary.json`` (with the skipped files) and a
self-contained ``report.html``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from em_lightning.analysis.summary import headline_table
from em_lightning.cli import launch, user_errors
from em_lightning.config_checks import check_config
from em_lightning.data.errors import DataError
from em_lightning.data.layout import check_output_outside
from em_lightning.inference.engine import ModelRunner, TiledPredictor, normalize_mode
from em_lightning.inference.exports import EXPORT_DIR, check_export, export_annotations
from em_lightning.inference.inputs import image_name, list_inputs, read_images
from em_lightning.inference.outputs import (
    concat_objects,
    thumbnail,
    write_config,
    write_figures,
    write_report,
    write_tables,
)
from em_lightning.inference.results import (
    ImageInfo,
    coco_entries,
    coco_images,
    draw_overlay,
    measure,
)
from em_lightning.models.trained_config import load_trained_weights
from em_lightning.quiet import quiet_third_party
from em_lightning.registry import register_all_modules

log = logging.getLogger(__name__)
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")
MAX_REPORT_ROWS = 200  # longer per-image tables stay in the CSV only


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_model(cfg: DictConfig) -> torch.nn.Module:
    """The training config's model with the checkpoint's weights (clear error on mismatch)."""
    module = instantiate(cfg.model)
    load_trained_weights(module, cfg)
    return module


def _overlay_name(name: str) -> str:
    return name.replace("/", "__").rsplit(".", 1)[0] + ".png"


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Run prediction as configured; returns the content of ``summary.json``."""
    check_config(cfg, "predict")
    check_export(cfg.get("export"), cfg.data.scope == "mmrotate")
    register_all_modules()
    out_dir = Path(cfg.output or cfg.paths.output_dir)
    files, root = list_inputs(str(cfg.input))
    check_output_outside(out_dir, root, "output")
    classes = list(cfg.data.classes)
    pipeline = OmegaConf.to_container(cfg.data.test_pipeline, resolve=True)
    device = pick_device(str(cfg.device))
    runner = ModelRunner(load_model(cfg), pipeline, cfg.data.scope, float(cfg.scale),
                         float(cfg.score_thr), device)
    predictor = TiledPredictor(runner, cfg.tile.size, int(cfg.tile.overlap),
                               int(cfg.batch_size), int(cfg.tile.margin),
                               float(cfg.tile.merge_iou))
    log.info("predicting %d files from %s on %s -> %s", len(files), cfg.input, device, out_dir)
    start = time.perf_counter()  # image loop only: reading, model, merging, measuring, overlays

    skipped: list[dict] = []
    images: list[ImageInfo] = []
    parts, coco, overlays = [], [], []
    bar = tqdm(total=len(files), desc="images", unit="img")
    stream = read_images(files, cfg.pixel_size_nm, normalize_mode(pipeline), skipped,
                         lambda: bar.update())
    for (image, gray), dets in predictor.run((item, item[1]) for item in stream):
        height, width = image.shape
        info = ImageInfo(len(images) + 1, image_name(image.path, root), str(image.path),
                         height, width, image.pixel_size_nm, image.pixel_size_source)
        images.append(info)
        parts.append(measure(dets, info, classes, image.data))
        coco += coco_entries(dets, info, first_id=len(coco) + 1)
        if cfg.overlays:
            overlays.append(draw_overlay(gray, dets, classes,
                                         out_dir / "overlays" / _overlay_name(info.name)))
        bar.update()
    bar.close()
    seconds = time.perf_counter() - start

    summary = {
        "input": str(cfg.input), "checkpoint": str(cfg.ckpt_path), "task": cfg.task_name,
        "classes": classes, "score_thr": float(cfg.score_thr), "scale": float(cfg.scale),
        "tile": OmegaConf.to_container(cfg.tile), "device": str(device),
        "n_files": len(files), "n_images": len(images), "n_skipped": len(skipped),
        "skipped": skipped, "n_objects": len(coco),
        "objects_per_class": {c: sum(1 for e in coco if e["category_id"] == k + 1)
                              for k, c in enumerate(classes)},
        "seconds": round(seconds, 2),
        "seconds_per_image": round(seconds / len(images), 3) if images else None,
    }
    if runner.warned_full:
        summary["problems"] = [runner.cap_problem()]
    write_outputs(out_dir, cfg, summary, parts, images, coco, overlays)
    if not images:
        raise DataError(cfg.input, f"none of the {len(files)} files could be read; see "
                                   f"{out_dir / 'summary.json'}")
    return summary


def write_outputs(out_dir: Path, cfg: DictConfig, summary: dict, parts: list, images: list,
                  coco: list, overlays: list[Path]) -> None:
    """Tables, COCO files, figures, summary.json and the report."""
    classes = summary["classes"]
    objects = concat_objects(parts, cfg.pixel_size_nm)
    problems: list[str] = list(summary.get("problems", []))
    exclude_border = bool(cfg.get("exclude_border", True))
    tables = write_tables(out_dir, objects, images, classes, problems,
                          exclude_border=exclude_border, seed=int(cfg.get("seed") or 0))
    summary["problems"] = problems
    (out_dir / "coco_results.json").write_text(json.dumps(coco))
    (out_dir / "coco_images.json").write_text(json.dumps(coco_images(images, classes),
                                                         indent=1))
    exported = export_annotations(out_dir / EXPORT_DIR, cfg.get("export"), images, coco, classes,
                                  cfg.data.scope == "mmrotate", str(cfg.get("export_split",
                                  "train")), summary["task"])
    figures = write_figures(out_dir / "plots", objects, exclude_border=exclude_border)
    thumbs = [thumbnail(p, out_dir / "plots" / "overlay_thumbnails" / p.name)
              for p in overlays[: int(cfg.report_overlays or 0)]]
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    write_config(out_dir, cfg)
    skipped = summary["skipped"]
    report_tables = {"summary with 95 % intervals": headline_table(tables["dataset"]),
                     "per-dataset summary": tables["dataset"],
                     "images": tables["images"].drop(columns=["path"])}
    if len(tables["per_image"]) <= MAX_REPORT_ROWS:
        report_tables["per-image summary"] = tables["per_image"]
    if skipped:
        report_tables["skipped files"] = pd.DataFrame(skipped, columns=["file", "reason"])
    notes = [
        f"input {summary['input']}: {summary['n_files']} files, {summary['n_images']} "
        f"processed, {summary['n_skipped']} skipped (unreadable; listed below and in "
        "summary.json)",
        f"checkpoint {summary['checkpoint']} (task {summary['task']}), score >= "
        f"{summary['score_thr']}, scale {summary['scale']}",
        (f"images larger than {cfg.tile.size} px were cut into tiles overlapping by "
         f"{cfg.tile.overlap} px; seam objects are taken whole from a tile that sees them "
         "entirely (preferably the one owning their centre), duplicates across tiles dropped"
         if cfg.tile.size else "no tiling (tile.size=null): every image in one pass"),
        f"{summary['n_objects']} objects in {summary['seconds']} s "
        f"({summary['seconds_per_image']} s/image on {summary['device']})",
        "mean_intensity is in the image's original units (counts); per-image counts and "
        "size statistics per class are in summary_per_image.csv",
        tables["border_note"],
        *problems,
    ]
    files = [out_dir / n for n in ("objects.csv", "objects.parquet", "summary_per_image.csv",
                                   "summary_dataset.csv", "images.csv", "coco_results.json",
                                   "coco_images.json", "summary.json", "config.yaml")]
    write_report(out_dir, f"{summary['task']}: predicted microstructure", report_tables,
                 figures + thumbs, notes, images, files + exported + figures + overlays)
    log.info("%d images, %d objects, %d skipped -> %s", len(images), len(coco), len(skipped),
             out_dir / "report.html")
    for item in skipped:
        log.warning("skipped: %s", item["reason"])


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
@user_errors("predict")
def main(cfg: DictConfig) -> None:
    quiet_third_party(cfg)
    predict(cfg)


if __name__ == "__main__":
    launch(main, "predict")
