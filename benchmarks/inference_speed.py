"""Inference throughput: em_lightning's predictor vs OpenMMLab's own inference APIs.

Same images (the demo val + train images of ``--image-size`` px), same checkpoint, same
device, same batch size, interleaved in one process (E M M E ...). Sides per task:

* ``em_lightning``: what ``python -m em_lightning.predict`` runs per image: read the file,
  ``TiledPredictor`` + ``ModelRunner`` (the task's test pipeline, the checkpoint's
  ``DetectorModule``), detections with cropped masks / rotated boxes at ``score >= thr``;
* ``em_lightning.predict``: the whole CLI function (also measures every object and writes the
  tables, COCO files, plots and report; overlays off) - one run per repeat;
* ``DetInferencer`` (vesicles; mmdet's high-level API): file paths in, prediction dicts out
  (boxes, scores, RLE masks), visualisation off;
* ``inference_detector`` (both tasks; the API mmrotate 1.x's ``demo/image_demo.py`` uses, since
  mmrotate has no inferencer of its own): ``init_detector`` model, file paths in, data samples
  out.

The OpenMMLab sides get an mmengine config built from the same detector dict and an
``mmdet.LoadImageFromFile`` / ``Resize`` / ``PackDetInputs`` test pipeline, and the checkpoint's
weights as an mmdet checkpoint. Both deliver every detection the model keeps: the OpenMMLab
sides keep the model's ``test_cfg.rcnn.score_thr`` (0.05) and leave thresholding to the user;
em_lightning applies ``--score-thr`` inside the model (before NMS and the mask head). A second
OpenMMLab row (``same test_cfg``) gets the same in-model threshold, to separate the cost of that
choice from the rest. The number of detections at ``score >= thr`` is compared between sides.

    .venv/bin/python benchmarks/inference_speed.py --ckpt-vesicles A.ckpt --ckpt-nanorods B.ckpt
    .venv/bin/python benchmarks/inference_speed.py --quick   # tiny models, random weights

Without a checkpoint the model keeps its random initial weights (a warning says so): then
scores are near chance and the threshold removes everything, so pass trained checkpoints of
the default configs (``outputs/accuracy/<task>_default/checkpoints/last.ckpt`` is used when
it exists).
"""

from __future__ import annotations

import argparse
import glob
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from common import (
    DEFAULT_DATA_DIR,
    ROOT,
    TASKS,
    compose_cfg,
    compose_config,
    hardware,
    median,
    model_overrides,
    now,
    print_table,
    quiet,
    scratch,
)

Side = Callable[[list[str]], int]  # files -> number of detections at score >= thr
CLI = "em_lightning.predict (CLI)"


def default_ckpt(task: str) -> str | None:
    path = ROOT / "outputs" / "accuracy" / f"{task}_default" / "checkpoints" / "last.ckpt"
    return str(path) if path.is_file() else None


def demo_files(cfg: Any, limit: int) -> list[str]:
    from hydra.utils import instantiate

    instantiate(cfg.data).prepare_data()  # generates the demo set when missing
    root = Path(cfg.data.root)
    files = sorted(glob.glob(str(root / "images" / "**" / "*.png"), recursive=True))[:limit]
    if not files:
        raise FileNotFoundError(f"{root}: no demo images")
    folder = Path(scratch("images_"))  # one folder with just these, for the CLI's input=
    for i, f in enumerate(files):
        (folder / f"{i:03d}_{Path(f).name}").symlink_to(f)
    return sorted(str(p) for p in folder.iterdir())


def load_module(cfg: Any, ckpt: str | None) -> Any:
    """The task's DetectorModule with the checkpoint's weights (random ones without)."""
    from hydra.utils import instantiate

    from em_lightning.models.builder import load_checkpoint_file

    module = instantiate(cfg.model)
    if ckpt:
        module.load_state_dict(load_checkpoint_file(ckpt))
    else:
        print(f"WARNING {cfg.task_name}: no checkpoint, random weights", file=sys.stderr)
    return module.eval()


def mmdet_checkpoint(module: Any, classes: Sequence[str]) -> str:
    """The detector's weights as an mmdet checkpoint file (what OpenMMLab users load)."""
    import torch

    path = Path(scratch("ckpt_")) / "detector.pth"
    torch.save({"state_dict": module.detector.state_dict(),
                "meta": {"dataset_meta": {"classes": tuple(classes)}}}, path)
    return str(path)


def mm_config(cfg: Any, score_thr: float | None, size: int | None = None) -> Any:
    """An mmengine config an OpenMMLab user would write for this detector and test data
    (``Resize`` to ``size``, default the training size: images of that size stay as they are)."""
    from mmengine.config import Config
    from omegaconf import OmegaConf

    detector = OmegaConf.to_container(cfg.model.detector, resolve=True)
    detector.get("roi_head", {}).get("bbox_head", {})["num_classes"] = len(cfg.data.classes)
    if score_thr is not None:
        detector["test_cfg"]["rcnn"]["score_thr"] = score_thr
    size = int(size or cfg.data.image_size)
    pipeline = [
        {"type": "LoadImageFromFile"},
        {"type": "mmdet.Resize", "scale": (size, size), "keep_ratio": True},
        {"type": "mmdet.PackDetInputs",
         "meta_keys": ("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")},
    ]
    scope = str(cfg.data.scope)
    visualizer = ("mmrotate.RotLocalVisualizer" if scope == "mmrotate"
                  else "mmdet.DetLocalVisualizer")
    return Config({
        "default_scope": scope,
        "model": detector,
        "test_dataloader": {"dataset": {
            "type": "mmdet.CocoDataset", "data_root": str(cfg.data.root),
            "ann_file": "annotations/val.json", "metainfo": {"classes": tuple(cfg.data.classes)},
            "pipeline": pipeline, "test_mode": True}},
        "test_pipeline": pipeline,
        "visualizer": {"type": visualizer, "name": f"bench_{scope}_{time.monotonic_ns()}"},
    })


def count_kept(pred: Any, score_thr: float) -> int:
    scores = pred.pred_instances.scores
    return int((scores >= score_thr).sum())


def em_lightning_side(cfg: Any, module: Any, score_thr: float, batch_size: int) -> Side:
    from omegaconf import OmegaConf

    from em_lightning.inference.engine import ModelRunner, TiledPredictor, normalize_mode
    from em_lightning.inference.inputs import read_images

    pipeline = OmegaConf.to_container(cfg.data.test_pipeline, resolve=True)
    runner = ModelRunner(module, pipeline, cfg.data.scope, 1.0, score_thr)
    predictor = TiledPredictor(runner, 1024, 128, batch_size)

    def run(files: list[str]) -> int:
        stream = read_images([Path(f) for f in files], None, normalize_mode(pipeline), [])
        return sum(len(d) for _, d in predictor.run((item, item[1]) for item in stream))
    return run


def predict_cli_side(cfg: Any, ckpt: str | None, score_thr: float, batch_size: int,
                     input_dir: str) -> Side | None:
    """``em_lightning.predict.predict`` on the image folder (needs a checkpoint file)."""
    if not ckpt:
        return None
    from em_lightning.predict import predict

    overrides = [f"task={cfg.task_name}", f"data.root={cfg.data.root}",
                 f"data.image_size={cfg.data.image_size}", f"ckpt_path={ckpt}",
                 f"input={input_dir}", f"score_thr={score_thr}", f"batch_size={batch_size}",
                 "overlays=false", "device=cpu" if not _cuda() else "device=cuda"]
    pcfg = compose_config("predict", overrides + list(cfg.bench_overrides))

    def run(files: list[str]) -> int:
        pcfg.output = scratch("predict_")
        return int(predict(pcfg)["n_objects"])
    return run


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def det_inferencer_side(cfg: Any, weights: str, score_thr: float, batch_size: int,
                        test_cfg_thr: float | None) -> Side:
    from mmdet.apis import DetInferencer

    from em_lightning.registry import scope

    with scope(str(cfg.data.scope)):
        inferencer = DetInferencer(mm_config(cfg, test_cfg_thr), weights,
                                   device="cuda" if _cuda() else "cpu",
                                   scope=str(cfg.data.scope), show_progress=False)

    def run(files: list[str]) -> int:
        with scope(str(cfg.data.scope)):
            out = inferencer(files, batch_size=batch_size, no_save_vis=True)
        return sum(sum(s >= score_thr for s in p["scores"]) for p in out["predictions"])
    return run


def inference_detector_side(cfg: Any, weights: str, score_thr: float,
                            test_cfg_thr: float | None) -> Side:
    from mmdet.apis import inference_detector, init_detector

    from em_lightning.registry import scope

    with scope(str(cfg.data.scope)):
        model = init_detector(mm_config(cfg, test_cfg_thr), weights,
                              device="cuda" if _cuda() else "cpu")

    def run(files: list[str]) -> int:
        with scope(str(cfg.data.scope)):
            preds = inference_detector(model, files)
        return sum(count_kept(p, score_thr) for p in preds)
    return run


def build_sides(task: str, args: argparse.Namespace) -> tuple[dict[str, Side], list[str]]:
    from omegaconf import open_dict

    from em_lightning.registry import register_all_modules

    register_all_modules()
    overrides = model_overrides(args.depth, args.heads)
    cfg = compose_cfg(task, args.image_size, args.data_dir, overrides)
    with open_dict(cfg):
        cfg.bench_overrides = overrides
    files = demo_files(cfg, args.images)
    ckpt = getattr(args, f"ckpt_{task}") or (None if args.quick else default_ckpt(task))
    module = load_module(cfg, ckpt)
    weights = mmdet_checkpoint(module, cfg.data.classes)
    thr = args.score_thr
    sides: dict[str, Side] = {
        "em_lightning": em_lightning_side(cfg, module, thr, args.batch_size)}
    if task == "vesicles":
        sides["DetInferencer"] = det_inferencer_side(cfg, weights, thr, args.batch_size, None)
        sides["DetInferencer (same test_cfg)"] = det_inferencer_side(
            cfg, weights, thr, args.batch_size, thr)
    sides["inference_detector"] = inference_detector_side(cfg, weights, thr, None)
    sides["inference_detector (same test_cfg)"] = inference_detector_side(cfg, weights, thr, thr)
    if args.cli:
        cli = predict_cli_side(cfg, ckpt, thr, args.batch_size, str(Path(files[0]).parent))
        if cli is not None:
            sides[CLI] = cli
    print(f"{task}: {len(files)} images of {args.image_size} px, checkpoint {ckpt or 'none'}",
          flush=True)
    return sides, files


def measure(sides: dict[str, Side], files: list[str], repeats: int) -> dict[str, dict]:
    """Warm each side up once, then alternate the order per repeat; seconds per image."""
    stats = {name: {"s_per_img": [], "dets": None} for name in sides}
    for name, side in sides.items():
        stats[name]["dets"] = side(files)
    order = list(sides)
    for rep in range(repeats):
        for name in (order if rep % 2 == 0 else order[::-1]):
            t0 = now()
            stats[name]["dets"] = sides[name](files)
            stats[name]["s_per_img"].append((now() - t0) / len(files))
    return stats


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--images", type=int, default=6, help="images per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--score-thr", type=float, default=0.5)
    p.add_argument("--depth", type=int, default=50)
    p.add_argument("--heads", choices=("default", "tiny"), default="default")
    p.add_argument("--ckpt-vesicles", default=None, help="Lightning checkpoint (vesicles)")
    p.add_argument("--ckpt-nanorods", default=None, help="Lightning checkpoint (nanorods)")
    p.add_argument("--no-cli", dest="cli", action="store_false",
                   help="skip the whole em_lightning.predict CLI function row")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--quick", action="store_true",
                   help="128 px, ResNet-18 with tiny heads, random weights, 2 images, 1 repeat")
    args = p.parse_args(argv)
    if args.quick:
        args.image_size, args.images, args.repeats = 128, 2, 1
        args.depth, args.heads, args.score_thr = 18, "tiny", 0.05
    return args


def main(argv: Sequence[str] | None = None) -> list[list]:
    """Prints both tables; returns the ratio rows (task, baseline, ratio, CLI ratio)."""
    args = parse_args(argv)
    quiet()
    print(hardware(), flush=True)
    rows, ratios = [], []
    for task in args.tasks:
        t0 = time.perf_counter()
        sides, files = build_sides(task, args)
        stats = measure(sides, files, args.repeats)
        ours = median(stats["em_lightning"]["s_per_img"])
        cli = median(stats.get(CLI, {}).get("s_per_img", []))
        for name, st in stats.items():
            s = median(st["s_per_img"])
            rows.append([task, name, len(st["s_per_img"]), round(s, 3), round(1 / s, 3),
                         " ".join(f"{v:.2f}" for v in st["s_per_img"]), st["dets"]])
            if name not in ("em_lightning", CLI):
                ratios.append([task, name, round(s / ours, 3), round(s / cli, 3)])
        print(f"{task}: {time.perf_counter() - t0:.0f} s", flush=True)
    print()
    print_table(["task", "side", "runs", "s/img (median)", "img/s", "runs s/img",
                 f"detections >= {args.score_thr} (last run)"], rows)
    print()
    print_table(["task", "baseline", "throughput ratio: em_lightning predictor / baseline",
                 "whole em_lightning.predict (CLI) / baseline"], ratios)
    return ratios


if __name__ == "__main__":
    main()
