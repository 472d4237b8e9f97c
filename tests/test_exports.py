"""predict -> annotation files -> training dataset: every object comes back.

Detections are crafted (masks of every awkward kind, rotated boxes at every angle) and also
taken from a real, untrained model through ``predict``; the exported folder is then loaded by
the tasks' own datamodules, as a user would after correcting it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import pytest
import shapely
import tifffile
import torch
from hydra.utils import instantiate

from em_lightning.data.label_images import label_objects
from em_lightning.data.rotated_formats import (
    axis_aligned_bounds,
    corners_to_rbox,
    normalize_le90,
    rbox_polygon,
)
from em_lightning.errors import ConfigError
from em_lightning.inference.detections import Detection
from em_lightning.inference.exports import check_export, export_annotations
from em_lightning.inference.results import ImageInfo, coco_entries
from tests.conftest import compose_cfg
from tests.test_label_images import SIZE, label_image

VESICLES = ["big_vesicle", "small_vesicle", "hole"]


def _files(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in folder.rglob("*")}


def _mask_detections(labels: np.ndarray) -> list[Detection]:
    return [Detection.from_crop(k % 3, 0.5 + k / 100, crop, origin)
            for k, (_, crop, origin) in enumerate(label_objects(labels))]


def _full(crop: np.ndarray, origin: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, bool)
    x0, y0 = origin
    out[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop
    return out


def _mask_gt(root: Path, tmp_path: Path) -> dict[str, list[tuple[int, np.ndarray]]]:
    """(label, mask) of every object per image name, through the vesicles training loader."""
    cfg = compose_cfg(["task=vesicles", "experiment=tiny", f"data.root={root}"], tmp_path)
    ds = instantiate(cfg.data).build_dataset("train", augment=False)
    out = {}
    for i in range(len(ds)):
        sample = ds[i]["data_samples"]
        assert tuple(sample.scale_factor) == (1.0, 1.0)  # image_size = SIZE: masks 1:1
        masks = sample.gt_instances.masks.to_ndarray().astype(bool)
        out[Path(sample.img_path).name] = list(zip(sample.gt_instances.labels.tolist(), masks))
    return out


def test_masks_round_trip_exactly_through_coco(tmp_path: Path) -> None:
    inp = tmp_path / "input"
    (inp / "sub").mkdir(parents=True)
    labs = [label_image(0), label_image(1)]
    cv2.imwrite(str(inp / "a.png"), np.where(labs[0] > 0, 200, 30).astype(np.uint8))
    pixels = np.where(labs[1] > 0, 4000, 900).astype(np.uint16)
    tifffile.imwrite(inp / "sub" / "b.tif", pixels)
    before = _files(inp)
    infos = [ImageInfo(1, "a.png", str(inp / "a.png"), SIZE, SIZE, None, "none"),
             ImageInfo(2, "sub/b.tif", str(inp / "sub" / "b.tif"), SIZE, SIZE, None, "none")]
    dets = [_mask_detections(lab) for lab in labs]
    entries = coco_entries(dets[0], infos[0]) + coco_entries(dets[1], infos[1],
                                                             first_id=len(dets[0]) + 1)
    root = tmp_path / "out" / "dataset"
    written = export_annotations(root, ["coco"], infos, entries, VESICLES, rotated=False)
    assert root / "annotations" / "train.json" in written
    assert _files(inp) == before  # the input folder is never written to
    assert (root / "images" / "train" / "a.png").read_bytes() == (inp / "a.png").read_bytes()
    assert np.array_equal(tifffile.imread(root / "images" / "train" / "sub__b.tif"), pixels)
    data = json.loads((root / "annotations" / "train.json").read_text())
    kinds = [isinstance(a["segmentation"], list) for a in data["annotations"]]
    assert sum(kinds) > len(kinds) / 2 and not all(kinds)  # polygons, RLE for rings/pieces
    gt = _mask_gt(root, tmp_path)
    for name, image_dets, lab in (("a.png", dets[0], labs[0]), ("sub__b.tif", dets[1], labs[1])):
        assert len(gt[name]) == len(image_dets) == len(np.unique(lab)) - 1
        for (label, mask), det in zip(gt[name], image_dets):
            want = _full(det.mask, det.origin, (SIZE, SIZE))
            assert label == det.label
            assert np.array_equal(mask, want)  # IoU 1.0


def _random_rods(rng: np.random.Generator, n: int) -> list[Detection]:
    dets = []
    for k in range(n):
        length, width = rng.uniform(8, 40), rng.uniform(2, 8)
        angle = rng.choice([-math.pi / 2, math.pi / 2 - 1e-4, 0.0, rng.uniform(-math.pi,
                                                                              math.pi)])
        rbox = np.array(normalize_le90(rng.uniform(10, SIZE - 10), rng.uniform(10, SIZE - 10),
                                       length, width, float(angle)))
        x, y, w, h = axis_aligned_bounds(rbox)
        dets.append(Detection(0, 0.9 - k / 100, np.array([x, y, x + w, y + h]), rbox=rbox))
    return dets


def _rotated_gt(root: Path, fmt: str, tmp_path: Path) -> dict[str, list[tuple]]:
    cfg = compose_cfg(["task=nanorods", "experiment=tiny", f"data.root={root}",
                       f"data.format={fmt}"], tmp_path)
    ds = instantiate(cfg.data).build_dataset("train", augment=False)
    assert len(ds[0]["data_samples"].gt_instances) >= 0  # the pipeline runs
    out = {}
    for i in range(len(ds)):
        info = ds.get_data_info(i)
        out[Path(info["img_path"]).name] = [
            corners_to_rbox(np.reshape(inst["bbox"], (4, 2))) for inst in info["instances"]]
    return out


def _iou(a, b) -> float:
    """Polygon IoU on a 1e-6 px grid: GEOS can return 0 for two boxes equal up to float noise
    (seen: ``rotated_iou`` of (36.115, 71.905, 72.363, 31.911, -0.000804) and the same box
    with cx 1e-14 larger)."""
    pa, pb = (shapely.set_precision(rbox_polygon(box), 1e-6) for box in (a, b))
    return float(pa.intersection(pb).area / pa.union(pb).area)


def _assert_same_boxes(got: list, want: list) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert _iou(a, b) >= 0.999


def test_rotated_boxes_round_trip_through_coco_kitti_and_dota(tmp_path: Path) -> None:
    inp = tmp_path / "input"
    inp.mkdir()
    rng = np.random.default_rng(0)
    infos, dets, entries = [], [], []
    for k, name in enumerate(["r0.png", "r1.png", "empty.png"]):
        cv2.imwrite(str(inp / name), rng.integers(0, 255, (SIZE, SIZE), dtype=np.uint8))
        info = ImageInfo(k + 1, name, str(inp / name), SIZE, SIZE, 0.5, "user")
        image_dets = _random_rods(rng, 12) if name != "empty.png" else []
        infos.append(info)
        dets.append(image_dets)
        entries += coco_entries(image_dets, info, first_id=len(entries) + 1)
    root = tmp_path / "out" / "dataset"
    export_annotations(root, ["coco", "kitti", "dota"], infos, entries, ["nanorod"],
                       rotated=True, task="nanorods")
    assert (root / "kitti" / "train" / "classes.txt").read_text() == "nanorod\n"
    assert "data.format=<coco|kitti|dota>" in (root / "README.txt").read_text()
    for fmt in ("coco", "kitti", "dota"):
        gt = _rotated_gt(root, fmt, tmp_path)
        assert sorted(gt) == ["empty.png", "r0.png", "r1.png"], fmt
        for info, image_dets in zip(infos, dets):
            _assert_same_boxes(gt[info.name], [d.rbox for d in image_dets])


def test_bad_export_settings_fail_before_anything_runs(tmp_path: Path) -> None:
    from em_lightning.predict import predict

    assert check_export(None, rotated=False) == []
    assert check_export(["coco", "coco"], rotated=True) == ["coco"]
    with pytest.raises(ConfigError, match="export: unknown format"):
        check_export(["yolo"], rotated=True)
    cfg = compose_cfg(["task=vesicles", "experiment=tiny", "ckpt_path=none.ckpt",
                       f"input={tmp_path / 'nothing'}", "export=[kitti]"], config="predict")
    with pytest.raises(ConfigError, match="masks are exported as coco"):
        predict(cfg)  # before the (missing) input or checkpoint is looked at
    with pytest.raises(ConfigError, match="export_split"):
        export_annotations(tmp_path, ["coco"], [], [], VESICLES, False, split="a/b")


# --------------------------------------------------------------------------- real predict runs


def _predict(task: str, ckpt: Path, inp: str, out: Path, export: str) -> dict:
    from em_lightning.predict import predict

    cfg = compose_cfg([f"task={task}", "experiment=tiny", f"ckpt_path={ckpt}", f"input={inp}",
                       f"output={out}", "score_thr=0.2", "device=cpu", "overlays=false",
                       f"export={export}"], config="predict")
    return predict(cfg)


def _untrained(task: str, path: Path) -> Path:
    from em_lightning.registry import register_all_modules

    register_all_modules()
    torch.manual_seed(0)
    module = instantiate(compose_cfg([f"task={task}", "experiment=tiny"]).model)
    torch.save({"state_dict": module.state_dict()}, path)
    return path


def test_predict_exports_masks_that_load_back(tiny_vesicles: Path, tmp_path: Path) -> None:
    inp = tiny_vesicles / "images" / "val"
    before = _files(inp)
    ckpt = _untrained("vesicles", tmp_path / "masks.ckpt")
    summary = _predict("vesicles", ckpt, str(inp), tmp_path / "out", "[coco]")
    assert summary["n_objects"] > 10 and _files(inp) == before
    results = json.loads((tmp_path / "out" / "coco_results.json").read_text())
    images = {i["id"]: i["file_name"]
              for i in json.loads((tmp_path / "out" / "coco_images.json").read_text())["images"]}
    gt = _mask_gt(tmp_path / "out" / "dataset", tmp_path)
    assert sum(len(v) for v in gt.values()) == len(results)
    by_image: dict[str, list] = {}
    for entry in results:
        by_image.setdefault(images[entry["image_id"]], []).append(entry)
    for name, entries in by_image.items():
        for (label, mask), entry in zip(gt[name], entries):
            seg = entry["segmentation"]
            want = mask_utils.decode({**seg, "counts": seg["counts"].encode()}).astype(bool)
            assert label == entry["category_id"] - 1 and np.array_equal(mask, want)
    report = (tmp_path / "out" / "report.html").read_text()
    assert 'href="dataset/annotations/train.json"' in report


def test_predict_exports_rotated_boxes_in_every_format(tiny_nanorods: Path,
                                                       tmp_path: Path) -> None:
    ckpt = _untrained("nanorods", tmp_path / "rods.ckpt")
    out = tmp_path / "out"
    summary = _predict("nanorods", ckpt, f"{tiny_nanorods}/images/val/*.png", out,
                       "[coco,kitti,dota]")
    assert summary["n_objects"] > 0
    results = json.loads((out / "coco_results.json").read_text())
    images = {i["id"]: i["file_name"]
              for i in json.loads((out / "coco_images.json").read_text())["images"]}
    want: dict[str, list] = {name: [] for name in images.values()}
    for entry in results:
        want[images[entry["image_id"]]].append(entry["rbox"])
    for fmt in ("coco", "kitti", "dota"):
        gt = _rotated_gt(out / "dataset", fmt, tmp_path)
        assert sorted(gt) == sorted(want)
        for name, boxes in want.items():
            _assert_same_boxes(gt[name], boxes)
