"""Per-image and per-dataset statistics of an objects table, and prediction-vs-truth checks.

Sizes are the equivalent diameter for masks (particles, vesicles) and the length for rotated
boxes (rods), in nm when every object of the group has a pixel size, otherwise in px: mixing
nm and px in one statistic would be meaningless. Number densities are per µm² of image area
(image shape x pixel size), so images with no detections must be listed in ``image_shapes``
to count as zeros, and their pixel size must come from the ``pixel_size_nm`` argument (the
objects table only knows pixel sizes of images with detections).

Objects touching the image border (column ``touches_border``; for tiled prediction the border
of the whole image, not the seams between tiles, where objects are merged whole) are cut
off, so their sizes and shapes are wrong: with ``exclude_border=True`` (the default, Fiji's
"exclude on edges") they are left out of the size statistics and distributions
(``n_border`` says how many), but they still count for ``count``, the number density and
the area fraction, which describe what lies inside the image.

``area_fraction`` is the summed object area (px) over the image area (px): the coverage.
Overlapping objects of one class count twice (rare after NMS and in annotations).

Uncertainty (95 % intervals, deterministic: the random generator is seeded from ``seed`` and
the image/class names): ``size_mean_ci95_*`` / ``size_median_ci95_*`` are percentile
bootstrap intervals over objects (``N_BOOT`` resamples); in the dataset table,
``*_img_ci95_*`` resample whole images (objects of one image are not independent: same
specimen region, same focus), which is the interval to publish when there are several
images. Density intervals: per image the exact Poisson interval of the count; per dataset a
bootstrap over images (``density_ci_method`` says which).
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

__all__ = [
    "N_BOOT",
    "SIZE_STATS",
    "bootstrap_ci",
    "border_flags",
    "border_note",
    "compare_distributions",
    "distribution_objects",
    "comparison_table",
    "dataset_summary",
    "headline_table",
    "per_image_summary",
    "poisson_ci",
    "size_column",
    "summarize",
    "touches_border",
]

log = logging.getLogger(__name__)
PixelSizes = float | Mapping[str, float | None] | None
SIZE_STATS = ("mean", "median", "std", "p5", "p25", "p75", "p95")
_BASE_SIZE = {"mask": "equivalent_diameter", "rbox": "length"}
N_BOOT = 2000  # bootstrap resamples: percentiles of the 95 % interval stable to ~1 %
LEVEL = 0.95
_CHUNK = 2_000_000  # values per bootstrap batch (memory bound)


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


def _rng(seed: int, *names: Any) -> np.random.Generator:
    """A generator that depends only on ``seed`` and the names (not on the table order)."""
    key = zlib.crc32("\x1f".join(str(n) for n in names).encode("utf-8"))
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, key])


def bootstrap_ci(values: Iterable[float], statistic: Callable[..., np.ndarray],
                 rng: np.random.Generator, n_boot: int = N_BOOT,
                 level: float = LEVEL) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(sample, axis=1)`` over resampled values.

    NaN with fewer than two finite values (no spread to resample).
    """
    v = np.asarray(list(values), dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return math.nan, math.nan
    batch = max(1, _CHUNK // v.size)
    stats_ = [statistic(v[rng.integers(0, v.size, (min(batch, n_boot - done), v.size))], axis=1)
              for done in range(0, n_boot, batch)]
    alpha = (1.0 - level) / 2
    low, high = np.quantile(np.concatenate(stats_), [alpha, 1.0 - alpha])
    return float(low), float(high)


def _image_bootstrap(groups: list[np.ndarray], counts: np.ndarray, areas: np.ndarray,
                     rng: np.random.Generator, n_boot: int = N_BOOT, level: float = LEVEL
                     ) -> dict[str, float]:
    """Intervals from resampling whole images: the density (total count / total area over
    all images, ``counts`` and ``areas`` in µm² per image, NaN when unknown) and the pooled
    size mean/median (over the images that have sized objects, ``groups``)."""
    out = dict.fromkeys(["mean_low", "mean_high", "median_low", "median_high",
                         "density_low", "density_high"], math.nan)
    alpha = (1.0 - level) / 2
    n = len(counts)
    if n >= 2 and np.isfinite(areas).all() and (areas > 0).all():
        idx = rng.integers(0, n, (n_boot, n))
        dens = counts[idx].sum(1) / areas[idx].sum(1)
        out["density_low"], out["density_high"] = np.quantile(dens, [alpha, 1 - alpha])
    groups = [g for g in groups if g.size]
    if len(groups) >= 2:
        idx = rng.integers(0, len(groups), (n_boot, len(groups)))
        sums = np.array([g.sum() for g in groups])[idx].sum(1)
        means = sums / np.array([g.size for g in groups], np.float64)[idx].sum(1)
        medians = np.array([np.median(np.concatenate([groups[k] for k in row])) for row in idx])
        out["mean_low"], out["mean_high"] = np.quantile(means, [alpha, 1 - alpha])
        out["median_low"], out["median_high"] = np.quantile(medians, [alpha, 1 - alpha])
    return {k: float(v) for k, v in out.items()}


def poisson_ci(count: int, level: float = LEVEL) -> tuple[float, float]:
    """Exact (Garwood) interval of a Poisson mean given one observed count."""
    alpha = 1.0 - level
    low = 0.0 if count == 0 else float(stats.chi2.ppf(alpha / 2, 2 * count) / 2)
    high = float(stats.chi2.ppf(1 - alpha / 2, 2 * count + 2) / 2)
    return low, high


def touches_border(boxes: np.ndarray, height: Any, width: Any) -> np.ndarray:
    """Which axis-aligned extents ``(x0, y0, x1, y1)`` (pixel edges, image spanning
    ``[0, width] x [0, height]``) reach the centre of an outermost pixel row or column: for a
    mask, it has a pixel on the border."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return ((b[:, 0] <= 0.5) | (b[:, 1] <= 0.5) | (b[:, 2] >= np.asarray(width) - 0.5)
            | (b[:, 3] >= np.asarray(height) - 0.5))


def border_flags(objects: pd.DataFrame,
                 image_shapes: Mapping[str, tuple[int, ...]] | None = None) -> pd.Series:
    """``touches_border`` of each object: the column when present (written by ``predict`` and
    ``analyze``), else computed from the ``bbox_*`` columns and the image shapes, else False.
    """
    if "touches_border" in objects:
        return objects["touches_border"].fillna(False).astype(bool)
    cols = ["bbox_x", "bbox_y", "bbox_w", "bbox_h"]
    if not len(objects) or not all(c in objects for c in cols) or not image_shapes:
        return pd.Series(False, index=objects.index)
    shapes = objects["image"].map(lambda i: (image_shapes or {}).get(i))
    height = shapes.map(lambda s: s[0] if s is not None else np.nan).astype(float)
    width = shapes.map(lambda s: s[1] if s is not None else np.nan).astype(float)
    x0, y0 = objects["bbox_x"].to_numpy(float), objects["bbox_y"].to_numpy(float)
    boxes = np.stack([x0, y0, x0 + objects["bbox_w"], y0 + objects["bbox_h"]], 1)
    flags = touches_border(boxes, height.to_numpy(), width.to_numpy())
    return pd.Series(flags, index=objects.index)


def distribution_objects(objects: pd.DataFrame, exclude_border: bool = True,
                         image_shapes: Mapping[str, tuple[int, ...]] | None = None
                         ) -> pd.DataFrame:
    """The objects that enter size and shape distributions (all, or those off the border)."""
    if not exclude_border or not len(objects):
        return objects
    return objects[~border_flags(objects, image_shapes)]


def border_note(objects: pd.DataFrame, exclude_border: bool = True,
                image_shapes: Mapping[str, tuple[int, ...]] | None = None) -> str:
    """One sentence for the report: how many objects touch the border and what was done."""
    n = int(border_flags(objects, image_shapes).sum()) if len(objects) else 0
    if exclude_border:
        return (f"{n} of {len(objects)} objects touch the image border: excluded from size and "
                "shape statistics and distributions (exclude_border=true; they still count "
                "for number density and area fraction)")
    return (f"{n} of {len(objects)} objects touch the image border and are included in all "
            "statistics (exclude_border=false); their sizes are those of the visible part")


def _stats_row(group: pd.DataFrame, n_border: int, sized: pd.DataFrame, rng: Any
               ) -> dict[str, Any]:
    count = len(group)
    column, unit = size_column(group) if count else ("", "")
    values = sized[column].to_numpy(np.float64) if count and len(sized) else np.array([])
    row: dict[str, Any] = {
        "count": count,
        "n_border": n_border,
        "n_sized": len(sized),
        "size_column": column,
        "size_unit": unit,
        **{f"size_{k}": v for k, v in size_stats(values).items()},
    }
    for name, fn in (("mean", np.mean), ("median", np.median)):
        low, high = bootstrap_ci(values, fn, rng) if values.size else (math.nan, math.nan)
        row[f"size_{name}_ci95_low"], row[f"size_{name}_ci95_high"] = low, high
    return row


def _classes(objects: pd.DataFrame, classes: Iterable[Any] | None) -> list[Any]:
    if classes is not None:
        return list(classes)
    return sorted(objects["class"].dropna().unique().tolist(), key=str)


def _object_area_px(group: pd.DataFrame) -> float:
    return float(group["area"].sum()) if "area" in group and len(group) else 0.0


def per_image_summary(
    objects: pd.DataFrame,
    image_shapes: Mapping[str, tuple[int, ...]] | None = None,
    pixel_size_nm: PixelSizes = None,
    classes: Iterable[Any] | None = None,
    exclude_border: bool = True,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (image, class): count, density per µm² (with its Poisson interval), area
    fraction, size statistics with bootstrap intervals (see the module docstring).

    Every image in ``image_shapes`` gets a row per class, with count 0 where nothing was found.
    """
    images = list(image_shapes or {})
    images += [i for i in dict.fromkeys(objects["image"]) if i not in images]
    areas = _image_areas(images, objects, image_shapes, pixel_size_nm).set_index("image")
    on_border = border_flags(objects, image_shapes)
    rows = []
    for image in images:
        for cls in _classes(objects, classes):
            where = (objects["image"] == image) & (objects["class"] == cls)
            group, edge = objects[where], on_border[where]
            sized = group[~edge] if exclude_border else group
            area_um2 = areas.at[image, "image_area_um2"]
            area_px = areas.at[image, "image_area_px"]
            low, high = poisson_ci(len(group))
            known = area_um2 > 0
            rows.append(
                {
                    "image": image,
                    "class": cls,
                    **areas.loc[image].to_dict(),
                    "density_per_um2": len(group) / area_um2 if known else math.nan,
                    "density_ci95_low": low / area_um2 if known else math.nan,
                    "density_ci95_high": high / area_um2 if known else math.nan,
                    "area_fraction": _object_area_px(group) / area_px
                    if area_px > 0 else math.nan,
                    **_stats_row(group, int(edge.sum()), sized,
                                 _rng(seed, "objects", image, cls)),
                }
            )
    return pd.DataFrame(rows, columns=_columns(per_image=True))


def dataset_summary(
    objects: pd.DataFrame,
    image_shapes: Mapping[str, tuple[int, ...]] | None = None,
    pixel_size_nm: PixelSizes = None,
    classes: Iterable[Any] | None = None,
    exclude_border: bool = True,
    seed: int = 0,
    per_image: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per class over all images: totals, counts per image, pooled density, area
    fraction and sizes, with intervals over objects and over images (module docstring).

    The density is total count / total area, and is NaN unless every image has a known area.
    """
    if per_image is None:
        per_image = per_image_summary(objects, image_shapes, pixel_size_nm, classes,
                                      exclude_border, seed)
    on_border = border_flags(objects, image_shapes)
    rows = []
    for cls in _classes(objects, classes):
        sub = per_image[per_image["class"] == cls]
        where = objects["class"] == cls
        group, edge = objects[where], on_border[where]
        sized = group[~edge] if exclude_border else group
        total_um2 = sub["image_area_um2"].sum(min_count=1)
        total_px = sub["image_area_px"].sum(min_count=1)
        complete = len(sub) and sub["image_area_um2"].notna().all()
        counts = sub["count"].to_numpy(np.float64)
        row = {
            "class": cls,
            "n_images": len(sub),
            "count_per_image_mean": float(counts.mean()) if len(counts) else math.nan,
            "count_per_image_std": float(counts.std(ddof=1)) if len(counts) > 1 else math.nan,
            "image_area_um2": float(total_um2) if complete else math.nan,
            "density_per_um2": len(group) / total_um2 if complete else math.nan,
            "area_fraction": _object_area_px(group) / total_px
            if len(sub) and sub["image_area_px"].notna().all() and total_px > 0 else math.nan,
            **_stats_row(group, int(edge.sum()), sized, _rng(seed, "objects", cls)),
        }
        row.update(_dataset_intervals(row, sub, sized, len(group), complete,
                                      _rng(seed, "images", cls)))
        rows.append(row)
    return pd.DataFrame(rows, columns=_columns(per_image=False))


def _dataset_intervals(row: Mapping[str, Any], sub: pd.DataFrame, sized: pd.DataFrame,
                       count: int, complete: bool, rng: np.random.Generator) -> dict[str, Any]:
    """Image-bootstrap intervals (several images), else the Poisson interval for density."""
    column = row["size_column"]
    groups = [sized.loc[sized["image"] == image, column].to_numpy(np.float64)
              if column else np.array([]) for image in sub["image"]]
    groups = [g[np.isfinite(g)] for g in groups]
    boot = _image_bootstrap(groups, sub["count"].to_numpy(np.float64),
                            sub["image_area_um2"].to_numpy(np.float64), rng)
    out: dict[str, Any] = {
        "size_mean_img_ci95_low": boot["mean_low"],
        "size_mean_img_ci95_high": boot["mean_high"],
        "size_median_img_ci95_low": boot["median_low"],
        "size_median_img_ci95_high": boot["median_high"],
    }
    if len(sub) >= 2:
        out.update(density_ci95_low=boot["density_low"], density_ci95_high=boot["density_high"],
                   density_ci_method="bootstrap over images")
    elif complete:
        low, high = poisson_ci(count)
        area = float(sub["image_area_um2"].sum())
        out.update(density_ci95_low=low / area, density_ci95_high=high / area,
                   density_ci_method="Poisson (one image)")
    else:
        out.update(density_ci95_low=math.nan, density_ci95_high=math.nan,
                   density_ci_method="")
    return out


_SIZE_CI = ["size_mean_ci95_low", "size_mean_ci95_high", "size_median_ci95_low",
            "size_median_ci95_high"]
_IMG_CI = ["size_mean_img_ci95_low", "size_mean_img_ci95_high", "size_median_img_ci95_low",
           "size_median_img_ci95_high"]


def _columns(per_image: bool) -> list[str]:
    head = (
        ["image", "class", "pixel_size_nm", "image_area_px", "image_area_um2", "density_per_um2",
         "density_ci95_low", "density_ci95_high", "area_fraction"]
        if per_image
        else [
            "class",
            "n_images",
            "count_per_image_mean",
            "count_per_image_std",
            "image_area_um2",
            "density_per_um2",
            "density_ci95_low",
            "density_ci95_high",
            "density_ci_method",
            "area_fraction",
        ]
    )
    stats_cols = ["count", "n_border", "n_sized", "size_column", "size_unit",
                  *(f"size_{k}" for k in SIZE_STATS), *_SIZE_CI]
    return head + stats_cols + ([] if per_image else _IMG_CI)


def summarize(
    objects: pd.DataFrame,
    image_shapes: Mapping[str, tuple[int, ...]] | None = None,
    pixel_size_nm: PixelSizes = None,
    classes: Iterable[Any] | None = None,
    exclude_border: bool = True,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per_image, per_dataset) summaries; see :func:`per_image_summary`."""
    per_image = per_image_summary(objects, image_shapes, pixel_size_nm, classes,
                                  exclude_border, seed)
    return per_image, dataset_summary(objects, image_shapes, pixel_size_nm, classes,
                                      exclude_border, seed, per_image=per_image)


def _fmt(value: float) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.4g}"


def _with_ci(value: float, low: float, high: float) -> str:
    if not (np.isfinite(low) and np.isfinite(high)):
        return _fmt(value)
    return f"{_fmt(value)} [{_fmt(low)}, {_fmt(high)}]"


def _border_cell(n_border: int, excluded: bool) -> str:
    if not n_border:
        return "0"
    return f"{n_border} ({'left out of sizes' if excluded else 'kept in sizes'})"


def headline_table(dataset: pd.DataFrame) -> pd.DataFrame:
    """The dataset summary as a short table for reports: each number with its 95 % interval
    (over images when there are several, else over objects), border objects counted."""
    rows = []
    for _, r in dataset.iterrows():
        over_images = np.isfinite(r["size_mean_img_ci95_low"])
        key = "_img_ci95" if over_images else "_ci95"
        unit = r["size_unit"] or "-"
        rows.append({
            "class": r["class"],
            "images": int(r["n_images"]),
            "objects": int(r["count"]),
            "on border": _border_cell(int(r["n_border"]), r["n_sized"] < r["count"]),
            "density per µm² [95 % CI]": _with_ci(r["density_per_um2"], r["density_ci95_low"],
                                                  r["density_ci95_high"]),
            "area fraction": _fmt(r["area_fraction"]),
            "mean size [95 % CI]": _with_ci(r["size_mean"], r[f"size_mean{key}_low"],
                                             r[f"size_mean{key}_high"]),
            "median size [95 % CI]": _with_ci(r["size_median"], r[f"size_median{key}_low"],
                                               r[f"size_median{key}_high"]),
            "size": f"{r['size_column']} ({unit})" if r["size_column"] else "",
            "CI over": ("images" if over_images else "objects") if r["n_sized"] else "",
        })
    return pd.DataFrame(rows)


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


def compare_distributions(pred: pd.DataFrame, truth: pd.DataFrame, column: str,
                          exclude_border: bool = False) -> dict[str, Any]:
    """Does the predicted size (or shape) distribution match the annotated one?

    Returns the two-sample KS statistic/p-value on ``column`` pooled over classes and per
    class, plus count errors (pred - truth; relative to truth). A small p-value means the
    detector measures a different distribution than the annotators, even if counts agree.
    With ``exclude_border`` the distributions leave out objects touching the image border;
    the counts always include them.
    """
    for name, df in (("pred", pred), ("truth", truth)):
        if column not in df:
            raise KeyError(f"column {column!r} missing from {name} table")
    pred_d = distribution_objects(pred, exclude_border)
    truth_d = distribution_objects(truth, exclude_border)
    ks, p = _ks(pred_d[column], truth_d[column])
    per_class = {}
    for cls in sorted(set(pred["class"].dropna()) | set(truth["class"].dropna()), key=str):
        a, b = pred[pred["class"] == cls], truth[truth["class"] == cls]
        ks_c, p_c = _ks(pred_d.loc[pred_d["class"] == cls, column],
                        truth_d.loc[truth_d["class"] == cls, column])
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
