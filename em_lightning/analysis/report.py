"""A single self-contained HTML report (tables + embedded figures) to share or archive.

Everything is inlined (CSS, PNGs as base64 data URIs), so the file can be mailed or attached
to a lab notebook without losing its figures. The units section says whether lengths are nm
or px and where the pixel size came from, because a number without that is not reusable.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

__all__ = ["units_statement", "write_html_report"]

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}
_SOURCES = {
    "metadata": "read from the image file metadata",
    "user": "given by the user (no calibration found in the files)",
    "none": "unknown",
}
_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { border-bottom: 2px solid #446; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #eef; } td:first-child, th:first-child { text-align: left; }
.units { background: #f6f6e8; border-left: 4px solid #aa4; padding: .5em 1em; }
figure { display: inline-block; margin: .5em; } img { max-width: 100%; }
figcaption { font-size: .8em; color: #555; } .meta { color: #777; font-size: .8em; }
"""


def units_statement(pixel_size_nm: float | None, pixel_size_source: str = "none") -> str:
    """One sentence stating the length unit and the provenance of the pixel size."""
    if pixel_size_nm is None or not math.isfinite(pixel_size_nm):
        return (
            "Pixel size unknown: lengths are in pixels (px), areas in px², "
            "and no number densities per µm² can be given."
        )
    source = _SOURCES.get(pixel_size_source, pixel_size_source)
    return (
        f"Lengths in nm (columns ending in _nm), areas in nm² (_nm2), densities per µm²; "
        f"pixel size {pixel_size_nm:.4g} nm/px, {source}. Columns without a suffix are in px."
    )


def _table_html(name: str, table: pd.DataFrame) -> str:
    body = table.to_html(
        index=False, border=0, na_rep="–", float_format=lambda v: f"{v:.4g}", escape=True
    )
    return f"<h3>{html.escape(name)}</h3>\n{body}"


def _figure_html(path: Path) -> str:
    mime = _MIME.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"{path}: cannot embed {path.suffix!r} images; use PNG or JPEG")
    if not path.is_file():
        raise FileNotFoundError(f"report image not found: {path}")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = html.escape(path.stem.replace("_", " "))
    return (
        f'<figure><img alt="{caption}" src="data:{mime};base64,{data}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def write_html_report(
    out_dir: str | Path,
    title: str,
    summary_tables: Mapping[str, pd.DataFrame],
    images: Sequence[str | Path],
    notes: Sequence[str],
    pixel_size_nm: float | None = None,
    pixel_size_source: str = "none",
    filename: str = "report.html",
) -> Path:
    """Write ``out_dir/filename`` and return its path.

    ``pixel_size_nm``/``pixel_size_source`` ("metadata" | "user" | "none") feed the units
    statement; for datasets with per-image pixel sizes pass a representative value and keep
    the per-image ``pixel_size_nm`` column in a table.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    units = html.escape(units_statement(pixel_size_nm, pixel_size_source))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">generated {stamp}</p>',
        f'<p class="units"><b>Units.</b> {units}</p>',
    ]
    if notes:
        items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
        parts.append(f"<h2>Notes</h2><ul>{items}</ul>")
    if summary_tables:
        parts.append("<h2>Tables</h2>")
        parts += [_table_html(name, table) for name, table in summary_tables.items()]
    if images:
        parts.append("<h2>Figures</h2>")
        parts += [_figure_html(Path(p)) for p in images]
    parts.append("</body></html>")
    path = out_dir / filename
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
