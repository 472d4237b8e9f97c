"""Summaries count and scale correctly; figures and the HTML report are written and embed."""

from __future__ import annotations

import base64
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from em_lightning.analysis.morphology import objects_table
from em_lightning.analysis.plots import (
    length_width_scatter,
    orientation_rose,
    overlay_png,
    size_histogram,
)
from em_lightning.analysis.report import write_html_report
from em_lightning.analysis.summary import (
    compare_distributions,
    comparison_table,
    dataset_summary,
    per_image_summary,
    summarize,
)

SHAPE = (100, 200)  # 2 nm/px -> 200 x 400 nm = 0.08 µm²
AREA_UM2 = 100 * 200 * 2.0**2 / 1e6


def disc(cx: float, cy: float, r: float, shape=SHAPE) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def rod_lengths() -> list[float]:
    return [20.0, 30.0, 40.0, 50.0, 60.0]


@pytest.fixture(scope="module")
def objects() -> pd.DataFrame:
    records = [
        {"image": "a", "class": "vesicle", "score": 0.9, "mask": disc(30, 40, 10)},
        {"image": "a", "class": "vesicle", "score": 0.8, "mask": disc(100, 50, 20)},
        {"image": "b", "class": "vesicle", "score": 0.7, "mask": disc(150, 50, 15)},
    ]
    records += [
        {"image": "b", "class": "rod", "score": 0.6, "rbox": (50, 50, length, 5, angle)}
        for length, angle in zip(rod_lengths(), np.linspace(-1.2, 1.2, 5))
    ]
    return objects_table(records, pixel_size_nm=2.0)


@pytest.fixture(scope="module")
def shapes() -> dict[str, tuple[int, int]]:
    return {"a": SHAPE, "b": SHAPE, "empty": SHAPE}


def test_per_image_counts_and_density(objects, shapes) -> None:
    table = per_image_summary(objects, shapes, pixel_size_nm=2.0).set_index(["image", "class"])
    assert len(table) == 6  # 3 images x 2 classes, zeros included
    assert table.loc[("a", "vesicle"), "count"] == 2
    assert table.loc[("a", "rod"), "count"] == 0
    assert table.loc[("empty", "vesicle"), "count"] == 0
    assert table.loc[("b", "rod"), "count"] == 5
    assert table.loc[("a", "vesicle"), "image_area_um2"] == pytest.approx(AREA_UM2)
    assert table.loc[("a", "vesicle"), "density_per_um2"] == pytest.approx(2 / AREA_UM2)
    assert table.loc[("empty", "rod"), "density_per_um2"] == 0.0

    rods = table.loc[("b", "rod")]
    lengths_nm = 2.0 * np.array(rod_lengths())
    assert (rods["size_column"], rods["size_unit"]) == ("length_nm", "nm")
    assert rods["size_mean"] == pytest.approx(80.0)
    assert rods["size_median"] == pytest.approx(80.0)
    assert rods["size_std"] == pytest.approx(np.std(lengths_nm, ddof=1))
    assert rods["size_p5"] == pytest.approx(np.percentile(lengths_nm, 5))
    assert rods["size_p95"] == pytest.approx(np.percentile(lengths_nm, 95))

    vesicles_a = table.loc[("a", "vesicle")]
    assert vesicles_a["size_column"] == "equivalent_diameter_nm"
    assert vesicles_a["size_mean"] == pytest.approx(2.0 * 30.0, rel=0.02)  # diameters 20, 40 px


def test_dataset_summary_pools_images(objects, shapes) -> None:
    per_image, per_dataset = summarize(objects, shapes, pixel_size_nm=2.0)
    table = per_dataset.set_index("class")
    assert table.loc["vesicle", "count"] == 3 and table.loc["rod", "count"] == 5
    assert table.loc["vesicle", "n_images"] == 3
    assert table.loc["vesicle", "image_area_um2"] == pytest.approx(3 * AREA_UM2)
    assert table.loc["vesicle", "density_per_um2"] == pytest.approx(3 / (3 * AREA_UM2))
    assert table.loc["rod", "count_per_image_mean"] == pytest.approx(5 / 3)
    assert table.loc["rod", "count_per_image_std"] == pytest.approx(np.std([0, 5, 0], ddof=1))
    assert table.loc["vesicle", "size_median"] == pytest.approx(60.0, rel=0.02)
    assert per_image["count"].sum() == len(objects)
    # without the argument, the image with no detections has no known pixel size
    unknown = dataset_summary(objects, shapes).set_index("class")
    assert math.isnan(unknown.loc["rod", "density_per_um2"])
    assert unknown.loc["rod", "size_mean"] == pytest.approx(80.0)


def test_unknown_pixel_size_falls_back_to_px(objects, shapes) -> None:
    px_objects = objects_table([{"image": "a", "class": "v", "mask": disc(30, 40, 10)}], None)
    table = dataset_summary(px_objects, {"a": SHAPE})
    assert table.loc[0, "size_unit"] == "px"
    assert table.loc[0, "size_mean"] == pytest.approx(20.0, rel=0.02)
    assert math.isnan(table.loc[0, "density_per_um2"])
    # a pixel size given to the summary (e.g. from image metadata) still yields densities
    table = per_image_summary(px_objects, {"a": SHAPE}, pixel_size_nm={"a": 2.0})
    assert table.loc[0, "density_per_um2"] == pytest.approx(1 / AREA_UM2)


def test_compare_distributions() -> None:
    rng = np.random.default_rng(0)
    truth = pd.DataFrame({"class": ["v"] * 200 + ["r"] * 50, "size": rng.normal(50, 5, 250)})
    same = truth.copy()
    result = compare_distributions(same, truth, "size")
    assert result["ks_statistic"] == 0.0 and result["ks_pvalue"] == pytest.approx(1.0)
    assert result["count_error"] == 0

    shifted = pd.DataFrame({"class": ["v"] * 180, "size": rng.normal(70, 5, 180)})
    result = compare_distributions(shifted, truth, "size")
    v, r = result["per_class"]["v"], result["per_class"]["r"]
    assert v["ks_statistic"] > 0.9 and v["ks_pvalue"] < 1e-6
    assert (v["count_error"], v["abs_count_error"]) == (-20, 20)
    assert v["relative_count_error"] == pytest.approx(-0.1)
    assert (r["n_pred"], r["count_error"], r["relative_count_error"]) == (0, -50, -1.0)
    assert math.isnan(r["ks_statistic"])
    flat = comparison_table(result)
    assert list(flat["class"]) == ["r", "v", "all"]
    assert flat.iloc[-1]["count_error"] == 180 - 250


def _png_shape(path: Path) -> tuple[int, ...]:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, f"{path} is not a readable PNG"
    return img.shape


def test_plots_write_pngs(objects, tmp_path: Path) -> None:
    truth = objects.assign(equivalent_diameter_nm=objects["equivalent_diameter_nm"] * 1.1)
    truth = truth.assign(length_nm=truth["length_nm"] * 0.9)
    paths = [
        size_histogram(objects, tmp_path / "hist.png", truth=truth),
        orientation_rose(objects, tmp_path / "rose.png"),
        length_width_scatter(objects, tmp_path / "lw.png"),
    ]
    for path in paths:
        assert path.suffix == ".png" and len(_png_shape(path)) == 3


def test_overlay_draws_class_colours(tmp_path: Path) -> None:
    image = np.full((80, 120), 1000, np.uint16)
    mask = disc(40, 40, 15, shape=(80, 120))
    box = (90.0, 40.0, 30.0, 10.0, 0.0)
    path = overlay_png(image, [mask, box], ["vesicle", "rod"], tmp_path / "overlay.png")
    out = cv2.imread(str(path))
    assert out.shape == (80, 120, 3)
    background = out[70, 5]
    assert background[0] == background[1] == background[2] == round(1000 / 65535 * 255)
    # rod = first class alphabetically = tab:blue (BGR 180, 119, 31); vesicle = tab:orange
    np.testing.assert_array_equal(out[35, 90], [180, 119, 31])  # top edge of the box
    np.testing.assert_array_equal(out[40, 55], [14, 127, 255])  # right edge of the disc
    assert (out[40, 40] == background).all()  # interiors stay untouched
    with pytest.raises(ValueError, match="labels"):
        overlay_png(image, [mask], [], tmp_path / "bad.png")


def test_html_report_is_self_contained(objects, shapes, tmp_path: Path) -> None:
    per_image, per_dataset = summarize(objects, shapes)
    figure = orientation_rose(objects, tmp_path / "fig" / "orientation_rose.png")
    path = write_html_report(
        tmp_path / "report",
        "Vesicles & rods <run 1>",
        {"per image": per_image, "per dataset": per_dataset},
        [figure],
        ["model: demo"],
        pixel_size_nm=2.0,
        pixel_size_source="metadata",
    )
    text = path.read_text(encoding="utf-8")
    assert "Vesicles &amp; rods &lt;run 1&gt;" in text
    assert "2 nm/px, read from the image file metadata" in text
    assert (
        text.count("<table") == 2 and "density_per_um2" in text and "<li>model: demo</li>" in text
    )
    encoded = re.search(r'src="data:image/png;base64,([^"]+)"', text).group(1)
    assert base64.b64decode(encoded) == figure.read_bytes()
    assert 'src="http' not in text and "<link" not in text

    px = write_html_report(tmp_path, "px", {}, [], [], filename="px.html").read_text()
    assert "lengths are in pixels (px)" in px
    with pytest.raises(FileNotFoundError):
        write_html_report(tmp_path, "t", {}, [tmp_path / "missing.png"], [])


def _disc_detection(cx: int, cy: int, r: int, label: int = 0):
    from em_lightning.inference.detections import Detection, crop_mask

    return Detection.from_crop(label, 0.9, *crop_mask(disc(cx, cy, r)))


def _measured(dets, name: str = "a"):
    from em_lightning.inference.results import ImageInfo, measure

    info = ImageInfo(1, name, name, SHAPE[0], SHAPE[1], 2.0, "user")
    return measure(dets, info, ["vesicle", "rod"])


def test_border_objects_are_flagged_and_left_out_of_sizes() -> None:
    from em_lightning.inference.detections import Detection

    dets = [_disc_detection(5, 50, 10), _disc_detection(100, 50, 20), _disc_detection(60, 30, 8),
            _disc_detection(150, 95, 9)]  # left and bottom border, two inside
    rods = [Detection(1, 0.8, np.array([180.0, 40, 199.9, 44]), rbox=np.array([190, 42, 20, 4, 0])),
            Detection(1, 0.8, np.array([150.0, 40, 170, 44]), rbox=np.array([160, 42, 20, 4, 0]))]
    objects = _measured(dets + rods)
    assert objects["touches_border"].tolist() == [True, False, False, True, True, False]
    shapes = {"a": SHAPE}
    per_image, dataset = summarize(objects, shapes, 2.0)
    row = dataset.set_index("class").loc["vesicle"]
    assert (row["count"], row["n_border"], row["n_sized"]) == (4, 2, 2)
    inside = objects.loc[[1, 2], "equivalent_diameter_nm"]
    assert row["size_mean"] == pytest.approx(inside.mean())
    assert row["density_per_um2"] == pytest.approx(4 / AREA_UM2)  # border objects still count
    assert row["area_fraction"] == pytest.approx(objects.loc[:3, "area"].sum() / (100 * 200))
    assert dataset.set_index("class").loc["rod", "n_sized"] == 1
    everything = dataset_summary(objects, shapes, 2.0, exclude_border=False).set_index("class")
    assert everything.loc["vesicle", "n_sized"] == 4 and everything.loc["vesicle", "n_border"] == 2
    assert everything.loc["vesicle", "size_mean"] == pytest.approx(
        objects.loc[:3, "equivalent_diameter_nm"].mean())
    # a table without the column (older predict output) is flagged from its bbox columns
    recomputed = per_image_summary(objects.drop(columns="touches_border"), shapes, 2.0)
    pd.testing.assert_frame_equal(recomputed, per_image)


def test_area_fraction_is_the_covered_fraction(objects, shapes) -> None:
    table = per_image_summary(objects, shapes, 2.0).set_index(["image", "class"])
    pixels = disc(30, 40, 10).sum() + disc(100, 50, 20).sum()
    assert table.loc[("a", "vesicle"), "area_fraction"] == pytest.approx(pixels / (100 * 200))
    assert table.loc[("empty", "vesicle"), "area_fraction"] == 0.0
    assert table.loc[("b", "rod"), "area_fraction"] == pytest.approx(
        5 * sum(rod_lengths()) / (100 * 200))


def test_bootstrap_intervals_are_seeded_and_agree_with_scipy() -> None:
    from scipy import stats

    from em_lightning.analysis.summary import bootstrap_ci

    rng = np.random.default_rng(1)
    values = rng.lognormal(3.0, 0.3, 400)
    a = bootstrap_ci(values, np.mean, np.random.default_rng(5))
    b = bootstrap_ci(values, np.mean, np.random.default_rng(5))
    assert a == b and a[0] < values.mean() < a[1]
    half = 1.96 * values.std(ddof=1) / np.sqrt(values.size)  # normal theory for the mean
    assert (a[1] - a[0]) / 2 == pytest.approx(half, rel=0.1)
    for fn in (np.mean, np.median):
        ref = stats.bootstrap((values,), fn, n_resamples=2000, method="percentile",
                              random_state=np.random.default_rng(0)).confidence_interval
        ours = bootstrap_ci(values, fn, np.random.default_rng(0))
        width = ref.high - ref.low
        assert ours[0] == pytest.approx(ref.low, abs=0.1 * width)
        assert ours[1] == pytest.approx(ref.high, abs=0.1 * width)
    assert all(math.isnan(v) for v in bootstrap_ci([1.0], np.mean, np.random.default_rng(0)))


def test_poisson_interval_matches_garwood_table() -> None:
    from em_lightning.analysis.summary import poisson_ci

    assert poisson_ci(0) == pytest.approx((0.0, 3.6889), abs=1e-4)
    assert poisson_ci(10) == pytest.approx((4.7954, 18.3904), abs=1e-4)


def _many_images(n_images: int = 5, per_image: int = 20) -> tuple[pd.DataFrame, dict]:
    """Objects whose size depends on the image (as specimen regions differ)."""
    rng = np.random.default_rng(2)
    rows = []
    for k in range(n_images):
        for d in rng.normal(10 + 10 * k, 0.5, per_image):
            rows.append({"image": f"i{k}", "class": "v", "kind": "mask", "area": d * d,
                         "equivalent_diameter": d, "touches_border": False})
    return pd.DataFrame(rows), {f"i{k}": (100, 100) for k in range(n_images)}


def test_image_bootstrap_is_wider_when_images_differ() -> None:
    objects, shapes = _many_images()
    first = dataset_summary(objects, shapes, 1.0, seed=3)
    again = dataset_summary(objects, shapes, 1.0, seed=3)
    pd.testing.assert_frame_equal(first, again)  # deterministic
    row = first.iloc[0]
    objects_width = row["size_mean_ci95_high"] - row["size_mean_ci95_low"]
    images_width = row["size_mean_img_ci95_high"] - row["size_mean_img_ci95_low"]
    assert row["size_mean_ci95_low"] < row["size_mean"] < row["size_mean_ci95_high"]
    assert images_width > 3 * objects_width  # objects of one image are not independent
    assert row["size_median_img_ci95_low"] < row["size_median"] < row["size_median_img_ci95_high"]
    assert row["density_ci_method"] == "bootstrap over images"
    assert row["density_ci95_low"] == pytest.approx(row["density_per_um2"])  # 20 per image
    assert row["density_ci95_high"] == pytest.approx(row["density_per_um2"])
    other = dataset_summary(objects, shapes, 1.0, seed=4).iloc[0]
    assert other["size_mean_img_ci95_low"] != row["size_mean_img_ci95_low"]
    one = dataset_summary(objects[objects["image"] == "i0"], {"i0": (100, 100)}, 1.0).iloc[0]
    assert one["density_ci_method"] == "Poisson (one image)"
    assert math.isnan(one["size_mean_img_ci95_low"])
    area_um2 = 100 * 100 / 1e6
    assert one["density_ci95_low"] == pytest.approx(12.2165 / area_um2, rel=1e-3)  # count 20


def test_shape_histograms_write_png(tmp_path: Path) -> None:
    from em_lightning.analysis.plots import shape_histograms

    records = [{"image": "a", "class": c, "mask": disc(30 + 40 * k, 40, 5 + k)}
               for k, c in enumerate(["vesicle", "hole", "vesicle"])]
    table = objects_table(records, None)
    path = shape_histograms(table, tmp_path / "shape.png", truth=table)
    height, width, _ = _png_shape(path)
    assert width > 3 * 300 and height > 2 * 250  # three descriptors x two classes
