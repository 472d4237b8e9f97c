"""Apply a trained model to new images and measure the microstructure.

``python -m em_lightning.predict task=vesicles ckpt_path=.../last.ckpt input=DIR_OR_GLOB``

Reads PNG/JPEG/TIFF and microscope formats with their pixel size, detects objects (large
images in overlapping tiles, merged across seams; see :mod:`em_lightning.inference.merge`),
and writes to the run dir (or ``output=``): ``objects.csv``/``.parquet``, per-image and
per-dataset summaries, ``images.csv``, ``coco_results.json`` + ``coco_images.json``,
``overlays/*.png``, ``plots/*.png``, ``summary.json`` (with the skipped files) and a
self-contained ``report.html``.

Each image's results are written as it finishes (``parts/``, ``manifest/``; see
:mod:`em_lightning.inference.parts`), and the tables are built from them at the end: the same
command on the same ``output=`` continues an interrupted run, ``report_only=true`` rebuilds the
tables alone, and ``shard=i/K`` splits the images over K jobs writing into one folder.
``trainer=ddp trainer.devices=N`` predicts on N GPUs (or CPU processes) through Lightning
(:mod:`em_lightning.inference.distributed`); rank 0 builds the tables.
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
from em_lightning.inference.distributed import distributed_trainer, predict_on_ranks
from em_lightning.inference.engine import ModelRunner, TiledPredictor, normalize_mode
from em_lightning.inference.exports import EXPORT_DIR, check_export, export_annotations
from em_lightning.inference.inputs import image_name, list_inputs, read_images
from em_lightning.inference.manifest import file_fingerprint, prediction_settings
from em_lightning.inference.outputs import (
    concat_objects,
    thumbnail,
    write_config,
    write_figures,
    write_report,
    write_tables,
)
from em_lightning.inference.parts import Collected, ResultStore
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
    # no pretrained weights to fetch: the checkpoint's replace them
    module = instantiate(cfg.model, backbone_checkpoint=None, load_from=None)
    load_trained_weights(module, cfg)
    return module


def _overlay_name(name: str) -> str:
    return name.replace("/", "__").rsplit(".", 1)[0] + ".png"


def parse_shard(spec: Any) -> tuple[int, int]:
    """``"i/K"`` -> (i, K); null -> (0, 1). Image j (inputs sorted) belongs to shard j % K."""
    if spec is None:
        return 0, 1
    index, count = (int(v) for v in str(spec).split("/"))
    return index, count


def _fingerprint(path: Path) -> dict | None:
    try:
        return file_fingerprint(path)
    except OSError:  # unreadable: the reader reports why, the record holds no fingerprint
        return None


def run_images(cfg: DictConfig, store: ResultStore, files: list[Path], names: list[str],
               fingerprints: dict[str, dict | None], model: torch.nn.Module | None = None,
               device: torch.device | None = None, rank: tuple[int, int] = (0, 1)) -> int:
    """Predict every file of ``files`` without a current result, writing each image's parts
    and record as it finishes (nothing is kept per image); returns the number predicted.

    ``model``/``device``: given by the distributed path (each rank's own); by default the
    checkpoint's model on ``device=``. ``rank``: (rank, world size), for the progress bar.
    """
    for path, name in zip(files, names):
        if name not in fingerprints:
            fingerprints[name] = _fingerprint(path)
    todo = [(f, n) for f, n in zip(files, names) if not store.is_done(n, fingerprints[n])]
    done = len(files) - len(todo)
    if done:
        log.info("%s: %d of %d images already done with these settings; %d to do",
                 store.out_dir, done, len(files), len(todo))
    desc = "images" if rank[1] == 1 else f"images (rank {rank[0]} of {rank[1]})"
    bar = tqdm(total=len(files), initial=done, desc=desc, unit="img")
    if not todo:
        bar.close()
        return 0
    classes = list(cfg.data.classes)
    pipeline = OmegaConf.to_container(cfg.data.test_pipeline, resolve=True)
    device = device or pick_device(str(cfg.device))
    runner = ModelRunner(model or load_model(cfg), pipeline, cfg.data.scope, float(cfg.scale),
                         float(cfg.score_thr), device)
    predictor = TiledPredictor(runner, cfg.tile.size, int(cfg.tile.overlap),
                               int(cfg.batch_size), int(cfg.tile.margin),
                               float(cfg.tile.merge_iou))
    log.info("predicting %d files from %s on %s -> %s", len(todo), cfg.input, device,
             store.out_dir)
    name_of = {str(f): n for f, n in todo}
    order = {str(f): k for k, f in enumerate(files)}
    skipped: list[dict] = []

    def failed() -> None:
        item = skipped[-1]
        name = name_of[item["file"]]
        store.write_failed(name, item["file"], item["reason"], fingerprints[name])
        bar.update()

    stream = read_images([f for f, _ in todo], cfg.pixel_size_nm, normalize_mode(pipeline),
                         skipped, failed)
    count, last = 0, time.perf_counter()
    for (image, gray), dets in predictor.run((item, item[1]) for item in stream):
        name = name_of[str(image.path)]
        height, width = image.shape
        # provisional id (position in the input): the final ids are given when tables are built
        info = ImageInfo(order[str(image.path)] + 1, name, str(image.path), height, width,
                         image.pixel_size_nm, image.pixel_size_source)
        if cfg.overlays:
            draw_overlay(gray, dets, classes, store.out_dir / "overlays" / _overlay_name(name))
        objects, coco = measure(dets, info, classes, image.data), coco_entries(dets, info)
        now = time.perf_counter()  # since the previous image: reading, model, measuring
        store.write_done(info, objects, coco, fingerprints[name],
                         seconds=round(now - last, 4), device=str(device),
                         problems=[runner.cap_problem()] if runner.warned_full else [])
        last = now
        count += 1
        bar.update()
    bar.close()
    return count


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Run prediction as configured; returns the content of ``summary.json``.

    Finished images of an earlier run into the same ``output=`` (same files, same settings)
    are kept; ``report_only=true`` only builds the tables from what is there; with
    ``shard=i/K`` this run predicts its share and leaves the tables to ``report_only``.
    """
    check_config(cfg, "predict")
    check_export(cfg.get("export"), cfg.data.scope == "mmrotate")
    register_all_modules()
    out_dir = Path(cfg.output or cfg.paths.output_dir)
    files, root = list_inputs(str(cfg.input))
    check_output_outside(out_dir, root, "output")
    names = [image_name(f, root) for f in files]
    store = ResultStore(out_dir)
    store.claim(prediction_settings(cfg))
    report_only = bool(cfg.get("report_only", False))
    index, count = parse_shard(cfg.get("shard"))
    fingerprints: dict[str, dict | None] = {}
    if not report_only:
        mine = [k for k in range(len(files)) if k % count == index]
        trainer = distributed_trainer(cfg.trainer, out_dir)
        if trainer is None:
            n_new = run_images(cfg, store, [files[k] for k in mine], [names[k] for k in mine],
                               fingerprints)
        else:
            def share(model: torch.nn.Module, device: torch.device, rank: int, world: int
                      ) -> int:
                ks = mine[rank::world]
                return run_images(cfg, store, [files[k] for k in ks], [names[k] for k in ks],
                                  fingerprints, model, device, (rank, world))

            log.info("predicting on %d processes (%s)", trainer.world_size,
                     type(trainer.strategy).__name__)
            is_zero, n_new = predict_on_ranks(trainer, load_model(cfg), share)
            if not is_zero:  # rank 0 builds the tables from every rank's parts
                return {"rank": trainer.global_rank, "n_predicted": n_new}
        if count > 1:
            for k in mine:
                if names[k] not in fingerprints:  # the other ranks' share
                    fingerprints[names[k]] = _fingerprint(files[k])
            done = sum(store.is_done(names[k], fingerprints[names[k]]) for k in mine)
            log.info("shard %d/%d: %d of its %d images done (%d in this run); when every "
                     "shard is done, build the tables with the same command and "
                     "report_only=true", index, count, done, len(mine), n_new)
            return {"shard": f"{index}/{count}", "n_files": len(mine), "n_done": done,
                    "n_predicted": n_new}
    for name, path in zip(names, files):
        if name not in fingerprints:
            fingerprints[name] = _fingerprint(path)
    collected = store.collect(names, files, [fingerprints[n] for n in names])
    summary = build_summary(cfg, collected, len(files))
    write_outputs(out_dir, cfg, summary, store, collected)
    if not collected.images:
        hint = ("run predict without report_only=true first" if collected.pending else
                f"see {out_dir / 'summary.json'}")
        raise DataError(cfg.input, f"none of the {len(files)} files has results; {hint}")
    return summary


def build_summary(cfg: DictConfig, collected: Collected, n_files: int) -> dict[str, Any]:
    """``summary.json`` from the records (timings summed over the runs that made them)."""
    records = collected.records
    seconds = sum(float(r.get("seconds", 0.0)) for r in records)
    problems = list(dict.fromkeys(p for r in records for p in r.get("problems", [])))
    if collected.pending:
        problems.append(
            f"{len(collected.pending)} of {n_files} images have no results yet (not "
            f"processed, or changed since), e.g. {collected.pending[0]}: re-run the same "
            "command without report_only=true (every shard) to finish them")
        log.warning("%s", problems[-1])
    summary = {
        "input": str(cfg.input), "checkpoint": str(cfg.ckpt_path), "task": cfg.task_name,
        "classes": list(cfg.data.classes), "score_thr": float(cfg.score_thr),
        "scale": float(cfg.scale), "tile": OmegaConf.to_container(cfg.tile),
        "device": ", ".join(sorted({str(r.get("device")) for r in records})) or "none",
        "n_files": n_files, "n_images": len(collected.images),
        "n_skipped": len(collected.skipped), "skipped": collected.skipped,
        "n_pending": len(collected.pending),
        "n_objects": sum(int(r["n_objects"]) for r in records),
        "seconds": round(seconds, 2),
        "seconds_per_image": round(seconds / len(records), 3) if records else None,
    }
    if problems:
        summary["problems"] = problems
    return summary


def write_outputs(out_dir: Path, cfg: DictConfig, summary: dict, store: ResultStore,
                  collected: Collected) -> None:
    """Tables, COCO files, figures, summary.json and the report, from the parts on disk."""
    classes = summary["classes"]
    images = collected.images
    objects = concat_objects(list(store.objects(images)), cfg.pixel_size_nm)
    counts = objects["class"].value_counts() if len(objects) else {}
    summary["objects_per_class"] = {c: int(counts.get(c, 0)) for c in classes}
    problems: list[str] = list(summary.get("problems", []))
    exclude_border = bool(cfg.get("exclude_border", True))
    tables = write_tables(out_dir, objects, images, classes, problems,
                          exclude_border=exclude_border, seed=int(cfg.get("seed") or 0))
    summary["problems"] = problems
    store.write_coco(images, out_dir / "coco_results.json")
    (out_dir / "coco_images.json").write_text(json.dumps(coco_images(images, classes),
                                                         indent=1))
    exported = []
    if check_export(cfg.get("export"), cfg.data.scope == "mmrotate"):
        exported = export_annotations(out_dir / EXPORT_DIR, cfg.get("export"), images,
                                      list(store.coco(images)), classes,
                                      cfg.data.scope == "mmrotate",
                                      str(cfg.get("export_split", "train")), summary["task"])
    overlays = [p for p in (out_dir / "overlays" / _overlay_name(i.name) for i in images)
                if cfg.overlays and p.is_file()]
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
    log.info("%d images, %d objects, %d skipped -> %s", len(images), len(objects),
             len(skipped), out_dir / "report.html")
    for item in skipped:
        log.warning("skipped: %s", item["reason"])


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
@user_errors("predict")
def main(cfg: DictConfig) -> None:
    quiet_third_party(cfg)
    predict(cfg)


if __name__ == "__main__":
    launch(main, "predict")
