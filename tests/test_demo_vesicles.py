"""Tests of the synthetic TEM vesicles demo dataset: determinism, exact masks, realism."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from em_lightning.data.demo_vesicles import (
    CATEGORIES,
    ensure_vesicles_dataset,
    generate_vesicles_dataset,
    image_rng,
    main,
    polygon_mask,
    render_vesicle_image,
)

SMALL = {"image_size": 160, "n_big": 6, "n_small": 20, "n_holes": 6}
BIG_ID, SMALL_ID, HOLE_ID = 1, 2, 3


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2)


def _grow(mask: np.ndarray, radius: int) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), _disk(radius)).astype(bool)


def _shrink(mask: np.ndarray, radius: int) -> np.ndarray:
    return cv2.erode(mask.astype(np.uint8), _disk(radius)).astype(bool)


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_vesicles_dataset(
        tmp_path_factory.mktemp("a"), n_train=2, n_val=1, seed=3, **SMALL
    )


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One default-density 256 px image, written to disk and read back through pycocotools."""
    root = generate_vesicles_dataset(
        tmp_path_factory.mktemp("scene"), n_train=1, n_val=0, image_size=256, seed=0
    )
    coco = COCO(str(root / "annotations" / "train.json"))
    info = coco.loadImgs(1)[0]
    image = cv2.imread(str(root / "images" / info["file_name"]), cv2.IMREAD_UNCHANGED)
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    masks = [coco.annToMask(a).astype(bool) for a in anns]
    return {"root": root, "coco": coco, "image": image, "anns": anns, "masks": masks}


def test_same_seed_gives_byte_identical_files(small_root: Path, tmp_path: Path) -> None:
    again = generate_vesicles_dataset(tmp_path, n_train=2, n_val=1, seed=3, **SMALL)
    first, second = _files(small_root), _files(again)
    assert sorted(first) == [
        "README.txt",
        "annotations/train.json",
        "annotations/val.json",
        "images/train/vesicles_000.png",
        "images/train/vesicles_001.png",
        "images/val/vesicles_000.png",
    ]
    assert first == second


def test_different_seed_differs_and_images_do_not_depend_on_split_size(
    small_root: Path, tmp_path: Path
) -> None:
    other = generate_vesicles_dataset(tmp_path / "s4", n_train=1, n_val=0, seed=4, **SMALL)
    one = generate_vesicles_dataset(tmp_path / "s3", n_train=1, n_val=0, seed=3, **SMALL)
    png = "images/train/vesicles_000.png"
    a = cv2.imread(str(small_root / png), cv2.IMREAD_UNCHANGED).astype(int)
    b = cv2.imread(str(other / png), cv2.IMREAD_UNCHANGED).astype(int)
    assert np.mean(a != b) > 0.9
    assert (other / "annotations/train.json").read_bytes() != (
        small_root / "annotations/train.json"
    ).read_bytes()
    # image 0 of seed 3 is the same whether 1 or 2 training images are requested
    assert (one / png).read_bytes() == (small_root / png).read_bytes()
    val = (small_root / "images/val/vesicles_000.png").read_bytes()
    assert val != (small_root / png).read_bytes()


def test_coco_files_are_consistent(small_root: Path) -> None:
    coco = COCO(str(small_root / "annotations" / "train.json"))
    assert coco.loadCats(coco.getCatIds()) == CATEGORIES
    assert [i["file_name"] for i in coco.dataset["images"]] == [
        "train/vesicles_000.png",
        "train/vesicles_001.png",
    ]
    assert "date" not in json.dumps(coco.dataset["info"])
    for info in coco.dataset["images"]:
        image = cv2.imread(str(small_root / "images" / info["file_name"]), cv2.IMREAD_UNCHANGED)
        assert image.dtype == np.uint8 and image.shape == (160, 160)
        assert (info["height"], info["width"]) == (160, 160)
    anns = coco.dataset["annotations"]
    assert [a["id"] for a in anns] == list(range(1, len(anns) + 1))
    for ann in anns:
        poly = np.asarray(ann["segmentation"][0]).reshape(-1, 2)
        assert len(ann["segmentation"]) == 1 and len(poly) >= 3 and ann["iscrowd"] == 0
        assert poly.min() >= 0 and poly.max() <= 160
        x0, y0 = poly.min(0)
        x1, y1 = poly.max(0)
        np.testing.assert_allclose(ann["bbox"], [x0, y0, x1 - x0, y1 - y0], atol=0.011)
        assert ann["area"] == coco.annToMask(ann).sum() > 0
    readme = (small_root / "README.txt").read_text()
    assert "seed=3" in readme and "image_size=160" in readme and "big_vesicle" in readme


def test_counts_close_to_requested_and_shapes(scene: dict) -> None:
    counts = {c: sum(a["category_id"] == c for a in scene["anns"]) for c in (1, 2, 3)}
    assert 27 <= counts[BIG_ID] <= 30
    assert 108 <= counts[SMALL_ID] <= 120
    assert 27 <= counts[HOLE_ID] <= 30
    side = 256
    for cat, (lo, hi) in {
        BIG_ID: (0.04, 0.10),
        SMALL_ID: (0.006, 0.018),
        HOLE_ID: (0.006, 0.016),
    }.items():
        radii = [
            np.sqrt(a["area"] / np.pi) / side
            for a in scene["anns"]
            if a["category_id"] == cat and min(a["bbox"][2:]) > 0.9 * max(a["bbox"][2:])
        ]
        assert radii and lo < np.median(radii) < hi, (cat, np.median(radii))


def test_masks_do_not_overlap_or_touch(scene: dict) -> None:
    cover = np.sum(scene["masks"], axis=0)
    assert cover.max() == 1
    union = cover.astype(bool)
    square = np.ones((3, 3), np.uint8)
    for mask in scene["masks"]:
        grown = cv2.dilate(mask.astype(np.uint8), square).astype(bool)
        assert not np.any(grown & union & ~mask)  # not even 8-connected neighbours


def test_annotation_masks_equal_rendered_polygons(scene: dict) -> None:
    image, instances = render_vesicle_image(image_rng(0, "train", 0), 256)
    assert np.array_equal(image, scene["image"])
    assert len(instances) == len(scene["anns"])
    for inst, ann, mask in zip(instances, scene["anns"], scene["masks"]):
        assert inst["category_id"] == ann["category_id"]
        np.testing.assert_allclose(inst["polygon"].ravel(), ann["segmentation"][0])
        assert np.array_equal(polygon_mask(inst["polygon"], 256, 256).astype(bool), mask)


def _local_contrast(scene: dict) -> tuple[dict[int, float], float]:
    """Mean (object - surrounding free film) per category, in grey levels; and film std."""
    image = scene["image"].astype(float)
    taken = _grow(np.any(scene["masks"], axis=0), 1)
    deltas: dict[int, list[float]] = {1: [], 2: [], 3: []}
    for ann, mask in zip(scene["anns"], scene["masks"]):
        ring = _grow(mask, 5) & ~taken
        inside = _shrink(mask, 3) if ann["category_id"] == BIG_ID else mask
        if ring.sum() >= 20 and inside.any():
            deltas[ann["category_id"]].append(image[inside].mean() - image[ring].mean())
    film_std = image[~_grow(taken, 4)].std()
    return {c: float(np.mean(v)) for c, v in deltas.items()}, float(film_std)


def test_contrast_ordering_is_realistic(scene: dict) -> None:
    delta, film_std = _local_contrast(scene)
    # noisy textured film: several grey levels of std
    assert 10 < film_std < 35
    # holes bright, big vesicles slightly lighter, small vesicles dark
    assert delta[HOLE_ID] > delta[BIG_ID] > 0 > delta[SMALL_ID]
    assert delta[HOLE_ID] > 1.2 * film_std
    assert delta[SMALL_ID] < -0.6 * film_std
    # big vesicles are low contrast: well below the pixel noise of the film
    assert 2 < delta[BIG_ID] < 0.6 * film_std


def test_big_vesicles_have_a_darker_rim(scene: dict) -> None:
    image = scene["image"].astype(float)
    gaps = [
        image[m & ~_shrink(m, 1)].mean() - image[_shrink(m, 4)].mean()
        for a, m in zip(scene["anns"], scene["masks"])
        if a["category_id"] == BIG_ID
    ]
    assert np.mean(gaps) < -3
    assert np.mean(np.asarray(gaps) < 0) > 0.8


def test_painted_regions_are_aligned_with_masks(scene: dict) -> None:
    """Shifting masks by 2 px must lose contrast: the annotation sits on the painted object."""
    image = scene["image"].astype(float)
    for cat, sign, min_loss in ((HOLE_ID, 1, 10.0), (SMALL_ID, -1, 5.0)):
        masks = [m for a, m in zip(scene["anns"], scene["masks"]) if a["category_id"] == cat]
        true = np.mean([image[m].mean() for m in masks])
        shifted = np.mean([image[np.roll(m, (2, 2), axis=(0, 1))].mean() for m in masks])
        assert sign * (true - shifted) > min_loss


def test_crowded_requests_place_fewer_deterministically() -> None:
    runs = [
        render_vesicle_image(np.random.default_rng(5), 128, n_big=40, n_small=0, n_holes=0)
        for _ in range(2)
    ]
    (img_a, inst_a), (img_b, inst_b) = runs
    assert 10 < len(inst_a) < 40
    assert np.array_equal(img_a, img_b) and len(inst_a) == len(inst_b)
    assert all(np.array_equal(a["polygon"], b["polygon"]) for a, b in zip(inst_a, inst_b))
    assert {a["category_id"] for a in inst_a} == {BIG_ID}


def test_polygons_are_dense_enough() -> None:
    _, instances = render_vesicle_image(
        np.random.default_rng(1), 512, n_big=3, n_small=3, n_holes=3
    )
    for inst in instances:
        poly = inst["polygon"]
        assert poly.shape[1] == 2 and poly.dtype == np.float64
        edges = np.linalg.norm(np.diff(np.vstack([poly, poly[:1]]), axis=0), axis=1)
        assert len(poly) >= 16 or edges.max() < 4  # >= 16 vertices unless clipped to a sliver
        assert np.median(edges) <= 3.5


def test_ensure_generates_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    kwargs = {"n_train": 1, "n_val": 1, "image_size": 96, "n_big": 2, "n_small": 6, "n_holes": 2}
    root = tmp_path / "demo"
    with caplog.at_level(logging.DEBUG, logger="em_lightning.data.demo_vesicles"):
        assert ensure_vesicles_dataset(root, **kwargs) is True
    assert "Generating" in caplog.text and str(root.resolve()) in caplog.text
    before = _files(root)
    assert len(before) == 5
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="em_lightning.data.demo_vesicles"):
        assert ensure_vesicles_dataset(root, **kwargs) is False
    assert caplog.text == "" and _files(root) == before


def test_cli_writes_dataset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "--n-small" in capsys.readouterr().out
    main(
        [
            "--root",
            str(tmp_path),
            "--n-train",
            "1",
            "--n-val",
            "0",
            "--image-size",
            "96",
            "--n-big",
            "2",
            "--n-small",
            "4",
            "--n-holes",
            "2",
            "--seed",
            "9",
        ]
    )
    data = json.loads((tmp_path / "annotations" / "train.json").read_text())
    assert len(data["images"]) == 1 and data["info"]["seed"] == 9
    assert 1 <= len(data["annotations"]) <= 8
