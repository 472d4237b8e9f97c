"""Evaluation speed and equality: em_lightning's ``DetectionEvaluator`` vs plain pycocotools.

Predictions: ``--per-gt`` jittered copies (shifted, scaled, noisy outline, 10 % wrong class,
score falling with the jitter) of every ground-truth instance of the demo vesicles val set
(``--image-size`` px, default 512), as RLE masks + boxes. Both sides start from the same
predictions and evaluate bbox and segm mAP (maxDets 100/300/1000 as mmdet does):

* em_lightning: ``DetectionEvaluator([bbox, segm]).process(samples)`` + ``compute(n)``, GT from
  the dataset's raw ``instances`` as in validation;
* plain: ``COCO(val.json)``, ``loadRes``, ``COCOeval`` for bbox and segm.

Runs alternate (E P P E ...); medians and the ratio are printed, and the mAPs must agree.

    .venv/bin/python benchmarks/eval_speed.py           # 2 images x ~180 GT x 20 = ~7200 dets
    .venv/bin/python benchmarks/eval_speed.py --quick   # 5 per GT, 2 repeats
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from common import DEFAULT_DATA_DIR, compose_cfg, hardware, median, print_table, quiet

METRIC_KEYS = ("bbox_mAP", "bbox_mAP_50", "bbox_mAP_75", "segm_mAP", "segm_mAP_50", "segm_mAP_75")


def jittered_predictions(coco: Any, per_gt: int, seed: int, num_classes: int,
                         label_of: dict[int, int]) -> dict[int, list[dict]]:
    """Per image id: detections {rle, bbox (xywh), score, label} jittered from every GT."""
    import pycocotools.mask as mask_utils

    rng = np.random.default_rng(seed)
    out: dict[int, list[dict]] = {}
    for img_id in sorted(coco.getImgIds()):
        img = coco.loadImgs(img_id)[0]
        h, w = img["height"], img["width"]
        dets = []
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img_id)):
            poly = np.asarray(ann["segmentation"][0], dtype=np.float64).reshape(-1, 2)
            centre = poly.mean(axis=0)
            radius = max(np.sqrt(ann["area"] / np.pi), 1.0)
            for _ in range(per_gt):
                shift = rng.normal(0.0, 0.25 * radius, 2)
                scale = rng.uniform(0.8, 1.2)
                noise = rng.normal(0.0, 0.05 * radius, poly.shape)
                jittered = (poly - centre) * scale + centre + shift + noise
                jittered[:, 0] = jittered[:, 0].clip(0, w - 1)
                jittered[:, 1] = jittered[:, 1].clip(0, h - 1)
                rle = mask_utils.merge(mask_utils.frPyObjects([jittered.ravel().tolist()], h, w))
                bbox = [float(v) for v in mask_utils.toBbox(rle)]
                if bbox[2] < 1 or bbox[3] < 1:
                    continue
                label = label_of[ann["category_id"]]
                if rng.random() < 0.1:
                    label = int(rng.integers(num_classes))
                error = np.hypot(*shift) / radius + abs(scale - 1.0)
                score = float(np.clip(np.exp(-2.0 * error) + rng.normal(0, 0.1), 0.01, 1.0))
                dets.append(dict(rle=rle, bbox=bbox, score=score, label=label))
        out[img_id] = dets
    return out


def evaluator_samples(dataset: Any, preds: dict[int, list[dict]]) -> list[dict]:
    """DetDataSample-like dicts as ``DetectorModule.validation_step`` feeds the evaluator."""
    import torch

    samples = []
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        dets = preds[info["img_id"]]
        xyxy = [[x, y, x + bw, y + bh] for x, y, bw, bh in (d["bbox"] for d in dets)]
        samples.append(dict(
            img_id=info["img_id"], ori_shape=(info["height"], info["width"]),
            instances=info["instances"],
            pred_instances=dict(
                bboxes=torch.tensor(xyxy, dtype=torch.float32).reshape(-1, 4),
                scores=torch.tensor([d["score"] for d in dets], dtype=torch.float32),
                labels=torch.tensor([d["label"] for d in dets], dtype=torch.int64),
                masks=[d["rle"] for d in dets])))
    return samples


def run_evaluator(samples: list[dict], classes: Sequence[str]) -> tuple[float, dict]:
    from em_lightning.evaluation import DetectionEvaluator

    samples = copy.deepcopy(samples)  # mmdet decodes RLE counts in place
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = DetectionEvaluator(["bbox", "segm"], classes)
        evaluator.process(samples)
        metrics = evaluator.compute(len(samples))
    return time.perf_counter() - t0, {k: metrics[k] for k in METRIC_KEYS}


def run_pycocotools(ann_file: Path, preds: dict[int, list[dict]],
                    cat_ids: Sequence[int]) -> tuple[float, dict]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = [dict(image_id=img_id, category_id=cat_ids[d["label"]], bbox=d["bbox"],
                    score=d["score"], segmentation=copy.deepcopy(d["rle"]))
               for img_id, dets in preds.items() for d in dets]
    t0 = time.perf_counter()
    out = {}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        for iou_type in ("bbox", "segm"):
            # segm results keep their box too, as mmdet's results2json writes them
            dt = gt.loadRes(results if iou_type == "segm" else
                            [{k: v for k, v in r.items() if k != "segmentation"}
                             for r in results])
            ev = COCOeval(gt, dt, iou_type)
            ev.params.maxDets = [100, 300, 1000]  # as mmdet's CocoMetric
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            out.update({f"{iou_type}_mAP": ev.stats[0], f"{iou_type}_mAP_50": ev.stats[1],
                        f"{iou_type}_mAP_75": ev.stats[2]})
    return time.perf_counter() - t0, out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--per-gt", type=int, default=20, help="jittered predictions per GT")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side (alternating)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--profile", action="store_true", help="cProfile one evaluator run")
    p.add_argument("--profile-top", type=int, default=30)
    p.add_argument("--quick", action="store_true", help="5 predictions per GT, 2 repeats")
    args = p.parse_args(argv)
    if args.quick:
        args.per_gt, args.repeats = 5, 2
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    quiet()
    from hydra.utils import instantiate
    from pycocotools.coco import COCO

    print(f"# eval speed: {hardware()}", flush=True)
    cfg = compose_cfg("vesicles", args.image_size, args.data_dir)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    ann_file = Path(dm.root) / "annotations" / "val.json"
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(ann_file))
        dataset = dm.build_dataset(dm.splits["val"], augment=False)
    name_to_id = {c["name"]: c["id"] for c in coco.loadCats(coco.getCatIds())}
    cat_ids = [name_to_id[c] for c in dm.classes]
    label_of = {cid: i for i, cid in enumerate(cat_ids)}
    preds = jittered_predictions(coco, args.per_gt, args.seed, len(cat_ids), label_of)
    samples = evaluator_samples(dataset, preds)
    n_det = sum(len(d) for d in preds.values())
    print(f"# {len(preds)} images ({args.image_size} px), {len(coco.getAnnIds())} GT, "
          f"{n_det} detections ({args.per_gt} per GT), {args.repeats} runs per side",
          flush=True)

    times: dict[str, list[float]] = {"em_lightning": [], "pycocotools": []}
    results: dict[str, dict] = {}
    for r in range(args.repeats):
        order = ["em_lightning", "pycocotools"] if r % 2 == 0 else \
            ["pycocotools", "em_lightning"]
        for side in order:
            if side == "em_lightning":
                seconds, metrics = run_evaluator(samples, dm.classes)
            else:
                seconds, metrics = run_pycocotools(ann_file, preds, cat_ids)
            times[side].append(seconds)
            results[side] = metrics
            print(f"  run {r + 1}/{args.repeats} {side}: {seconds:.2f} s", flush=True)

    em, pc = results["em_lightning"], results["pycocotools"]
    diff = max(abs(em[k] - pc[k]) for k in METRIC_KEYS)
    # mmdet's CocoMetric (hence DetectionEvaluator) reports APs rounded to 3 decimals
    equal = all(abs(em[k] - round(pc[k], 3)) < 1e-9 for k in METRIC_KEYS)
    if args.profile:
        profile_evaluator(samples, dm.classes, args.profile_top)
    print()
    print_table(["side", "median s", "runs (s)", *METRIC_KEYS],  # pycocotools: 4 decimals
                [[side, median(t), " ".join(f"{x:.2f}" for x in t),
                  *(results[side][k] for k in METRIC_KEYS)] for side, t in times.items()])
    ratio = median(times["em_lightning"]) / median(times["pycocotools"])
    print(f"\ntime ratio em_lightning / pycocotools: {ratio:.3f}; max |mAP difference|: "
          f"{diff:.1e}; {'EQUAL' if equal else 'DIFFERENT'} after rounding pycocotools to the "
          "3 decimals mmdet's CocoMetric reports")
    return {"times": times, "metrics": results, "ratio": ratio, "max_diff": diff,
            "equal": equal}


def profile_evaluator(samples: list[dict], classes: Sequence[str], top: int) -> None:
    """cProfile one ``DetectionEvaluator`` run (cumulative time, top functions)."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.runcall(run_evaluator, samples, classes)
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).strip_dirs().sort_stats("cumulative").print_stats(top)
    print("\n--- cProfile, DetectionEvaluator (cumulative) ---")
    print("\n".join(buf.getvalue().splitlines()[4:]))


if __name__ == "__main__":
    main()
