"""Peak memory and time of prediction on one large image: tiled vs whole, em_lightning vs
OpenMMLab.

The image is a ``--size`` px mosaic of the task's demo images (default 4096 px: 64 demo images
of 512 px). Each side runs in its own process, so its peak RSS (Linux ``VmHWM``, reset after
the model is built) is its own:

* ``em_lightning tiled``: ``ModelRunner`` + ``TiledPredictor`` as ``em_lightning.predict`` runs
  them (``--tile`` px tiles overlapping by ``--overlap`` px, batch ``--batch-size``, seams
  merged, masks kept as crops);
* ``em_lightning whole``: the same with tiling off (``tile.size=0``);
* OpenMMLab: vesicles - mmdet ``DetInferencer`` on the whole image (mmdet has no tiled
  inference); nanorods - mmrotate's ``inference_detector_by_patches`` with the same patch
  size, overlap and batch size.

    .venv/bin/python benchmarks/predict_memory.py                 # 4096 px, default models
    .venv/bin/python benchmarks/predict_memory.py --quick         # 1024 px, tiny models
    .venv/bin/python benchmarks/predict_memory.py --many 100 2000 # many small images

``--many N ...``: ``em_lightning.predict`` itself (results streamed to ``parts/`` per image,
tables built from them at the end) on N synthetic 64-128 px vesicle-like images with an
untrained tiny Mask R-CNN (memory growth, not accuracy, is measured), each N in its own
process: peak RSS of the image loop (model build included), the RSS after 10 % and after all
of the images (flat when nothing accumulates per image) and, separately, the peak of building
the tables, plots and report from the parts.

Weights: the accuracy run's ``last.ckpt`` when it exists (``--ckpt-<task>`` to choose),
otherwise random ones - then scores are near chance, which the detection count shows.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from common import (
    DEFAULT_DATA_DIR,
    TASKS,
    compose_cfg,
    compose_config,
    hardware,
    model_overrides,
    print_result,
    print_table,
    quiet,
    run_child,
    scratch,
)
from inference_speed import default_ckpt, demo_files, load_module, mm_config, mmdet_checkpoint
from memory import max_rss_mib, reset_rss_peak, status_mib

SIDES = ("em_lightning tiled", "em_lightning whole", "openmmlab")


def mosaic(files: Sequence[str], size: int, out: Path) -> Path:
    """A ``size`` x ``size`` PNG tiled from the demo images (cycled), written to ``out``."""
    import cv2

    images = [cv2.imread(f, cv2.IMREAD_GRAYSCALE) for f in files]
    side = images[0].shape[0]
    n = -(-size // side)
    rows = [np.concatenate([images[(r * n + c) % len(images)] for c in range(n)], axis=1)
            for r in range(n)]
    cv2.imwrite(str(out), np.concatenate(rows, axis=0)[:size, :size])
    return out


def run_side(side: str, task: str, args: argparse.Namespace) -> dict:
    """In this process: build the side, reset the RSS peak, predict the mosaic once."""
    quiet()
    import torch
    from omegaconf import OmegaConf

    from em_lightning.data.microscopy import read_em_image
    from em_lightning.data.transforms import normalize_em
    from em_lightning.inference.engine import ModelRunner, TiledPredictor, normalize_mode
    from em_lightning.registry import register_all_modules, scope

    register_all_modules()
    cfg = compose_cfg(task, args.image_size, args.data_dir,
                      model_overrides(args.depth, args.heads))
    ckpt = getattr(args, f"ckpt_{task}") or (None if args.quick else default_ckpt(task))
    module = load_module(cfg, ckpt)
    image = Path(args.image)
    thr = args.score_thr
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if side.startswith("em_lightning"):
        pipeline = OmegaConf.to_container(cfg.data.test_pipeline, resolve=True)
        runner = ModelRunner(module, pipeline, cfg.data.scope, 1.0, thr, device)
        tile = args.tile if side.endswith("tiled") else 0
        predictor = TiledPredictor(runner, tile, args.overlap, args.batch_size)

        def predict() -> int:
            gray = normalize_em(read_em_image(image, None).data, normalize_mode(pipeline))
            return len(predictor.predict(gray))
    elif task == "vesicles":
        from mmdet.apis import DetInferencer

        weights = mmdet_checkpoint(module, cfg.data.classes)
        with scope("mmdet"):
            inferencer = DetInferencer(mm_config(cfg, None, args.size), weights, device=device,
                                       scope="mmdet", show_progress=False)

        def predict() -> int:
            with scope("mmdet"):
                out = inferencer(str(image), batch_size=1, no_save_vis=True)
            return sum(s >= thr for p in out["predictions"] for s in p["scores"])
    else:
        from mmdet.apis import init_detector
        from mmrotate.apis import inference_detector_by_patches

        weights = mmdet_checkpoint(module, cfg.data.classes)
        with scope("mmrotate"):
            model = init_detector(mm_config(cfg, None, args.tile), weights, device=device)

        def predict() -> int:
            with scope("mmrotate"):
                pred = inference_detector_by_patches(
                    model, str(image), [args.tile], [args.tile - args.overlap], [1.0],
                    {"type": "nms_rotated", "iou_threshold": 0.1}, bs=args.batch_size)
            return int((pred.pred_instances.scores >= thr).sum())
    del module
    rss0 = status_mib("VmRSS")
    reset = reset_rss_peak()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with torch.no_grad():
        dets = predict()
    seconds = time.perf_counter() - t0
    peak = status_mib("VmHWM") if reset else max_rss_mib()
    row = {"task": task, "side": side, "seconds": seconds, "rss_before_mib": rss0,
           "peak_rss_mib": peak, "rise_mib": peak - rss0, "detections": dets}
    if torch.cuda.is_available():
        row["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 1024**2
    return row


def small_images(n: int, folder: Path, seed: int = 0, sides: tuple[int, int] = (64, 128)
                 ) -> Path:
    """``n`` PNGs of ``sides`` px (random side) with dark discs on a noisy background."""
    import cv2

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        h, w = (int(v) for v in rng.integers(sides[0], sides[1] + 1, 2))
        img = rng.normal(170, 12, (h, w))
        for _ in range(int(rng.integers(3, 12))):
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.circle(img, centre, int(rng.integers(3, 12)), float(rng.uniform(60, 110)), -1)
        cv2.imwrite(str(folder / f"img_{k:05d}.png"), np.clip(img, 0, 255).astype(np.uint8))
    return folder


def run_many(n: int, folder: Path, args: argparse.Namespace) -> dict:
    """In this process: predict the ``n`` images of ``folder`` into a new folder, reading the
    RSS peak when the image loop ends and again after the tables are built."""
    quiet()
    import torch
    from hydra.utils import instantiate

    import em_lightning.predict as predict_module
    from em_lightning.quiet import quiet_third_party
    from em_lightning.registry import register_all_modules

    register_all_modules()
    quiet_third_party()
    work = Path(scratch("many_"))
    base = ["task=vesicles", "experiment=tiny", f"paths.root_dir={work}"]
    torch.manual_seed(0)
    ckpt = work / "untrained.ckpt"
    torch.save({"state_dict": instantiate(compose_config("predict", base + [
        "ckpt_path=x", "input=x"]).model).state_dict()}, ckpt)
    out = work / "out"
    cfg = compose_config("predict", base + [
        f"ckpt_path={ckpt}", f"input={folder}", f"output={out}", "device=cpu",
        f"score_thr={args.score_thr}"], out)
    marks: dict[str, float] = {}
    write_outputs = predict_module.write_outputs

    def probed(*a, **kw):  # measurement probe: the loop is over when the tables start
        marks["loop_peak"] = status_mib("VmHWM")
        marks["t_loop"] = time.perf_counter()
        reset_rss_peak()
        marks["merge_start"] = status_mib("VmRSS")
        return write_outputs(*a, **kw)

    predict_module.write_outputs = probed
    trace: list[float] = []  # RSS after each finished image: flat when nothing accumulates
    write_done = predict_module.ResultStore.write_done

    def traced(self, *a, **kw):
        write_done(self, *a, **kw)
        trace.append(status_mib("VmRSS"))

    predict_module.ResultStore.write_done = traced
    rss0 = status_mib("VmRSS")
    reset_rss_peak()
    t0 = time.perf_counter()
    summary = predict_module.predict(cfg)
    t1 = time.perf_counter()
    parts = sum(p.stat().st_size for p in (out / "parts").iterdir()) / 1024**2
    return {"images": n, "objects": summary["n_objects"], "rss_before_mib": rss0,
            "loop_seconds": marks["t_loop"] - t0, "loop_peak_mib": marks["loop_peak"],
            "tables_seconds": t1 - marks["t_loop"], "tables_start_mib": marks["merge_start"],
            "tables_peak_mib": status_mib("VmHWM"), "parts_mib": parts,
            "rss_at_10pct_mib": trace[len(trace) // 10], "rss_at_end_mib": trace[-1]}


def main_many(args: argparse.Namespace, argv: list[str]) -> list[list]:
    print(f"# predict memory, many small images: {hardware()}")
    print(f"# synthetic 64-128 px images, untrained tiny Mask R-CNN, score >= {args.score_thr}, "
          "CPU, em_lightning.predict with its defaults (overlays on)", flush=True)
    rows = []
    for n in args.many:
        folder = small_images(n, Path(scratch("images_")) / "images")
        t0 = time.perf_counter()
        r = run_child([__file__, *argv, "--child-many", str(n), "--image", str(folder)])
        rows.append([n, r["objects"], round(r["loop_seconds"]), round(r["rss_before_mib"]),
                     round(r["loop_peak_mib"]), round(r["loop_peak_mib"] - r["rss_before_mib"]),
                     round(r["rss_at_10pct_mib"]), round(r["rss_at_end_mib"]),
                     round(r["tables_seconds"]), round(r["tables_peak_mib"]),
                     round(r["parts_mib"], 1)])
        print(f"  {n} images: {time.perf_counter() - t0:.0f} s", flush=True)
    print()
    print_table(["images", "objects", "loop s", "RSS before (MiB)", "loop peak RSS (MiB)",
                 "loop rise (MiB)", "RSS at 10 % of images", "RSS at last image", "tables s",
                 "tables peak RSS (MiB)", "parts (MiB)"], rows)
    return rows


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    p.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    p.add_argument("--size", type=int, default=4096, help="mosaic side (px)")
    p.add_argument("--image-size", type=int, default=512, help="demo image / training size")
    p.add_argument("--tile", type=int, default=1024)
    p.add_argument("--overlap", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--score-thr", type=float, default=0.5)
    p.add_argument("--depth", type=int, default=50)
    p.add_argument("--heads", choices=("default", "tiny"), default="default")
    p.add_argument("--ckpt-vesicles", default=None)
    p.add_argument("--ckpt-nanorods", default=None)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--quick", action="store_true",
                   help="1024 px mosaic of 128 px images, 256 px tiles, tiny models, random")
    p.add_argument("--many", nargs="+", type=int, metavar="N",
                   help="instead: predict N small images (each N in its own process)")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)  # internal: TASK SIDE
    p.add_argument("--child-many", type=int, help=argparse.SUPPRESS)  # internal: N
    p.add_argument("--image", help=argparse.SUPPRESS)  # internal: the mosaic file
    args = p.parse_args(argv)
    if args.many and "--score-thr" not in (argv or sys.argv):
        args.score_thr = 0.255  # untrained tiny model: scores ~0.25, some 30 objects/image
    if args.quick:
        args.size, args.image_size, args.tile, args.overlap = 1024, 128, 256, 32
        args.depth, args.heads, args.score_thr = 18, "tiny", 0.05
    return args


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    if args.child:
        print_result(run_side(args.child[1], args.child[0], args))
        return []
    if args.child_many:
        print_result(run_many(args.child_many, Path(args.image), args))
        return []
    quiet()
    if args.many:
        return main_many(args, argv)
    print(f"# predict memory: {hardware()}")
    print(f"# {args.size} px mosaic, {args.tile} px tiles / {args.overlap} px overlap, batch "
          f"{args.batch_size}, ResNet-{args.depth} ({args.heads} heads), score >= "
          f"{args.score_thr}", flush=True)
    rows = []
    for task in args.tasks:
        cfg = compose_cfg(task, args.image_size, args.data_dir)
        image = mosaic(demo_files(cfg, 64), args.size, Path(scratch("mosaic_")) / "mosaic.png")
        for side in args.sides:
            t0 = time.perf_counter()
            try:
                r = run_child([__file__, *argv, "--child", task, side, "--image", str(image)])
            except RuntimeError as exc:
                print(f"  {task} / {side}: FAILED {exc}", flush=True)
                continue
            rows.append([task, side, round(r["seconds"], 1), round(r["rss_before_mib"]),
                         round(r["peak_rss_mib"]), round(r["rise_mib"]), r["detections"],
                         *([round(r["cuda_peak_mib"])] if "cuda_peak_mib" in r else [])])
            print(f"  {task} / {side}: {time.perf_counter() - t0:.0f} s", flush=True)
    headers = ["task", "side", "predict s", "RSS before (MiB)", "peak RSS (MiB)",
               "rise (MiB)", f"detections >= {args.score_thr}"]
    if any(len(r) > len(headers) for r in rows):
        headers.append("CUDA peak (MiB)")
    print()
    print_table(headers, rows)
    return rows


if __name__ == "__main__":
    main()
