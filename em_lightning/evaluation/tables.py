"""How a split's metrics are shown: one compact table per validation, JSON without sentinels.

Why: pycocotools prints 12 lines per metric kind (and mmengine a table each) at every
validation, and reports "not applicable" as -1 (no ground-truth object in that COCO size range)
or NaN (a class absent from the split). The console gets this table instead (the full printout
goes to the log file at DEBUG); ``metrics.json`` gets null for the not-applicable values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

#: what a missing value in the table and a null in metrics.json mean
NOT_APPLICABLE_NOTE = ("-: not applicable (no ground-truth object of that class, or of that "
                       "COCO size range, in the split; null in metrics.json)")


def not_applicable(value: float | None) -> bool:
    """pycocotools' -1 and mmdet's NaN both mean "no ground truth to score against"."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == -1


def clean_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """The metrics with every not-applicable value as NaN (one sentinel, not two)."""
    return {k: math.nan if not_applicable(v) else float(v) for k, v in metrics.items()}


def json_ready(value: object) -> object:
    """``value`` (nested dicts/lists of metrics) with not-applicable floats as None (null)."""
    if isinstance(value, Mapping):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, float) and not_applicable(value):
        return None
    return value


def _class_key(cls: str, kind: str) -> str:
    return f"{cls}_dota_AP50" if kind == "dota" else f"{cls}_{kind}_AP"


def _overall_keys(kind: str) -> list[tuple[str, str]]:
    if kind == "dota":
        return [("AP50", "dota_AP50")]
    return [("mAP", f"{kind}_mAP"), ("AP50", f"{kind}_mAP_50"), ("AP75", f"{kind}_mAP_75")]


def _cell(value: float | None) -> str:
    return f"{'-':>9s}" if not_applicable(value) else f"{value:9.3f}"


def compact_table(metrics: Mapping[str, float], classes: Sequence[str], kinds: Sequence[str],
                  monitor: str, title: str) -> str:
    """A headline line, then per-class AP rows and mAP / AP50 / AP75 rows, one column per kind.

    ``metrics`` are the evaluator's flat names (``segm_mAP``, ``hole_segm_AP``, ...).
    """
    width = max([len(c) for c in classes] + [12])
    heads = ["DOTA AP50" if kind == "dota" else f"{kind} AP" for kind in kinds]
    lines = [f"{title}: {monitor} = {_cell(metrics.get(monitor)).strip()}",
             f"  {'class':{width}s}" + "".join(f"{h:>10s}" for h in heads)]
    for cls in classes:
        lines.append(f"  {cls:{width}s}" + "".join(
            f" {_cell(metrics.get(_class_key(cls, kind)))}" for kind in kinds))
    for label in ("mAP", "AP50", "AP75"):
        cells = []
        for kind in kinds:
            key = dict(_overall_keys(kind)).get(label)
            cells.append(f" {_cell(metrics.get(key)) if key else ' ' * 9}")
        if any(c.strip() for c in cells):
            lines.append(f"  {'(all) ' + label:{width}s}" + "".join(cells))
    if any(not_applicable(metrics.get(_class_key(c, k))) for c in classes for k in kinds):
        lines.append("  " + NOT_APPLICABLE_NOTE)
    return "\n".join(lines)
