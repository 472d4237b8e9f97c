"""Accuracy of the default recipes on the demo data next to the reference and the targets.

Trains each task with ``python -m em_lightning.train`` (its own process; side by side with one
torch thread each, or one after the other) and prints per-class train and val AP of the best
checkpoint (what the training writes to ``metrics.json``) with the budget each run took:

    .venv/bin/python benchmarks/accuracy.py --train --out outputs/accuracy/cpu   # ~2 h on 2 cores
    .venv/bin/python benchmarks/accuracy.py --runs outputs/accuracy/cpu/*        # table only
    .venv/bin/python benchmarks/accuracy.py --runs outputs/accuracy/cpu/* --heldout 12
    .venv/bin/python benchmarks/accuracy.py --runs ... --heldout 12 --test-time-aug none d4
    .venv/bin/python benchmarks/accuracy.py --train --quick                      # smoke run

The reference numbers are from real data (``BENCHMARKS.md``); the targets are for the demo data and
mean something only while the demo data stays as hard as the reference describes.

The demo val split is 2 images (about 120 rods, 360 vesicles): APs move by +-0.03 between
validations of one run. ``--heldout N`` also evaluates each best checkpoint (with
``python -m em_lightning.evaluate``) on N more demo images from another seed, which no run
trains or selects checkpoints on: the column to compare recipes by. ``--test-time-aug none
flip d4`` gives one such column per test-time augmentation setting (``model.test_time_aug``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml
from common import DEFAULT_DATA_DIR, ROOT, TASKS, hardware, print_table


@dataclass(frozen=True)
class Row:
    """One line of the table: a metric key in metrics.json (without ``<split>/``)."""

    label: str
    metric: str
    key: str
    reference: float | None = None
    target: float | None = None


ROWS: dict[str, list[Row]] = {
    "vesicles": [
        Row("big_vesicle", "segm AP", "big_vesicle_segm_AP", 0.866, 0.90),
        Row("small_vesicle", "segm AP", "small_vesicle_segm_AP", 0.637, 0.70),
        Row("hole", "segm AP", "hole_segm_AP"),
        Row("all", "segm mAP", "segm_mAP"),
        Row("all", "segm mAP50", "segm_mAP_50"),
        Row("all", "bbox mAP", "bbox_mAP"),
    ],
    # the reference is mmrotate's DOTA mAP (IoU 0.5); the target says "rotated AP": both rows
    "nanorods": [
        Row("nanorod", "rotated AP (COCO 0.5:0.95)", "nanorod_rbox_AP", 0.505, 0.65),
        Row("nanorod", "rotated AP50 (COCO)", "rbox_mAP_50", 0.505, 0.65),
        Row("nanorod", "DOTA AP50 (mmrotate)", "dota_AP50", 0.505, 0.65),
    ],
}

#: what --quick trains instead of the CPU recipes (minutes, not hours)
QUICK_OVERRIDES = ["experiment=tiny", "trainer.max_epochs=2", "trainer.log_every_n_steps=1",
                   "logger=csv"]
LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+\]")


def train_command(task: str, out_dir: Path, quick: bool, extra: Sequence[str]) -> list[str]:
    recipe = [f"task={task}", *QUICK_OVERRIDES] if quick else [f"experiment={task}_default_cpu"]
    return [sys.executable, "-m", "em_lightning.train", *recipe, "data.num_workers=1",
            f"hydra.run.dir={out_dir}", *extra]


def run_trainings(tasks: Sequence[str], out: Path, side_by_side: bool, quick: bool,
                  extra: Sequence[str]) -> list[Path]:
    """Train every task into ``out/<task>``; raise if one fails (its log is named)."""
    env = dict(os.environ, WANDB_MODE=os.environ.get("WANDB_MODE", "offline"))
    if side_by_side:  # the cores are shared: one torch thread per run
        env["OMP_NUM_THREADS"] = "1"
    out.mkdir(parents=True, exist_ok=True)
    runs, procs = [], []
    for task in tasks:
        run_dir = out / task
        log_path = out / f"{task}.stdout.log"
        cmd = train_command(task, run_dir, quick, extra)
        print("$ " + " ".join(cmd[1:]), f"> {log_path}", flush=True)
        with log_path.open("w") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        procs.append((task, proc, log_path))
        runs.append(run_dir)
        if not side_by_side:
            proc.wait()
    for task, proc, log_path in procs:
        if proc.wait() != 0:
            raise RuntimeError(f"{task} training failed (exit {proc.returncode}): see {log_path}")
    return runs


def run_budget(run_dir: Path) -> dict:
    """Epochs begun and steps logged (CSV log); wall minutes (first/last train.log line)."""
    epochs = steps = 0
    csv_path = run_dir / "csv" / "metrics.csv"
    if csv_path.is_file():
        with csv_path.open() as f:
            for row in csv.DictReader(f):
                if row.get("train/loss"):  # training rows (the final evaluation logs too)
                    epochs = max(epochs, int(row["epoch"]) + 1)
                    steps = max(steps, int(row["step"]) + 1)
    stamps = [m.group(1) for line in (run_dir / "train.log").read_text().splitlines()
              if (m := LOG_TIME.match(line))] if (run_dir / "train.log").is_file() else []
    minutes = float("nan")
    if len(stamps) >= 2:
        first, last = (datetime.fromisoformat(s) for s in (stamps[0], stamps[-1]))
        minutes = (last - first).total_seconds() / 60
    return {"epochs": epochs, "steps": steps, "wall_min": minutes}


def read_run(run_dir: Path) -> tuple[str, dict, dict]:
    """(task, metrics, recipe) of a finished run directory (recipe["checkpoint"]: full path)."""
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path}: missing (the run has not finished)")
    record = json.loads((run_dir / "run_record.json").read_text())
    config = record["config"]
    task = config["task"]["name"]
    detector = config["model"]["detector"]
    size, crop = config["data"]["image_size"], config["data"].get("crop_size")
    load_from = config["model"].get("load_from")
    recipe = {
        "backbone": f"R-{detector['backbone']['depth']}",
        "fpn": detector["neck"]["out_channels"],
        "px": size if crop in (None, size) else f"{size} (crops {crop})",
        # a run continued from another run's weights: that run's folder
        "from": Path(load_from).parent.parent.name if load_from else "scratch",
        "batch": config["data"]["batch_size"],
        "optimizer": str(config["model"]["optimizer"]["_target_"]).rsplit(".", 1)[-1],
        "lr": config["model"]["optimizer"]["lr"],
        "max_epochs": config["trainer"]["max_epochs"],
        "proposals": "rotated" if "Oriented" in detector["rpn_head"]["type"] else "horizontal",
        "demo_px": config["data"]["demo"]["image_size"],
        "classes": list(config["data"]["classes"]),
    }
    data = json.loads(metrics_path.read_text())
    return task, data["metrics"], recipe | {"checkpoint": data["checkpoint"] or ""}


#: run overrides that shape the model or the data it sees; the rest (trainer, logger, paths,
#: data.root, load_from) does not apply to an evaluation
RECIPE_KEYS = re.compile(r"^[+~]*(experiment|task|model|model\.detector\..*|data\.classes|"
                         r"data\.image_size|data\.demo\.(image_size|n_big|n_small|n_holes|"
                         r"rods_per_image))=")


def recipe_overrides(run_dir: Path) -> list[str]:
    """The run's command-line overrides that an evaluation of its checkpoint needs."""
    path = run_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(path.read_text()) if path.is_file() else []
    return [o for o in overrides if RECIPE_KEYS.match(o)]


def heldout_metrics(run_dir: Path, task: str, recipe: dict, n_images: int, seed: int,
                    data_dir: Path, test_time_aug: str = "none") -> dict:
    """Metrics of the run's best checkpoint on ``n_images`` demo images generated with ``seed``
    (val split of a fresh demo set), evaluated once and kept in
    ``run_dir/heldout_seed<seed>_n<n>`` (``..._tta-<views>`` with test-time augmentation)."""
    checkpoint = recipe["checkpoint"]
    tta = "" if test_time_aug == "none" else f"_tta-{test_time_aug}"
    out = run_dir / f"heldout_seed{seed}_n{n_images}{tta}"
    cached = out / "metrics.json"
    if cached.is_file():
        data = json.loads(cached.read_text())
        if data["checkpoint"] == checkpoint:
            return data["metrics"]["val"]
    root = data_dir / f"{task}_{recipe['demo_px']}px_seed{seed}_n{n_images}"
    cmd = [sys.executable, "-m", "em_lightning.evaluate", *recipe_overrides(run_dir),
           f"ckpt_path={checkpoint}", f"data.demo_root={root}", "data.num_workers=0",
           f"++data.demo.seed={seed}", "++data.demo.n_train=1", f"++data.demo.n_val={n_images}",
           f"model.test_time_aug={test_time_aug}", f"hydra.run.dir={out}"]
    print("$ " + " ".join(cmd[1:]), flush=True)
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"held-out evaluation of {checkpoint} failed:\n{done.stderr[-3000:]}")
    return json.loads(cached.read_text())["metrics"]["val"]


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_report(run_dirs: Sequence[Path], heldout: int = 0, heldout_seed: int = 101,
                 data_dir: Path = DEFAULT_DATA_DIR,
                 test_time_augs: Sequence[str] = ("none",)) -> None:
    rows, budgets = [], []
    runs = [(run_dir, *read_run(run_dir)) for run_dir in run_dirs]
    tasks = [task for _, task, _, _ in runs]
    for run_dir, task, metrics, recipe in runs:
        budget = run_budget(run_dir)
        budgets.append([task, str(run_dir), recipe["from"], recipe["backbone"], recipe["fpn"],
                        recipe["proposals"], ",".join(recipe["classes"]), recipe["px"],
                        recipe["batch"], recipe["optimizer"], recipe["lr"],
                        f"{budget['epochs']}/{recipe['max_epochs']}", budget["steps"],
                        f"{budget['wall_min']:.0f}", Path(recipe["checkpoint"]).name])
        held = {tta: heldout_metrics(run_dir, task, recipe, heldout, heldout_seed, data_dir, tta)
                for tta in (test_time_augs if heldout else ())}
        # several runs of one task: name the run on each row
        label = f"{task} ({run_dir.name})" if tasks.count(task) > 1 else task
        # a class-group run (data.classes=[big_vesicle]) has rows of its own classes only
        for row in (r for r in ROWS[task] if r.label in (*recipe["classes"], "all")):
            train = metrics.get(f"train/{row.key}")
            val = metrics.get(f"val/{row.key}")
            reached = "-" if row.target is None or val is None else (
                "yes" if val >= row.target else "no")
            rows.append([f"{label} / {row.label}", row.metric, fmt(train), fmt(val),
                         *(fmt(h.get(row.key)) for h in held.values()),
                         fmt(row.reference), fmt(row.target), reached])
    print(hardware())
    print_table(["task / class", "metric", "train", "val",
                 *(f"held-out ({heldout} images" + ("" if tta == "none" else f", TTA {tta}") + ")"
                   for tta in (test_time_augs if heldout else ())),
                 "reference (real data, val)", "target (demo, val)", "reached"], rows)
    print()
    print_table(["task", "run", "weights from", "backbone", "FPN ch", "proposals", "classes", "px",
                 "batch", "optimizer", "lr", "epochs", "steps", "wall min", "best checkpoint"],
                budgets)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--train", action="store_true", help="train the tasks first, into --out")
    p.add_argument("--runs", nargs="+", type=Path, default=[],
                   help="finished run directories to report (with metrics.json)")
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "accuracy" / "benchmark",
                   help="where --train writes its run directories")
    p.add_argument("--one-after-the-other", action="store_true",
                   help="train the tasks one at a time with all threads (default: side by side)")
    p.add_argument("--quick", action="store_true", help="tiny model, 2 epochs (a smoke run)")
    p.add_argument("--heldout", type=int, default=0, metavar="N",
                   help="also evaluate each best checkpoint on N demo images of another seed")
    p.add_argument("--heldout-seed", type=int, default=101)
    p.add_argument("--test-time-aug", nargs="+", default=["none"],
                   choices=["none", "flip", "d4"],
                   help="held-out columns, one per test-time augmentation (model.test_time_aug)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                   help="where the held-out demo images are generated")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every training")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.heldout < 0:
        print(f"--heldout must be a number of images >= 0, got {args.heldout}", file=sys.stderr)
        return 2
    if args.test_time_aug != ["none"] and not args.heldout:
        print("--test-time-aug needs --heldout N (it adds held-out columns)", file=sys.stderr)
        return 2
    runs = list(args.runs)
    if args.train:
        t0 = time.perf_counter()
        runs += run_trainings(args.tasks, args.out, not args.one_after_the_other, args.quick,
                              args.overrides)
        print(f"trained in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    if not runs:
        print("nothing to report: give --train or --runs", file=sys.stderr)
        return 2
    print_report(runs, args.heldout, args.heldout_seed, args.data_dir, args.test_time_aug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
