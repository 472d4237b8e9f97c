"""The sweep summary: trial table (CSV, Markdown), metric-vs-hyperparameter plot, best config.

Rebuilt from the ``trial.json`` files after every trial, so it is current while the sweep runs,
survives an interrupted sweep and covers all sessions of a resumed one.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from omegaconf import OmegaConf

from em_lightning.sweeps.records import COMPLETE, TrialRecord, atomic_write_text, read_records
from em_lightning.sweeps.space import read_space

CSV_FILE, MD_FILE, PLOT_FILE = "summary.csv", "summary.md", "summary.png"
BEST_FILE = "best_experiment.yaml"
# not part of an experiment: the search itself, and machine-specific paths
NOT_IN_EXPERIMENT = ("hparams_search", "paths.", "hydra.", "hydra/")
INCLUDED_GROUPS = ("experiment", "debug")


def best_trial(records: Sequence[TrialRecord], direction: str) -> TrialRecord | None:
    done = [r for r in records if r.status == COMPLETE and r.value is not None]
    if not done:
        return None
    sign = -1.0 if direction == "maximize" else 1.0
    return min(done, key=lambda r: (sign * float(r.value), r.trial))  # type: ignore[arg-type]


def param_names(records: Sequence[TrialRecord]) -> list[str]:
    names: dict[str, None] = {}
    for record in records:
        names.update(dict.fromkeys(record.params))
    return list(names)


def metric_name(records: Sequence[TrialRecord]) -> str:
    return next((r.metric for r in records if r.metric), "value")


def table(records: Sequence[TrialRecord]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (strings) of the trial table."""
    params = param_names(records)
    metric = metric_name(records)
    header = ["trial", "status", metric, *params, "duration_s", "run_dir", "error"]
    rows = [[str(r.trial), r.status, fmt(r.value), *(fmt(r.params.get(p)) for p in params),
             fmt(r.duration_s), r.run_dir, r.error or ""] for r in records]
    return header, rows


def fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    return str(value)


def to_csv(header: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def to_markdown(header: list[str], rows: list[list[str]], title: str, notes: list[str]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")[:200]

    lines = [f"# {title}", "", *notes, "", "| " + " | ".join(map(cell, header)) + " |",
             "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def best_experiment_yaml(best: TrialRecord, n_trials: int, sweep_dir: Path) -> str:
    """The best trial as a ``conf/experiment/`` file: its group choices and values."""
    values = OmegaConf.create()
    for key, value in {**best.fixed, **best.params}.items():
        if not key.lstrip("+").startswith(NOT_IN_EXPERIMENT):
            OmegaConf.update(values, key.lstrip("+"), value, force_add=True)
    includes: list[Any] = []
    overrides: list[Any] = []
    for group, choice in best.groups.items():
        group = group.lstrip("+")
        if group.startswith(NOT_IN_EXPERIMENT) or choice is None:
            continue
        # groups that are null in train.yaml can only be included, not overridden;
        # Hydra wants the group overrides after the includes
        if group in INCLUDED_GROUPS:
            includes.append(f"/{group}/{choice}")
        else:
            overrides.append({f"override /{group}": choice})
    includes.sort(key=lambda entry: INCLUDED_GROUPS.index(entry.split("/")[1]))  # as train.yaml
    defaults = [*includes, "_self_", *overrides]
    body = OmegaConf.to_yaml(OmegaConf.create({"defaults": defaults}))
    if len(values):
        body += OmegaConf.to_yaml(values)
    return (
        "# @package _global_\n"
        f"# Best of {n_trials} trials of the sweep {sweep_dir}:\n"
        f"# trial {best.trial}, {best.metric} = {best.value:.6g}, run dir {best.run_dir}\n"
        "# Ready to run: copy to conf/experiment/<name>.yaml, then\n"
        "#   python -m em_lightning.train experiment=<name>\n" + body)


def plot(records: Sequence[TrialRecord], space: dict[str, str] | None, path: Path,
         direction: str = "maximize") -> None:
    """One panel per hyperparameter (metric vs value; failed trials as red x on the floor),
    plus metric vs trial number with the running best."""
    params = param_names(records)
    metric = metric_name(records)
    done = [r for r in records if r.status == COMPLETE and r.value is not None]
    failed = [r for r in records if r not in done]
    floor = min((float(r.value) for r in done), default=0.0)  # type: ignore[arg-type]
    ncols = min(4, len(params) + 1)
    nrows = math.ceil((len(params) + 1) / ncols)
    width, height = 4.0 * ncols, 3.2 * nrows
    fig = Figure(figsize=(width, height))  # fixed margins: constrained layout doubles the time
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.7 / width, right=1 - 0.2 / width, bottom=0.7 / height,
                        top=1 - 0.75 / height, wspace=0.35, hspace=0.5)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    ax = axes[0]
    ax.scatter([r.trial for r in done], [r.value for r in done], s=18)
    ax.scatter([r.trial for r in failed], [floor] * len(failed), marker="x", color="red", s=24)
    better = max if direction == "maximize" else min
    running: list[float] = []
    for r in done:
        running.append(better(running[-1], r.value) if running else r.value)  # type: ignore
    ax.step([r.trial for r in done], running, where="post", color="gray", lw=1)
    ax.set(xlabel="trial", ylabel=metric, title="metric per trial (line: best so far)")
    ax.title.set_fontsize(8)
    ax.tick_params(labelsize=6)
    for ax, name in zip(axes[1:], params):
        scatter_param(ax, name, done, failed, floor, "log" in (space or {}).get(name, ""))
        ax.set_ylabel(metric)
    for ax in axes[len(params) + 1:]:
        ax.set_visible(False)
    fig.suptitle(f"{len(done)} complete trials (dots); failed ones as red x at the lowest value",
                 fontsize=9, y=1 - 0.15 / height)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    atomic_write_text(path, buffer.getvalue())


def scatter_param(ax: Any, name: str, done: Sequence[TrialRecord],
                  failed: Sequence[TrialRecord], floor: float, log_x: bool) -> None:
    values = [r.params.get(name) for r in (*done, *failed)]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numeric:
        def xs(rs: Sequence[TrialRecord]) -> list[Any]:
            return [r.params.get(name) for r in rs]
    else:
        labels = sorted({fmt(v) for v in values})
        position = {label: i for i, label in enumerate(labels)}

        def xs(rs: Sequence[TrialRecord]) -> list[Any]:
            return [position[fmt(r.params.get(name))] for r in rs]

        ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=7)
        ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.scatter(xs(done), [r.value for r in done], s=18)
    ax.scatter(xs(failed), [floor] * len(failed), marker="x", color="red", s=24)
    if numeric and log_x and all(v > 0 for v in values):
        ax.set_xscale("log")
    ax.tick_params(which="both", labelsize=6)
    ax.set_title(name, fontsize=8)


def write_summary(sweep_dir: str | Path, direction: str = "maximize") -> dict[str, Path]:
    """(Re)write the summary files of ``sweep_dir``; returns their paths by kind."""
    sweep_dir = Path(sweep_dir)
    records = read_records(sweep_dir)
    if not records:
        return {}
    header, rows = table(records)
    best = best_trial(records, direction)
    n_done = sum(r.status == COMPLETE for r in records)
    notes = [f"Metric `{metric_name(records)}` ({direction}); {len(records)} trials: {n_done} "
             f"complete, {len(records) - n_done} failed or interrupted."]
    if best is not None:
        notes.append(f"Best: trial {best.trial}, {best.value:.6g} (`{BEST_FILE}`, "
                     f"run dir `{best.run_dir}`).")
    paths = {"csv": sweep_dir / CSV_FILE, "md": sweep_dir / MD_FILE, "png": sweep_dir / PLOT_FILE}
    atomic_write_text(paths["csv"], to_csv(header, rows))
    atomic_write_text(paths["md"], to_markdown(header, rows, f"Sweep {sweep_dir.name}", notes))
    plot(records, read_space(sweep_dir), paths["png"], direction)
    if best is not None:
        paths["best"] = sweep_dir / BEST_FILE
        atomic_write_text(paths["best"], best_experiment_yaml(best, len(records), sweep_dir))
    return paths
