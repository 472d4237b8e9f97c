"""Per-image and per-dataset statistics of an objects table, and prediction-vs-truth checks.

Sizes are the equivalent diameter for masks (particles, vesicles) and the length for rotated
boxes (rods), in nm when every object of the group has a pixel size, otherwise in px: mixing
nm and px in one statistic would be meaningless. Number densities are per µm² of image area
(image shape x pixel size), so images with no detections must be listed in ``image_shapes``
to count as zeros, and their pixel size must come from the ``pixel_size_nm`` argument (the
objects table only knows pixel sizes of images with detections).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

__all__ = [
    "SIZE_STATS",
    "compare_distributions",
    "comparison_table",
    "dataset_summary",
    "per_image_summary",
    "size_column",
    "summarize",
]

log = logging.getLogger(__name__)
PixelSizes = float | Mapping[str, float | None] | None
SIZE_STATS = ("mean", "median", "std", "p5", "p25", "p75", "p95")
_BASE_SIZE = {"mask": "equivalent_diameter", "rbox": "length"}


def size_column(objects: pd.DataFrame) -> tuple[str, str]:
    """(column, unit) used as "size" for these objects: nm if available for all, else px."""
    kinds = set(objects["kind"].dropna()) if "kind" in objects else set()
    base = _BASE_SIZE["rbox"] if kinds == {"rbox"} else _BASE_SIZE["mask"]
    if len(kinds) > 1:
        raise ValueError(f"one class mixes masks and rotated boxes ({kinds}); sizes differ")
    nm = f"{base}_nm"
    if nm in objects and len(objects) and objects[nm].notna().all():
        return nm, "nm"
    return base, "px"


def size_stats(values: Iterable[float]) -> dict[str, float]:
    """mean/median/std (sample)/percentiles; NaN where there are too few values."""
    v = np.asarray(list(values), dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return dict.fromkeys(SIZE_STATS, math.nan)
    p5, p25, p75, p95 = np.percentile(v, [5, 25, 75, 95])
    return {
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "std": float(v.std(ddof=1)) if v.size > 1 else math.nan,
        "p5": float(p5),
        "p25": float(p25),
        "p75": float(p75),
        "p95": float(p95),
    }


def _pixel_size(image: str, objects: pd.DataFrame, pixel_size_nm: PixelSizes) -> float:
    """The argument wins; otherwise the value recorded in the objects table for that image."""
    if isinstance(pixel_size_nm, Mapping):
        value = pixel_size_nm.get(image)
    else:
        value = pixel_size_nm
    if value is None and "pixel_size_nm" in objects:
        known = objects.loc[objects["image"] == image, "pixel_size_nm"].dropna()
        value = float(known.iloc[0]) if len(known) else None
    return float(value) if value is not None else math.nan


def _image_areas(
    images: list[str],
    objects: pd.DataFrame,
    image_shapes: Mapping[str, tuple[int, ...]] | None,
    pixel_size_nm: PixelSizes,
) -> pd.DataFrame:
    rows = []
    for image in images:
        shape = (image_shapes or {}).get(image)
        area_px = float(shape[0] * shape[1]) if shape is not None else math.nan
        px = _pixel_size(image, objects, pixel_size_nm)
        rows.append(
            {
                "image": image,
                "pixel_size_nm": px,
                "image_area_px": area_px,
                "image_area_um2": area_px * px**2 / 1e6,
            }
        )
    missing = [r["image"] for r in rows if math.isnan(r["pixel_size_nm"])]
    if missing and len(missing) < len(rows):
        log.warning("no pixel size for %d images (e.g. %s): densities are NaN", len(missing),
                    missing[0])  # fmt: skip
    return pd.DataFrame(rows, columns=["image", "pixel_size_nm", "image_area_px", "image_area_um2"])


def _stats_row(group: pd.DataFrame, count: int) -> dict[str, Any]:
    column, unit = size_column(group) if count else ("", "")
    values = group[column] if count else []
    return {
        "count": count,
        "size_column": column,
        "size_unit": unit,
        **{f"size_{k}": v for k, v in size_stats(values).items()},
    }


def _classes(objects: pd.DataFrame, classes: Iterable[Any] | None) -> list[Any]:
    if classes is not None:
        return list(classes)
    return sorted(objects["class"].dropna().unique().tolist(), key=str)


def per_image_summary(
    objects: pd.DataFrame,
    image_shapes: Mapping[str, tuple[int, ...]] | None = None,
    pixel_size_nm: PixelSizes = None,
    classes: Iterable[Any] | None = None,
) -> pd.DataFrame:
    """One row per (image, class): count, density per µm² and size statistics.

    Every image in ``image_shapes`` gets a row per class, with count 0 where nothing was found.
    """
    images = list(image_shapes or {})
    images += [i for i in dict.fromkeys(objects["image"]) if i not in images]
    areas = _image_areas(images, objects, image_shapes, pixel_size_nm).set_index("image")
    rows = []
    for image in images:
        for cls in _classes(objects, classes):
            group = objects[(objects["image"] == image) & (objects["class"] == cls)]
            area_um2 = areas.at[image, "image_area_um2"]
            rows.append(
                {
                    "image": image,
                    "class": cls,
                    **areas.loc[image].to_dict(),
                    "density_per_um2": len(group) / area_um2 if area_um2 > 0 else math.nan,
                    **_stats_row(group, len(group)),
                }
            )
    return pd.DataFrame(rows, columns=_columns(per_image=True))


def dataset_summary(
    objects: pd.DataFrame,
    image_shapes: Mapping[str, tuple[int, ...]] | None = None,
    pixel_size_nm: PixelSizes = None,
    classes: Iterable[Any] | None = None,
) -> pd.DataFrame:
    """One row per class over all images: totals, counts per image, pooled density and sizes.

    The density is total count / total area, and is NaN unless every image has a known area.
    """
    per_image = per_image_summary(objects, image_shapes, pixel_size_nm, classes)
    rows = []
    for cls in _classes(objects, classes):
        sub = per_image[per_image["class"] == cls]
        group = objects[objects["class"] == cls]
        total_um2 = sub["image_area_um2"].sum(min_count=1)
        complete = len(sub) and sub["image_area_um2"].notna().all()
        counts = sub["count"].to_numpy(np.float64)
        rows.append(
            {
                "class": cls,
                "n_images": len(sub),
                "count_per_image_mean": float(counts.mean()) if len(counts) else math.nan,
                "count_per_image_std": float(counts.std(ddof=1)) if len(counts) > 1 else math.nan,
                "image_area_um2": float(total_um2) if complete else math.nan,
                "density_per_um2": len(group) / total_um2 if complete else math.nan,
                **_stats_row(group, len(group)),
            }
        )
    return pd.DataFrame(rows, columns=_columns(per_image=False))


def _columns(per_image: bool) -> list[str]:
    head = (
        ["image", "class", "pixel_size_nm", "image_area_px", "image_area_um2", "density_per_um2"]
        if per_image
        else [
            "class",
            "n_images",
            "count_per_image_mean",
            "count_per_image_std",
            "image_area_um2",
            "density_per_um2",
        ]
    )
    stats_cols = ["count", "size_column", "size_unit", *(f"size_{k}" for k in SIZE_STATS)]
    return head + stats_cols


def summarize(
    objects: pd.DataFrame,
    image_shapes: Mapping[str, tuple[int, ...]] | None = None,
    pixel_size_nm: PixelSizes = None,
    classes: Iterable[Any] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per_image, per_dataset) summaries; see :func:`per_image_summary`."""
    return (
        per_image_summary(objects, image_shapes, pixel_size_nm, classes),
        dataset_summary(objects, image_shapes, pixel_size_nm, classes),
    )


def _ks(pred: pd.Series, truth: pd.Series) -> tuple[float, float]:
    a = pred.dropna().to_numpy(np.float64)
    b = truth.dropna().to_numpy(np.float64)
    if a.size == 0 or b.size == 0:
        return math.nan, math.nan
    result = stats.ks_2samp(a, b)
    return float(result.statistic), float(result.pvalue)


def _counts(n_pred: int, n_truth: int) -> dict[str, float]:
    return {
        "n_pred": n_pred,
        "n_truth": n_truth,
        "count_error": n_pred - n_truth,
        "abs_count_error": abs(n_pred - n_truth),
        "relative_count_error": (n_pred - n_truth) / n_truth if n_truth else math.nan,
    }


def compare_distributions(pred: pd.DataFrame, truth: pd.DataFrame, column: str) -> dict[str, Any]:
    """Does the predicted size (or shape) distribution match the annotated one?

    Returns the two-sample KS statistic/p-value on ``column`` pooled over classes and per
    class, plus count errors (pred - truth; relative to truth). A small p-value means the
    detector measures a different distribution than the annotators, even if counts agree.
    """
    for name, df in (("pred", pred), ("truth", truth)):
        if column not in df:
            raise KeyError(f"column {column!r} missing from {name} table")
    ks, p = _ks(pred[column], truth[column])
    per_class = {}
    for cls in sorted(set(pred["class"].dropna()) | set(truth["class"].dropna()), key=str):
        a, b = pred[pred["class"] == cls], truth[truth["class"] == cls]
        ks_c, p_c = _ks(a[column], b[column])
        per_class[cls] = {**_counts(len(a), len(b)), "ks_statistic": ks_c, "ks_pvalue": p_c}
    return {
        "column": column,
        **_counts(len(pred), len(truth)),
        "ks_statistic": ks,
        "ks_pvalue": p,
        "per_class": per_class,
    }


def comparison_table(result: Mapping[str, Any]) -> pd.DataFrame:
    """Flatten :func:`compare_distributions` output to one row per class plus "all"."""
    keys = ["n_pred", "n_truth", "count_error", "abs_count_error", "relative_count_error"]
    keys += ["ks_statistic", "ks_pvalue"]
    rows = [{"class": cls, **{k: v[k] for k in keys}} for cls, v in result["per_class"].items()]
    rows.append({"class": "all", **{k: result[k] for k in keys}})
    table = pd.DataFrame(rows, columns=["class", *keys])
    table.insert(1, "column", result["column"])
    return table
