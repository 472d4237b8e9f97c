"""Prediction throughput in one process vs spread over two, on this machine.

The same ``python -m em_lightning.predict`` command on the same images and checkpoint, run as:

* ``1 process``: the default (``device=cpu``; torch uses every core for each image);
* ``2 processes (DDP)``: ``trainer=ddp trainer.accelerator=cpu trainer.devices=2`` (Lightning
  launches two gloo ranks, each predicting every second image; rank 0 builds the tables);
* ``2 shards (joblib)``: ``-m shard=0/2,1/2 hydra/launcher=parallel`` (two Hydra jobs into one
  folder, as SLURM array jobs would), then the merge with ``report_only=true``.

Each command runs in its own process from scratch, one after the other, so "wall" includes
starting Python, importing torch and the OpenMMLab stack and loading the model; "loop" is the
span between the first and last finished image's record (per-image work only). Weights are
random (untrained; the model's cost per image does not depend on them); ``score_thr`` is set
low enough that every image keeps objects to measure.

    .venv/bin/python benchmarks/predict_processes.py            # R-50 Mask R-CNN, 32 x 256 px
    .venv/bin/python benchmarks/predict_processes.py --quick    # tiny model, 8 x 128 px
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from common import ROOT, compose_config, hardware, print_table, quiet, scratch
from predict_memory import small_images

SIDES = ("1 process", "2 processes (DDP)", "2 shards (joblib)")


def untrained_checkpoint(model_args: list[str], path: Path) -> Path:
    import torch
    from hydra.utils import instantiate

    from em_lightning.registry import register_all_modules

    register_all_modules()
    torch.manual_seed(0)
    cfg = compose_config("predict", [*model_args, "ckpt_path=x", "input=x"])
    torch.save({"state_dict": instantiate(cfg.model).state_dict()}, path)
    return path


def run(cmd: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def loop_seconds(out: Path) -> float:
    times = [p.stat().st_mtime for p in (out / "manifest").glob("*.json")
             if p.name != "settings.json"]
    return max(times) - min(times)


def main(argv: Sequence[str] | None = None) -> list[list]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--side", type=int, default=256, help="image side (px)")
    p.add_argument("--score-thr", type=float, default=0.2)
    p.add_argument("--quick", action="store_true", help="tiny model, 8 images of 128 px")
    args = p.parse_args(argv)
    quiet()
    model_args = ["task=vesicles", *(["experiment=tiny"] if args.quick else [])]
    n, side = (8, 128) if args.quick else (args.images, args.side)
    work = Path(scratch("processes_"))
    images = small_images(n, work / "images", sides=(side, side))
    ckpt = untrained_checkpoint(model_args, work / "untrained.ckpt")
    predict = [sys.executable, "-m", "em_lightning.predict"]

    def common(out: Path) -> list[str]:
        return [*model_args, f"ckpt_path={ckpt}", f"input={images}", f"output={out}",
                f"score_thr={args.score_thr}", "overlays=false", f"paths.root_dir={work}"]

    print(f"# predict throughput, 1 vs 2 processes: {hardware()}")
    print(f"# {n} images of {side} px, {'tiny' if args.quick else 'R-50'} Mask R-CNN (random "
          f"weights), score >= {args.score_thr}, CPU", flush=True)
    rows = []
    for name in SIDES:
        out = work / name.split()[1]
        if name == "1 process":
            wall = run([*predict, *common(out), "device=cpu"])
        elif name.startswith("2 processes"):
            wall = run([*predict, *common(out), "trainer=ddp", "trainer.accelerator=cpu",
                        "trainer.devices=2"])
        else:
            wall = run([*predict, "-m", *common(out), "shard=0/2,1/2",
                        "hydra/launcher=parallel", f"hydra.sweep.dir={work / 'sweep'}"])
            wall += run([*predict, *common(out), "report_only=true"])
        loop = loop_seconds(out)
        rows.append([name, round(wall, 1), round(n / wall, 2), round(loop, 1),
                     round((n - 1) / loop, 2) if loop else float("nan")])
        print(f"  {name}: {wall:.0f} s", flush=True)
    base_wall, base_loop = rows[0][2], rows[0][4]
    for row in rows:
        row += [round(row[2] / base_wall, 2), round(row[4] / base_loop, 2)]
    print()
    print_table(["run", "wall s", "images/s (wall)", "loop s", "images/s (loop)",
                 "ratio (wall)", "ratio (loop)"], rows)
    return rows


if __name__ == "__main__":
    main()
