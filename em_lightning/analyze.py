"""Microstructure statistics of annotated data, and predicted-vs-annotated comparison.

``python -m em_lightning.analyze task=vesicles [data.root=...] [split=val]``
measures every annotated object of the split exactly as ``predict`` measures detections and
writes the same tables, figures and report. With
``predictions=<predict output folder or COCO results JSON>`` it also compares: size
distributions overlaid, two-sample KS statistic and count errors per class
(``comparison.csv``, ``comparison_per_image.csv``, ``comparison.json``).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm import tqdm

from em_lightning.analysis.summary import (
    compare_distributions,
    comparison_table,
    headline_table,
    size_column,
)
from em_lightning.cli import launch, user_errors
from em_lightning.config_checks import check_config
from em_lightning.data.errors import DataError
from em_lightning.data.layout import check_output_outside
from em_lightning.data.microscopy import read_em_image
from em_lightning.errors import InputNotFoundError
from em_lightning.inference.annotations import (
    instance_detection,
    load_prediction_table,
    match_names,
    read_results_json,
    results_detections,
)
from em_lightning.inference.inputs import image_name
from em_lightning.inference.outputs import (
    concat_objects,
    write_config,
    write_figures,
    write_report,
    write_tables,
)
from em_lightning.inference.results import ImageInfo, measure
from em_lightning.quiet import quiet_third_party
from em_lightning.registry import register_all_modules

log = logging.getLogger(__name__)
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def annotated_objects(cfg: DictConfig, summary: dict) -> tuple[pd.DataFrame, list[ImageInfo],
                                                                Any]:
    """(objects table, images, dataset) of the split's annotations; unreadable images and
    unmeasurable instances are counted in ``summary``."""
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    dataset = datamodule.build_dataset(str(cfg.split), augment=False)
    img_root = Path(dataset.data_prefix["img"])
    classes = list(cfg.data.classes)
    parts, images = [], []
    for idx in tqdm(range(len(dataset)), desc=f"{cfg.split} images", unit="img"):
        info = dataset.get_data_info(idx)
        path = Path(info["img_path"])
        try:
            image = read_em_image(path, cfg.pixel_size_nm)
        except DataError as exc:
            summary["skipped"].append({"file": str(path), "reason": str(exc)})
            log.warning("skipping %s", exc)
            continue
        height, width = image.shape
        dets = []
        for inst in info["instances"]:
            if inst.get("ignore_flag"):
                summary["ignored_crowd"] += 1
                continue
            det = instance_detection(inst, height, width)
            if det is None:
                summary["unmeasurable"] += 1
            else:
                dets.append(det)
        item = ImageInfo(int(info["img_id"]), image_name(path, img_root), str(path), height,
                         width, image.pixel_size_nm, image.pixel_size_source)
        images.append(item)
        parts.append(measure(dets, item, classes, image.data))
    return concat_objects(parts, cfg.pixel_size_nm), images, dataset


def _label_map(doc: dict | None, dataset: Any, classes: list[str]) -> dict[int, int]:
    """category_id -> label: the results' own categories, else the annotation file's ids."""
    if doc is not None:
        names = {c["id"]: c["name"] for c in doc.get("categories", [])}
        return {cid: classes.index(n) for cid, n in names.items() if n in classes}
    cat_ids = getattr(dataset, "cat_ids", None)
    if cat_ids:
        return {int(cid): k for k, cid in enumerate(cat_ids)}
    return {k + 1: k for k in range(len(classes))}


def predicted_from_json(path: Path, images: list[ImageInfo], dataset: Any,
                        classes: list[str]) -> tuple[pd.DataFrame, set[str]]:
    """Measure the objects of a COCO results JSON on the annotated images it refers to;
    returns them with the names of those images."""
    results, doc = read_results_json(path)
    if doc is not None:
        names = {img["id"]: img["file_name"] for img in doc.get("images", [])}
        by_name = {i.name: i for i in images}
        matched = match_names(list(names.values()), list(by_name))
        target = {iid: by_name[matched[n]] for iid, n in names.items() if n in matched}
    else:  # evaluate's results: image ids are the annotation file's
        target = {i.id: i for i in images}
    grouped: dict[int, list[dict]] = defaultdict(list)
    for entry in results:
        grouped[entry.get("image_id")].append(entry)
    unknown = set(grouped) - set(target)
    if unknown:
        log.warning("%s: %d images of the results are not in the annotated split (ignored)",
                    path, len(unknown))
    label_of = _label_map(doc, dataset, classes)
    parts = []
    for image_id, info in target.items():
        dets = results_detections(grouped.get(image_id, []), label_of, info.height, info.width,
                                  str(path))
        data = read_em_image(info.path).data
        parts.append(measure(dets, info, classes, data))
    return concat_objects(parts, None), {i.name for i in target.values()}


def load_predictions(cfg: DictConfig, images: list[ImageInfo], dataset: Any
                     ) -> tuple[pd.DataFrame, list[ImageInfo]]:
    """(predicted objects on the annotated images, those images), renamed to the annotated
    image names so that both tables line up."""
    spec = Path(str(cfg.predictions)).expanduser()
    classes = list(cfg.data.classes)
    if spec.is_dir():
        table = load_prediction_table(spec)
        pred_images = pd.read_csv(spec / "images.csv")["image"].tolist() \
            if (spec / "images.csv").is_file() else table["image"].unique().tolist()
        mapping = match_names([str(n) for n in pred_images], [i.name for i in images])
        table = table[table["image"].isin(list(mapping))].copy()
        table["image"] = table["image"].map(mapping)
        covered = set(mapping.values())
    elif spec.is_file():
        table, covered = predicted_from_json(spec, images, dataset, classes)
    else:
        raise InputNotFoundError(f"predictions={spec}: must be a predict output folder or a "
                                "COCO results JSON")
    if cfg.score_thr is not None:
        table = table[table["score"] >= float(cfg.score_thr)]
    if not covered:
        raise DataError(spec, "none of its images is among the annotated images of split "
                              f"{cfg.split!r} (matched by relative path or file name)")
    return table.reset_index(drop=True), [i for i in images if i.name in covered]


def _comparison_column(pred: pd.DataFrame, truth: pd.DataFrame) -> str:
    """The size column both tables have for every object (nm if possible, else px)."""
    ref = truth if len(truth) else pred
    column, unit = size_column(ref)
    if unit == "nm" and not (column in pred and pred[column].notna().all()):
        column = column[:-3]
    return column


def per_image_counts(pred: pd.DataFrame, truth: pd.DataFrame, images: list[ImageInfo],
                     classes: list[str]) -> pd.DataFrame:
    index = pd.MultiIndex.from_product([[i.name for i in images], classes],
                                       names=["image", "class"])
    counts = pd.DataFrame({
        "n_pred": pred.groupby(["image", "class"]).size().reindex(index, fill_value=0),
        "n_truth": truth.groupby(["image", "class"]).size().reindex(index, fill_value=0),
    }).reset_index()
    counts["count_error"] = counts["n_pred"] - counts["n_truth"]
    return counts


def analyze(cfg: DictConfig) -> dict[str, Any]:
    """Measure the annotations (and compare with predictions); returns ``summary.json``."""
    check_config(cfg, "analyze")
    register_all_modules()
    out_dir = Path(cfg.output or cfg.paths.output_dir)
    check_output_outside(out_dir, cfg.data.root, "output")
    classes = list(cfg.data.classes)
    summary: dict[str, Any] = {"task": cfg.task_name, "root": str(cfg.data.root),
                               "split": str(cfg.split), "skipped": [], "ignored_crowd": 0,
                               "unmeasurable": 0}
    truth, images, dataset = annotated_objects(cfg, summary)
    if not images:
        raise DataError(cfg.data.root, f"no readable image in split {cfg.split!r}")
    problems: list[str] = []
    exclude_border = bool(cfg.get("exclude_border", True))
    seed = int(cfg.get("seed") or 0)
    tables = write_tables(out_dir, truth, images, classes, problems,
                          exclude_border=exclude_border, seed=seed)
    figures = write_figures(out_dir / "plots", truth, exclude_border=exclude_border)
    summary.update(n_images=len(images), n_objects=len(truth),
                   objects_per_class={c: int((truth["class"] == c).sum()) for c in classes},
                   exclude_border=exclude_border,
                   n_border=int(tables["dataset"]["n_border"].sum()))
    report_tables = {"annotated: summary with 95 % intervals": headline_table(tables["dataset"]),
                     "annotated: per-dataset summary": tables["dataset"]}
    files = [out_dir / n for n in ("objects.csv", "objects.parquet", "summary_per_image.csv",
                                   "summary_dataset.csv", "images.csv")]
    title = f"{cfg.task_name}: annotated microstructure ({cfg.split} split)"
    if cfg.predictions:
        pred, covered = load_predictions(cfg, images, dataset)
        names = {i.name for i in covered}
        truth_c = truth[truth["image"].isin(names)]
        write_tables(out_dir, pred, covered, classes, problems, prefix="predicted_",
                     exclude_border=exclude_border, seed=seed)
        column = _comparison_column(pred, truth_c)
        result = compare_distributions(pred, truth_c, column, exclude_border)
        comparison = comparison_table(result)
        comparison.to_csv(out_dir / "comparison.csv", index=False)
        per_image_counts(pred, truth_c, covered, classes).to_csv(
            out_dir / "comparison_per_image.csv", index=False)
        (out_dir / "comparison.json").write_text(json.dumps(result, indent=2, default=float))
        figures += write_figures(out_dir / "plots", pred, truth=truth_c, prefix="comparison_",
                                 column=column, exclude_border=exclude_border)
        report_tables = {"predicted vs annotated": comparison, **report_tables}
        summary.update(predictions=str(cfg.predictions), n_compared_images=len(covered),
                       comparison=result)
        files += [out_dir / n for n in ("comparison.csv", "comparison_per_image.csv",
                                        "comparison.json", "predicted_objects.csv",
                                        "predicted_summary_dataset.csv")]
        title = f"{cfg.task_name}: predicted vs annotated ({cfg.split} split)"
    summary["problems"] = problems
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    write_config(out_dir, cfg)
    notes = [
        f"annotations of split {cfg.split!r} under {cfg.data.root}: {len(images)} images, "
        f"{len(truth)} objects measured; {len(summary['skipped'])} unreadable images skipped, "
        f"{summary['ignored_crowd']} crowd annotations ignored, {summary['unmeasurable']} "
        "instances without a measurable shape",
        tables["border_note"],
        *(f"skipped: {s['reason']}" for s in summary["skipped"]),
        *problems,
    ]
    if cfg.predictions:
        notes.append(f"predictions {cfg.predictions} on {summary['n_compared_images']} of the "
                     f"annotated images; size column {result['column']}: KS statistic "
                     f"{result['ks_statistic']:.3f} (p = {result['ks_pvalue']:.3g}), count "
                     f"error {result['count_error']:+d} of {result['n_truth']}")
    write_report(out_dir, title, report_tables, figures, notes, images,
                 files + [out_dir / "summary.json", out_dir / "config.yaml"] + figures)
    log.info("%s -> %s", title, out_dir / "report.html")
    return summary


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="analyze")
@user_errors("analyze")
def main(cfg: DictConfig) -> None:
    quiet_third_party(cfg)
    analyze(cfg)


if __name__ == "__main__":
    launch(main, "analyze")
