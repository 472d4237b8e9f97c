"""Microstructure measurements from detections: per-object shapes, summaries, plots, reports.

``plots`` is not imported here so that measuring does not pull in matplotlib.
"""

from em_lightning.analysis.morphology import (
    mask_properties,
    objects_table,
    rbox_corners,
    rbox_properties,
)
from em_lightning.analysis.report import write_html_report
from em_lightning.analysis.summary import (
    compare_distributions,
    dataset_summary,
    per_image_summary,
    summarize,
)

__all__ = [
    "compare_distributions",
    "dataset_summary",
    "mask_properties",
    "objects_table",
    "per_image_summary",
    "rbox_corners",
    "rbox_properties",
    "summarize",
    "write_html_report",
]
