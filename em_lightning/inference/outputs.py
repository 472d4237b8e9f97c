"""Write an objects table with its summaries, figures and HTML report (predict and analyze).

One writer for both entry points, so predicted and annotated statistics are computed and
laid out identically and can be compared file by file.
"""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from em_lightning.analysis.morphology import objects_table
from em_lightning.analysis.report import write_html_report
from em_lightning.analysis.summary import border_note, distribution_objects, summarize
from em_lightning.inference.results import ImageInfo

log = logging.getLogger(__name__)

__all__ = ["concat_objects", "link_section", "thumbnail", "units", "write_config",
           "write_figures", "write_parquet", "write_report", "write_tables"]


def concat_objects(parts: Sequence[pd.DataFrame], pixel_size_nm: float | None) -> pd.DataFrame:
    """All images' objects in one table with a global 1-based ``id`` (the COCO results id)."""
    parts = [p for p in parts if len(p)]
    table = (pd.concat(parts, ignore_index=True) if parts
             else objects_table([], pixel_size_nm).assign(image_id=pd.Series(dtype=int)))
    table.insert(0, "id", np.arange(1, len(table) + 1))
    return table


def units(images: Sequence[ImageInfo]) -> tuple[float | None, str, list[str]]:
    """(pixel size, source, notes) for the report's units statement.

    Lengths are reported in nm only when every image has a pixel size; mixed sets say so.
    """
    known = [i for i in images if i.pixel_size_nm is not None]
    if not known:
        return None, "none", []
    if len(known) < len(images):
        return None, "none", [
            f"{len(known)} of {len(images)} images have a pixel size ({known[0].name}: "
            f"{known[0].pixel_size_nm:.4g} nm/px); their objects have _nm columns, but "
            "summaries over all images are in px."]
    values = sorted(float(i.pixel_size_nm) for i in known)  # type: ignore[arg-type]
    sources = sorted({i.pixel_size_source for i in known})
    source = sources[0] if len(sources) == 1 else "from " + " and ".join(sources) + " per image"
    notes = []
    if not math.isclose(values[0], values[-1], rel_tol=1e-6):
        notes.append(f"pixel sizes differ between images ({values[0]:.4g} to {values[-1]:.4g} "
                     "nm/px); the median is shown above, per-image values are in images.csv.")
    return values[len(values) // 2], source, notes


def write_parquet(table: pd.DataFrame, path: Path, notes: list[str]) -> None:
    """Write Parquet; without a working engine, say so in ``notes`` instead of failing the run
    (the CSV next to it has the same content)."""
    try:
        table.to_parquet(path, index=False)
    except ImportError as exc:
        reason = str(exc).strip().splitlines()[0]
        notes.append(f"{path.name} was not written: no usable Parquet engine ({reason}); "
                     f"the CSV has the same table")
        log.warning("%s", notes[-1])


def write_config(out_dir: Path, cfg: DictConfig) -> Path:
    """The run's config as ``config.yaml`` (resolved where possible), so the numbers can be
    reproduced even when Hydra's own run dir is elsewhere (``output=``)."""
    node = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    try:
        text = OmegaConf.to_yaml(node, resolve=True)
    except Exception:  # noqa: BLE001 - e.g. ${hydra:...} outside a Hydra run: keep as written
        text = OmegaConf.to_yaml(node)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "config.yaml"
    path.write_text(text)
    return path


def write_tables(out_dir: Path, objects: pd.DataFrame, images: Sequence[ImageInfo],
                 classes: Sequence[str], notes: list[str], prefix: str = "",
                 exclude_border: bool = True, seed: int = 0
                 ) -> dict[str, pd.DataFrame | str]:
    """objects.csv/.parquet, summary_per_image.csv, summary_dataset.csv, images.csv; problems
    (no Parquet engine) are appended to ``notes``; ``border_note`` in the result is the
    report's sentence on objects touching the image border (see analysis.summary)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shapes = {i.name: (i.height, i.width) for i in images}
    sizes = {i.name: i.pixel_size_nm for i in images}
    per_image, dataset = summarize(objects, shapes, sizes, classes, exclude_border, seed)
    counts = objects.groupby("image").size() if len(objects) else pd.Series(dtype=int)
    image_table = pd.DataFrame(
        [{"image_id": i.id, "image": i.name, "path": i.path, "height": i.height,
          "width": i.width, "pixel_size_nm": i.pixel_size_nm,
          "pixel_size_source": i.pixel_size_source, "n_objects": int(counts.get(i.name, 0))}
         for i in images],
        columns=["image_id", "image", "path", "height", "width", "pixel_size_nm",
                 "pixel_size_source", "n_objects"])
    objects.to_csv(out_dir / f"{prefix}objects.csv", index=False)
    write_parquet(objects, out_dir / f"{prefix}objects.parquet", notes)
    per_image.to_csv(out_dir / f"{prefix}summary_per_image.csv", index=False)
    dataset.to_csv(out_dir / f"{prefix}summary_dataset.csv", index=False)
    image_table.to_csv(out_dir / f"{prefix}images.csv", index=False)
    return {"objects": objects, "per_image": per_image, "dataset": dataset,
            "images": image_table, "border_note": border_note(objects, exclude_border, shapes)}


def write_figures(plot_dir: Path, objects: pd.DataFrame, truth: pd.DataFrame | None = None,
                  prefix: str = "", column: str | None = None,
                  exclude_border: bool = True) -> list[Path]:
    """Size histograms per class (annotated overlaid when ``truth``; ``column`` is the size
    column, by default the summary's), shape histograms of masks, and for rotated boxes the
    orientation rose and length-width scatter; objects touching the image border are left
    out with ``exclude_border``. Nothing to draw without objects."""
    from em_lightning.analysis.plots import (
        length_width_scatter,
        orientation_rose,
        shape_histograms,
        size_histogram,
    )

    objects = distribution_objects(objects, exclude_border)
    truth = None if truth is None else distribution_objects(truth, exclude_border)

    frames = [f for f in (objects, truth) if f is not None and len(f)]
    if not frames:
        return []
    if not len(objects) and truth is not None:  # nothing predicted: plot the annotations
        objects, truth = truth, None
    paths = [size_histogram(objects, plot_dir / f"{prefix}size_histogram.png", truth=truth,
                            column=column)]
    if "kind" in objects and (objects["kind"] == "mask").any():
        paths.append(shape_histograms(objects, plot_dir / f"{prefix}shape_histograms.png",
                                      truth=truth))
    rods = objects[objects["kind"] == "rbox"] if "kind" in objects else objects.iloc[:0]
    if len(rods):
        paths.append(orientation_rose(rods, plot_dir / f"{prefix}orientation_rose.png"))
        paths.append(length_width_scatter(rods, plot_dir / f"{prefix}length_width.png"))
    return paths


def thumbnail(src: Path, dst: Path, max_side: int = 900) -> Path:
    """A downscaled copy of an overlay for embedding; the full-size file stays linked."""
    img = cv2.imread(str(src), cv2.IMREAD_COLOR)
    if img is None:
        raise OSError(f"{src}: cannot read the overlay back")
    scale = max_side / max(img.shape[:2])
    if scale < 1:
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(dst), img):
        raise OSError(f"{dst}: could not write the thumbnail")
    return dst


def link_section(out_dir: Path, files: Sequence[Path]) -> str:
    """HTML list of relative links to the output files."""
    items = []
    for path in files:
        rel = Path(path).resolve().relative_to(out_dir.resolve()).as_posix()
        items.append(f'<li><a href="{html.escape(rel)}">{html.escape(rel)}</a></li>')
    return "<h2>Files</h2><ul>" + "".join(items) + "</ul>"


def write_report(out_dir: Path, title: str, tables: Mapping[str, pd.DataFrame],
                 figures: Sequence[Path], notes: Sequence[str], images: Sequence[ImageInfo],
                 files: Sequence[Path], filename: str = "report.html") -> Path:
    """Self-contained report (tables, embedded figures) plus links to every output file.

    The links are inserted after the fact because ``write_html_report`` escapes its notes.
    """
    pixel, source, unit_notes = units(images)
    path = write_html_report(out_dir, title, tables, figures, [*notes, *unit_notes],
                             pixel_size_nm=pixel, pixel_size_source=source, filename=filename)
    text = path.read_text(encoding="utf-8")
    links = link_section(out_dir, [f for f in files if Path(f).exists()])
    path.write_text(text.replace("</body></html>", links + "\n</body></html>"),
                    encoding="utf-8")
    return path
