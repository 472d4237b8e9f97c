"""analyze: annotated statistics equal the annotation files; predicted-vs-annotated comparison."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pycocotools.mask as mask_utils
import pytest
from omegaconf import DictConfig
from pycocotools.coco import COCO

from em_lightning.analyze import analyze
from tests.conftest import compose_cfg


def analyze_cfg(overrides: list[str]) -> DictConfig:
    return compose_cfg(overrides, config="analyze")


def annotation_counts(ann_file: Path) -> tuple[Counter, Counter]:
    """(per class, per (file_name, class)) counts of the non-crowd annotations."""
    data = json.loads(ann_file.read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    files = {i["id"]: i["file_name"] for i in data["images"]}
    anns = [a for a in data["annotations"] if not a.get("iscrowd")]
    return (Counter(names[a["category_id"]] for a in anns),
            Counter((files[a["image_id"]], names[a["category_id"]]) for a in anns))


@pytest.fixture(scope="module")
def vesicles_analysis(tiny_vesicles, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("analyze_vesicles")
    analyze(analyze_cfg(["task=vesicles", f"data.root={tiny_vesicles}", "split=val",
                         f"output={out}", "pixel_size_nm=1.5"]))
    return out


def test_vesicle_counts_equal_the_annotations(tiny_vesicles, vesicles_analysis):
    per_class, per_image = annotation_counts(tiny_vesicles / "annotations" / "val.json")
    dataset = pd.read_csv(vesicles_analysis / "summary_dataset.csv").set_index("class")
    assert dataset["count"].to_dict() == dict(per_class) and sum(per_class.values()) > 20
    per = pd.read_csv(vesicles_analysis / "summary_per_image.csv")
    assert {(r.image, r["class"]): r["count"] for _, r in per.iterrows() if r["count"]} == \
        dict(per_image)
    objects = pd.read_csv(vesicles_analysis / "objects.csv")
    coco = COCO(str(tiny_vesicles / "annotations" / "val.json"))
    areas = sorted(int(coco.annToMask(a).sum()) for a in coco.anns.values())
    assert sorted(objects["area"].astype(int)) == areas  # the same rasterisation as COCO
    assert np.allclose(objects["equivalent_diameter_nm"], 1.5 * objects["equivalent_diameter"])
    assert (dataset["size_unit"] == "nm").all()
    report = (vesicles_analysis / "report.html").read_text()
    assert "1.5 nm/px" in report and "given by the user" in report
    assert (vesicles_analysis / "plots" / "size_histogram.png").is_file()
    assert (vesicles_analysis / "plots" / "shape_histograms.png").is_file()


def _touches_border(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def test_border_objects_area_fraction_and_intervals(tiny_vesicles, vesicles_analysis):
    """touches_border equals annToMask's mask touching the image edge; border objects are
    left out of the sizes (Fiji's exclude on edges) and counted in the report."""
    coco = COCO(str(tiny_vesicles / "annotations" / "val.json"))
    anns = [a for a in coco.anns.values() if not a.get("iscrowd")]
    truth = sorted((int(coco.annToMask(a).sum()), _touches_border(coco.annToMask(a)))
                   for a in anns)
    objects = pd.read_csv(vesicles_analysis / "objects.csv")
    assert sorted(zip(objects["area"].astype(int), objects["touches_border"])) == truth
    n_border = sum(edge for _, edge in truth)
    assert n_border > 0  # the fixture has objects cut by the border
    dataset = pd.read_csv(vesicles_analysis / "summary_dataset.csv").set_index("class")
    assert dataset["n_border"].sum() == n_border
    assert (dataset["n_sized"] == dataset["count"] - dataset["n_border"]).all()
    inside = objects[~objects["touches_border"]]
    for cls, row in dataset.iterrows():
        sizes = inside.loc[inside["class"] == cls, "equivalent_diameter_nm"]
        assert row["size_mean"] == pytest.approx(sizes.mean())
        assert row["size_mean_ci95_low"] <= row["size_mean"] <= row["size_mean_ci95_high"]
        assert row["size_median_ci95_low"] <= row["size_median"] <= row["size_median_ci95_high"]
    images = pd.read_csv(vesicles_analysis / "images.csv")
    total_px = float((images["height"] * images["width"]).sum())
    for cls, row in dataset.iterrows():
        covered = objects.loc[objects["class"] == cls, "area"].sum()
        assert row["area_fraction"] == pytest.approx(covered / total_px)
    assert dataset["size_mean_img_ci95_low"].notna().any()  # two images: over images too
    report = (vesicles_analysis / "report.html").read_text()
    assert f"{n_border} of {len(objects)} objects touch the image border" in report
    assert "summary with 95 % intervals" in report and "size_mean_ci95_low" in report


def test_exclude_border_can_be_switched_off(tiny_vesicles, vesicles_analysis, tmp_path):
    summary = analyze(analyze_cfg(["task=vesicles", f"data.root={tiny_vesicles}", "split=val",
                                   f"output={tmp_path}", "exclude_border=false",
                                   "pixel_size_nm=1.5"]))
    dataset = pd.read_csv(tmp_path / "summary_dataset.csv").set_index("class")
    assert (dataset["n_sized"] == dataset["count"]).all() and dataset["n_border"].sum() > 0
    assert summary["exclude_border"] is False
    assert "included in all statistics" in (tmp_path / "report.html").read_text()
    # the same seed gives the same intervals as the first run wherever nothing changed
    before = pd.read_csv(vesicles_analysis / "summary_dataset.csv").set_index("class")
    unchanged = before["n_border"] == 0
    pd.testing.assert_series_equal(dataset.loc[unchanged, "size_mean_ci95_low"],
                                   before.loc[unchanged, "size_mean_ci95_low"])


def test_nanorod_counts_and_lengths_equal_the_annotations(tiny_nanorods, tmp_path):
    analyze(analyze_cfg(["task=nanorods", f"data.root={tiny_nanorods}", "split=val",
                         f"output={tmp_path}"]))
    data = json.loads((tiny_nanorods / "annotations" / "val.json").read_text())
    dataset = pd.read_csv(tmp_path / "summary_dataset.csv").set_index("class")
    assert dataset.loc["nanorod", "count"] == len(data["annotations"]) > 10
    objects = pd.read_csv(tmp_path / "objects.csv")
    lengths = sorted(max(a["rbox"][2], a["rbox"][3]) for a in data["annotations"])
    assert np.allclose(sorted(objects["length"]), lengths, atol=1e-3)
    assert (objects["kind"] == "rbox").all() and objects["mean_intensity"].notna().all()
    for name in ("orientation_rose.png", "length_width.png", "size_histogram.png"):
        assert (tmp_path / "plots" / name).is_file()
    report = (tmp_path / "report.html").read_text()
    assert "Pixel size unknown" in report


def test_comparison_with_perfect_predictions_from_a_predict_folder(vesicles_analysis,
                                                                   tiny_vesicles, tmp_path):
    """analyze's own objects table, as a predict output folder, matches itself exactly."""
    summary = analyze(analyze_cfg(["task=vesicles", f"data.root={tiny_vesicles}", "split=val",
                                   f"output={tmp_path}", f"predictions={vesicles_analysis}"]))
    table = pd.read_csv(tmp_path / "comparison.csv").set_index("class")
    assert (table["count_error"] == 0).all() and (table["ks_statistic"] == 0).all()
    assert summary["n_compared_images"] == 2
    assert (tmp_path / "plots" / "comparison_size_histogram.png").is_file()
    assert "predicted vs annotated" in (tmp_path / "report.html").read_text()


def test_comparison_counts_and_ks_from_a_results_json(tiny_vesicles, tmp_path):
    """COCO results with evaluate's image ids: all small vesicles dropped, holes twice as big."""
    coco = COCO(str(tiny_vesicles / "annotations" / "val.json"))
    cats = {c["name"]: c["id"] for c in coco.cats.values()}
    results = []
    for ann in coco.anns.values():
        if ann["category_id"] == cats["small_vesicle"]:
            continue
        rle = coco.annToRLE(ann)
        if ann["category_id"] == cats["hole"]:  # a hole predicted with a doubled radius
            x, y, w, h = ann["bbox"]
            img = coco.imgs[ann["image_id"]]
            yy, xx = np.mgrid[: img["height"], : img["width"]]
            disc = (xx + 0.5 - x - w / 2) ** 2 + (yy + 0.5 - y - h / 2) ** 2 <= w**2
            rle = mask_utils.encode(np.asfortranarray(disc.astype(np.uint8)))
        results.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                        "score": 0.9, "segmentation": {**rle, "counts": rle["counts"].decode()}})
    path = tmp_path / "val.segm.json"
    path.write_text(json.dumps(results))
    summary = analyze(analyze_cfg(["task=vesicles", f"data.root={tiny_vesicles}", "split=val",
                                   f"output={tmp_path / 'out'}", f"predictions={path}"]))
    table = pd.read_csv(tmp_path / "out" / "comparison.csv").set_index("class")
    per_class, _ = annotation_counts(tiny_vesicles / "annotations" / "val.json")
    assert table.loc["small_vesicle", "count_error"] == -per_class["small_vesicle"]
    assert table.loc["big_vesicle", "count_error"] == 0
    assert table.loc["big_vesicle", "ks_statistic"] == 0
    assert table.loc["hole", "count_error"] == 0 and table.loc["hole", "ks_statistic"] == 1
    assert math.isclose(summary["comparison"]["n_truth"], sum(per_class.values()))
