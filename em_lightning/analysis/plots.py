"""Figures of measured microstructure; each function writes one PNG and returns its path.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot, no global
backend switch), so plotting works headless and from worker threads. The overlay is drawn
with OpenCV at native resolution so that outlines land on exact pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from em_lightning.analysis.morphology import rbox_corners
from em_lightning.analysis.summary import size_column
from em_lightning.data.microscopy import normalize_to_float

__all__ = [
    "class_colors",
    "length_width_scatter",
    "orientation_rose",
    "overlay_png",
    "shape_histograms",
    "size_histogram",
]

#: Shape descriptors of masks plotted by :func:`shape_histograms`, with their natural ranges.
SHAPE_COLUMNS = {"circularity": (0.0, 1.0), "aspect_ratio": None, "solidity": (0.0, 1.0)}

_PALETTE = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:cyan")


def class_colors(labels: Sequence[Any]) -> dict[Any, tuple[float, float, float]]:
    """Stable colour per class (sorted by name), shared by all figures of a report."""
    classes = sorted(set(labels), key=str)
    return {c: to_rgb(_PALETTE[i % len(_PALETTE)]) for i, c in enumerate(classes)}


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)
    return path


def _grid(n: int, polar: bool = False) -> tuple[Figure, list[Any]]:
    cols = min(n, 3)
    rows = max(1, math.ceil(n / cols))
    fig = Figure(figsize=(4.2 * cols, 3.6 * rows), layout="constrained")
    kw = {"projection": "polar"} if polar else {}
    return fig, [fig.add_subplot(rows, cols, i + 1, **kw) for i in range(max(n, 1))]


def _unit_label(column: str) -> str:
    if column.endswith("_nm2"):
        return f"{column[:-4]} (nm²)"
    if column.endswith("_nm"):
        return f"{column[:-3]} (nm)"
    return f"{column} (px)"


def size_histogram(
    objects: pd.DataFrame,
    path: str | Path,
    truth: pd.DataFrame | None = None,
    column: str | None = None,
    bins: int = 30,
) -> Path:
    """One panel per class; with ``truth``, annotated sizes are overlaid on shared bins.

    ``column`` defaults to the summary's size column (equivalent diameter or rod length).
    """
    frames = [objects] + ([truth] if truth is not None else [])
    classes = sorted(set().union(*(set(f["class"].dropna()) for f in frames)), key=str)
    colors = class_colors(classes)
    fig, axes = _grid(len(classes))
    for ax, cls in zip(axes, classes):
        pred = objects[objects["class"] == cls]
        ref = truth[truth["class"] == cls] if truth is not None else None
        col = column or size_column(pred if len(pred) else ref)[0]  # type: ignore[arg-type]
        values = [f[col].dropna().to_numpy(float) for f in (pred, ref) if f is not None]
        pooled = np.concatenate(values) if values else np.array([])
        edges = np.histogram_bin_edges(pooled, bins=bins) if pooled.size else bins
        ax.hist(
            values[0],
            bins=edges,
            color=colors[cls],
            alpha=0.6,
            label=f"predicted (n={len(values[0])})",
        )
        if ref is not None:
            ax.hist(
                values[1],
                bins=edges,
                histtype="step",
                color="k",
                lw=1.5,
                label=f"annotated (n={len(values[1])})",
            )
        ax.set(title=str(cls), xlabel=_unit_label(col), ylabel="count")
        ax.legend(fontsize="small")
    return _save(fig, path)


def shape_histograms(
    objects: pd.DataFrame,
    path: str | Path,
    truth: pd.DataFrame | None = None,
    columns: Sequence[str] = tuple(SHAPE_COLUMNS),
    bins: int = 25,
) -> Path:
    """Circularity, aspect ratio and solidity of mask objects: one row of panels per class,
    one column per descriptor; with ``truth``, annotated values are overlaid on shared bins."""
    frames = [f for f in (objects, truth) if f is not None]
    masks = [f[f["kind"] == "mask"] if "kind" in f else f for f in frames]
    classes = sorted(set().union(*(set(f["class"].dropna()) for f in masks)), key=str)
    colors = class_colors(classes)
    rows, cols = max(len(classes), 1), len(columns)
    fig = Figure(figsize=(3.6 * cols, 2.9 * rows), layout="constrained")
    for r, cls in enumerate(classes):
        parts = [f.loc[f["class"] == cls] for f in masks]
        for c, column in enumerate(columns):
            ax = fig.add_subplot(rows, cols, r * cols + c + 1)
            values = [p[column].to_numpy(float) for p in parts]
            values = [v[np.isfinite(v)] for v in values]
            pooled = np.concatenate(values)
            span = SHAPE_COLUMNS.get(column)
            edges = (np.linspace(*span, bins + 1) if span is not None
                     else np.histogram_bin_edges(pooled, bins=bins) if pooled.size else bins)
            ax.hist(values[0], bins=edges, color=colors[cls], alpha=0.6,
                    label=f"{'predicted' if truth is not None else cls} (n={values[0].size})")
            if truth is not None:
                ax.hist(values[1], bins=edges, histtype="step", color="k", lw=1.5,
                        label=f"annotated (n={values[1].size})")
            ax.set(title=f"{cls}: {column.replace('_', ' ')}", xlabel=column, ylabel="count")
            ax.legend(fontsize="x-small")
    return _save(fig, path)


def orientation_rose(
    objects: pd.DataFrame, path: str | Path, column: str = "orientation_deg", bins: int = 18
) -> Path:
    """Polar histogram of axis orientations per class; [0, 180) is mirrored to [180, 360)
    because an axis has no direction. 0° = +x, counter-clockwise as seen on screen."""
    classes = sorted(objects["class"].dropna().unique().tolist(), key=str)
    colors = class_colors(classes)
    fig, axes = _grid(len(classes), polar=True)
    width = math.pi / bins
    for ax, cls in zip(axes, classes):
        deg = objects.loc[objects["class"] == cls, column].dropna().to_numpy(float) % 180.0
        counts, edges = np.histogram(np.radians(deg), bins=bins, range=(0.0, math.pi))
        theta = np.concatenate([edges[:-1], edges[:-1] + math.pi])
        ax.bar(
            theta,
            np.tile(counts, 2),
            width=width,
            align="edge",
            color=colors[cls],
            edgecolor="k",
            lw=0.5,
        )
        ax.set_title(f"{cls} (n={deg.size})")
    return _save(fig, path)


def length_width_scatter(objects: pd.DataFrame, path: str | Path) -> Path:
    """Long vs short axis per object, coloured by class: rod boxes use length/width, masks
    the moment axes; nm when every object has a pixel size."""
    classes = sorted(objects["class"].dropna().unique().tolist(), key=str)
    colors = class_colors(classes)
    fig = Figure(figsize=(5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    units = set()
    for cls in classes:
        sub = objects[objects["class"] == cls]
        x, y = _long_short(sub)
        units.add(x.endswith("_nm"))
        ax.scatter(sub[x], sub[y], s=12, color=colors[cls], label=f"{cls} (n={len(sub)})")
    unit = "nm" if units == {True} else "px"
    ax.set(xlabel=f"length ({unit})", ylabel=f"width ({unit})")
    ax.legend(fontsize="small")
    return _save(fig, path)


def _long_short(sub: pd.DataFrame) -> tuple[str, str]:
    rods = "kind" in sub and (sub["kind"] == "rbox").all()
    x, y = ("length", "width") if rods else ("major_axis", "minor_axis")
    if f"{x}_nm" in sub and sub[f"{x}_nm"].notna().all():
        return f"{x}_nm", f"{y}_nm"
    return x, y


def _gray_to_bgr(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3:
        image = image[..., :3].mean(axis=2)
    gray = np.rint(normalize_to_float(image) * 255).astype(np.uint8)
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)


def overlay_png(
    image: np.ndarray,
    shapes: Sequence[np.ndarray | Sequence[float]],
    labels: Sequence[Any],
    path: str | Path,
    thickness: int = 1,
) -> Path:
    """Outline each detection on the grayscale image in its class colour and save as PNG.

    ``shapes``: bool HxW masks and/or rotated boxes (cx, cy, w, h, angle_rad), one per label.
    Integer images are scaled by their dtype range (as the model sees them), floats by
    min/max. A legend with the class names is written in the top-left corner.
    """
    if len(shapes) != len(labels):
        raise ValueError(f"{len(shapes)} shapes but {len(labels)} labels")
    canvas = _gray_to_bgr(np.asarray(image))
    colors = bgr_class_colors(labels)
    for shape, label in zip(shapes, labels):
        color = colors[label]
        arr = np.asarray(shape)
        if arr.ndim == 2:
            contours, _ = cv2.findContours(
                arr.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE
            )
            cv2.drawContours(canvas, contours, -1, color, thickness)
        else:
            corners = np.rint(rbox_corners(*arr.astype(float))).astype(np.int32)
            cv2.polylines(canvas, [corners], True, color, thickness)
    return save_with_legend(canvas, colors, path)


def bgr_class_colors(labels: Sequence) -> dict:
    """The figures' class colours as OpenCV BGR tuples in [0, 255]."""
    return {c: tuple(int(round(255 * v)) for v in rgb[::-1])
            for c, rgb in class_colors(labels).items()}


def save_with_legend(canvas: np.ndarray, colors: dict, path: str | Path) -> Path:
    """Write the class names in their colours (top left) and save ``canvas`` as PNG."""
    for i, (cls, color) in enumerate(colors.items()):
        cv2.putText(canvas, str(cls), (4, 14 + 14 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.4, color, 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), canvas):
        raise OSError(f"{path}: could not write the PNG")
    return path
