"""The synthetic nanorod data must be reproducible and actually hard: crowded and overlapping."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from em_lightning.data.demo_nanorods import (
    LENGTH_RANGE,
    WIDTH_RANGE,
    box_coverage,
    ensure_nanorods_dataset,
    generate_nanorods_dataset,
    main,
    overlap_statistics,
    render_nanorod_image,
)

SMALL = {"n_train": 2, "n_val": 1, "image_size": 128, "rods_per_image": 8}


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    a = _files(generate_nanorods_dataset(tmp_path / "a", **SMALL, seed=5))
    b = _files(generate_nanorods_dataset(tmp_path / "b", **SMALL, seed=5))
    c = _files(generate_nanorods_dataset(tmp_path / "c", **SMALL, seed=6))
    assert a == b
    assert a.keys() == c.keys()
    assert a["images/train/nanorods_000.png"] != c["images/train/nanorods_000.png"]


def test_val_images_do_not_depend_on_n_train(tmp_path: Path) -> None:
    a = generate_nanorods_dataset(tmp_path / "a", **SMALL)
    b = generate_nanorods_dataset(tmp_path / "b", **(SMALL | {"n_train": 1}))
    name = "images/val/nanorods_000.png"
    assert (a / name).read_bytes() == (b / name).read_bytes()


def test_layout_and_annotations(tmp_path: Path) -> None:
    root = generate_nanorods_dataset(tmp_path, **SMALL)
    for split, n in (("train", 2), ("val", 1)):
        data = json.loads((root / "annotations" / f"{split}.json").read_text())
        names = [im["file_name"] for im in data["images"]]
        assert names == [f"{split}/nanorods_{i:03d}.png" for i in range(n)]
        assert len(data["annotations"]) == 8 * n
        assert [c["name"] for c in data["categories"]] == ["nanorod"]
        for name in names:
            img = cv2.imread(str(root / "images" / name), cv2.IMREAD_UNCHANGED)
            assert img.dtype == np.uint8 and img.shape == (128, 128)
            stem = Path(name).stem
            assert (root / "dota" / split / f"{stem}.txt").is_file()
            assert (root / "kitti" / split / f"{stem}.txt").is_file()
        assert (root / "kitti" / split / "classes.txt").read_text() == "nanorod\n"
    assert "nanorod" in (root / "README.txt").read_text()


def test_ground_truth_boxes_are_rods() -> None:
    _, objects = render_nanorod_image(np.random.default_rng(1), size=256, n_rods=20)
    assert len(objects) == 20
    for o in objects:
        assert o.label == "nanorod"
        assert LENGTH_RANGE[0] <= o.w <= LENGTH_RANGE[1]  # le90: w is the length
        assert WIDTH_RANGE[0] <= o.h <= WIDTH_RANGE[1]
        assert -math.pi / 2 <= o.angle < math.pi / 2
        assert 0 <= o.cx <= 256 and 0 <= o.cy <= 256


@pytest.fixture(scope="module")
def default_density() -> list[tuple[np.ndarray, list]]:
    """Three images at the default size and rod count."""
    return [render_nanorod_image(np.random.default_rng([0, 0, i])) for i in range(3)]


def test_overlap_is_heavy_at_default_density(default_density: list) -> None:
    for _, objects in default_density:
        stats = overlap_statistics(objects)
        assert stats["n_rods"] == 62
        # measured over the 21 default images: 0.58-0.89, mean 0.75
        assert stats["fraction_overlapping"] > 0.3, stats
        assert stats["mean_neighbours"] > 0.8, stats


def test_intensity_adds_up_where_rods_overlap(default_density: list) -> None:
    for image, objects in default_density:
        coverage = box_coverage(objects, image.shape)
        single = image[coverage == 1].mean()
        multiple = image[coverage >= 2].mean()
        assert (coverage >= 2).sum() > 500
        assert multiple > 1.3 * single, (multiple, single)


def test_rods_are_brighter_than_background(default_density: list) -> None:
    for image, objects in default_density:
        coverage = box_coverage(objects, image.shape)
        inside, outside = image[coverage > 0].mean(), image[coverage == 0].mean()
        assert inside > outside + 30, (inside, outside)
        assert outside < 40  # dark background


def test_render_is_deterministic_and_noisy() -> None:
    a, oa = render_nanorod_image(np.random.default_rng(9), size=128, n_rods=6)
    b, ob = render_nanorod_image(np.random.default_rng(9), size=128, n_rods=6)
    assert np.array_equal(a, b) and oa == ob
    assert len(np.unique(a)) > 20


def test_scan_line_noise_is_along_rows() -> None:
    empty, objects = render_nanorod_image(np.random.default_rng(2), size=256, n_rods=0)
    assert objects == []
    rows = empty.astype(float).mean(axis=1).std()
    cols = empty.astype(float).mean(axis=0).std()
    assert rows > 2 * cols, (rows, cols)


def test_ensure_generates_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="em_lightning.data.demo_nanorods"):
        assert ensure_nanorods_dataset(tmp_path, **SMALL) is True
    assert "generating" in caplog.text
    assert (tmp_path / "annotations" / "train.json").is_file()
    assert ensure_nanorods_dataset(tmp_path, **SMALL) is False


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = [str(tmp_path), "--n-train", "1", "--n-val", "1", "--image-size", "96"]
    assert main([*args, "--rods-per-image", "4"]) == 0
    assert "wrote 2 images, 8 rods" in capsys.readouterr().out
    assert (tmp_path / "images" / "val" / "nanorods_000.png").is_file()


def test_default_rotated_nms_keeps_overlapping_rods(default_density: list) -> None:
    """The detector's final NMS must not remove rods that overlap other rods: fed the true boxes
    with random scores, it keeps nearly all of them (mmrotate's DOTA value 0.1 keeps ~60 %)."""
    import torch
    from mmcv.ops import nms_rotated

    from tests.conftest import compose_cfg

    nms = compose_cfg(["task=nanorods"]).model.detector.test_cfg.rcnn.nms
    assert nms.type == "nms_rotated"
    generator = torch.Generator().manual_seed(0)
    kept = total = 0
    for _, objects in default_density:
        boxes = torch.tensor([[o.cx, o.cy, o.w, o.h, o.angle] for o in objects],
                             dtype=torch.float32)
        scores = torch.rand(len(boxes), generator=generator)
        _, keep = nms_rotated(boxes, scores, nms.iou_threshold)
        kept, total = kept + len(keep), total + len(boxes)
    assert kept / total >= 0.95, f"NMS at IoU {nms.iou_threshold} kept {kept} of {total} rods"
