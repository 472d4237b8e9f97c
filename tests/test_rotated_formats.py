"""Geometry, round trips and validation of the rotated-box annotation formats."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from em_lightning.data.demo_nanorods import generate_nanorods_dataset
from em_lightning.data.errors import DataError, SkipReport
from em_lightning.data.rotated_formats import (
    RotatedImage,
    RotatedObject,
    corners_to_rbox,
    normalize_le90,
    rbox_to_corners,
    read_coco_rotated,
    read_dota,
    read_kitti,
    rotated_iou,
    write_coco_rotated,
    write_dota,
    write_kitti,
)

HALF_PI = math.pi / 2
EPS = 1e-7
ANGLES = [
    0.0,
    0.3,
    -0.7,
    HALF_PI - EPS,
    HALF_PI,
    HALF_PI + EPS,
    -HALF_PI,
    -HALF_PI + EPS,
    2.5,
    -3.0,
]
SIZES = [(10.0, 4.0), (4.0, 10.0), (7.0, 7.0)]  # w > h, w < h, square


def _same_corner_set(a: np.ndarray, b: np.ndarray, tol: float = 1e-6) -> bool:
    """True when the two (4, 2) corner arrays hold the same points in any order."""
    dist = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
    return bool((dist.min(axis=1) < tol).all() and (dist.min(axis=0) < tol).all())


def _shoelace(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


# --------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("angle", ANGLES)
@pytest.mark.parametrize("wh", SIZES)
def test_rbox_corners_round_trip(angle: float, wh: tuple[float, float]) -> None:
    box = (31.0, -12.5, *wh, angle)
    corners = rbox_to_corners(*box)
    back = corners_to_rbox(corners)
    cx, cy, w, h, a = back
    assert (cx, cy) == pytest.approx((31.0, -12.5))
    assert w >= h and -HALF_PI <= a < HALF_PI
    assert sorted((w, h)) == pytest.approx(sorted(wh))
    assert _same_corner_set(rbox_to_corners(*back), corners)
    assert _same_corner_set(rbox_to_corners(*normalize_le90(*box)), corners)
    assert rotated_iou(box, back) == pytest.approx(1.0, abs=1e-9)
    # the other winding (and another start corner) is the same rectangle
    assert _same_corner_set(rbox_to_corners(*corners_to_rbox(corners[::-1])), corners)
    assert _same_corner_set(rbox_to_corners(*corners_to_rbox(np.roll(corners, 1, 0))), corners)


def test_normalize_le90_keeps_the_rectangle_and_is_idempotent() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        box = (*rng.uniform(-50, 50, 2), *rng.uniform(0.5, 30, 2), rng.uniform(-10, 10))
        norm = normalize_le90(*box)
        assert norm[2] >= norm[3] and -HALF_PI <= norm[4] < HALF_PI
        assert _same_corner_set(rbox_to_corners(*norm), rbox_to_corners(*box), 1e-6)
        assert normalize_le90(*norm) == pytest.approx(norm)


def test_corners_are_clockwise_on_screen_and_angle_is_clockwise() -> None:
    corners = rbox_to_corners(0.0, 0.0, 10.0, 4.0, 0.0)
    assert _shoelace(corners) > 0  # positive area in y-down coordinates = clockwise on screen
    assert corners[0] == pytest.approx([-5.0, -2.0])  # starts at the top-left
    # a small positive angle moves the right end of the long axis DOWN (larger y)
    tilted = rbox_to_corners(0.0, 0.0, 10.0, 0.0, 0.1)
    assert tilted[1, 1] > 0


def test_corners_to_rbox_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match="shape"):
        corners_to_rbox(np.zeros((3, 2)))


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ((0, 0, 10, 4, 0), (0, 0, 10, 4, 0), 1.0),
        ((0, 0, 10, 4, 0), (0, 0, 10, 4, HALF_PI), 16 / (80 - 16)),  # a cross: 4x4 in common
        ((0, 0, 10, 4, 0), (5, 0, 10, 4, 0), 20 / (80 - 20)),  # shifted by half its width: 1/3
        ((0, 0, 10, 4, 0.4), (5 * math.cos(0.4), 5 * math.sin(0.4), 10, 4, 0.4), 1 / 3),
        ((0, 0, 2, 2, 0), (0, 0, 2, 2, math.pi / 4), 1 / math.sqrt(2)),  # square vs 45 deg
        ((0, 0, 10, 4, 0), (0, 0, 10, 4, math.pi), 1.0),  # half a turn is the same box
        ((0, 0, 10, 4, 0), (20, 0, 10, 4, 0), 0.0),
        ((0, 0, 10, 0, 0), (0, 0, 10, 0, 0), 0.0),  # degenerate
    ],
)
def test_rotated_iou_known_pairs(a: tuple, b: tuple, expected: float) -> None:
    assert rotated_iou(a, b) == pytest.approx(expected, abs=1e-9)
    assert rotated_iou(b, a) == pytest.approx(expected, abs=1e-9)


# --------------------------------------------------------------------------- round trips


def _blank_images(image_dir: Path, records: list[RotatedImage]) -> None:
    image_dir.mkdir(parents=True, exist_ok=True)
    for im in records:
        cv2.imwrite(str(image_dir / im.file_name), np.zeros((im.height, im.width), np.uint8))


def _random_records() -> tuple[list[RotatedImage], list[str]]:
    rng = np.random.default_rng(7)
    classes = ["rod", "sphere", "plate-like"]
    records = []
    for i, (width, height) in enumerate([(120, 90), (64, 64), (200, 100)]):
        objects = [
            RotatedObject(
                classes[int(rng.integers(3))],
                float(rng.uniform(0, width)),
                float(rng.uniform(0, height)),
                float(rng.uniform(1, 40)),
                float(rng.uniform(1, 40)),
                float(rng.choice([rng.uniform(-4, 4), HALF_PI - 1e-9, -HALF_PI])),
            )
            for _ in range(6 if i != 1 else 0)  # image 1 has no objects
        ]
        records.append(RotatedImage(f"img_{i}.png", width, height, objects))
    return records, classes


def _assert_same(a: list[RotatedImage], b: list[RotatedImage]) -> None:
    by_name = {Path(im.file_name).name: im for im in b}
    assert sorted(by_name) == sorted(Path(im.file_name).name for im in a)
    for im in a:
        other = by_name[Path(im.file_name).name]
        assert (other.width, other.height) == (im.width, im.height)
        assert len(other.objects) == len(im.objects)
        for o1, o2 in zip(im.objects, other.objects):
            assert o1.label == o2.label
            assert rotated_iou(o1.rbox, o2.rbox) >= 0.999


def test_kitti_round_trip(tmp_path: Path) -> None:
    records, classes = _random_records()
    _blank_images(tmp_path / "img", records)
    write_kitti(records, classes, tmp_path / "labels")
    assert (tmp_path / "labels" / "img_1.txt").read_text() == ""
    images, names = read_kitti(tmp_path / "labels", tmp_path / "img")
    assert names == classes
    _assert_same(records, images)


def test_dota_round_trip(tmp_path: Path) -> None:
    records, classes = _random_records()
    _blank_images(tmp_path / "img", records)
    write_dota(records, tmp_path / "dota")
    images, names = read_dota(tmp_path / "dota", tmp_path / "img")
    assert names == sorted(classes)
    _assert_same(records, images)
    images, names = read_dota(tmp_path / "dota", tmp_path / "img", classes=classes)
    assert names == classes


def test_coco_round_trip_and_standard_fields(tmp_path: Path) -> None:
    records, classes = _random_records()
    path = tmp_path / "ann.json"
    write_coco_rotated(records, classes, path)
    images, names = read_coco_rotated(path)
    assert names == classes
    _assert_same(records, images)
    data = json.loads(path.read_text())
    ann = data["annotations"][0]
    obj = records[0].objects[0]
    corners = rbox_to_corners(*obj.rbox)
    assert ann["area"] == pytest.approx(obj.w * obj.h, abs=1e-5)
    assert ann["segmentation"][0] == pytest.approx(corners.ravel().tolist(), abs=1e-5)
    x0, y0 = corners.min(axis=0)
    x1, y1 = corners.max(axis=0)
    assert ann["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=1e-5)
    assert [c["id"] for c in data["categories"]] == [1, 2, 3]


def test_writers_are_deterministic(tmp_path: Path) -> None:
    records, classes = _random_records()
    for run in ("a", "b"):
        write_kitti(records, classes, tmp_path / run / "kitti")
        write_dota(records, tmp_path / run / "dota")
        write_coco_rotated(records, classes, tmp_path / run / "ann.json")
    for path in sorted((tmp_path / "a").rglob("*.*")):
        assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes()


def test_dota_reader_skips_headers_and_accepts_nine_fields(tmp_path: Path) -> None:
    _blank_images(tmp_path / "img", [RotatedImage("P0001.png", 100, 80)])
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "P0001.txt").write_text(
        "imagesource:GoogleEarth\ngsd:0.146\n"
        "10 10 30 10 30 20 10 20 plane 0\n"  # clockwise on screen
        "10 10 10 20 30 20 30 10 ship\n"  # counter-clockwise, no difficulty
    )
    (images, classes) = read_dota(tmp_path / "ann", tmp_path / "img")
    assert classes == ["plane", "ship"]
    boxes = [o.rbox for o in images[0].objects]
    assert boxes[0] == pytest.approx((20, 15, 20, 10, 0))
    assert rotated_iou(boxes[1], (20, 15, 20, 10, 0)) == pytest.approx(1.0)


def test_kitti_reader_gives_empty_images_and_ignores_trailing_text(tmp_path: Path) -> None:
    records = [RotatedImage("a.png", 50, 40), RotatedImage("b.png", 60, 30)]
    _blank_images(tmp_path / "img", records)
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "classes.txt").write_text("rod\nsphere\n")
    (labels / "a.txt").write_text("1 20 20 10 4 0.5 some note\n\n")
    images, classes = read_kitti(labels, tmp_path / "img")
    assert classes == ["rod", "sphere"]
    assert [(im.file_name, im.width, im.height, len(im.objects)) for im in images] == [
        ("a.png", 50, 40, 1),
        ("b.png", 60, 30, 0),
    ]
    assert images[0].objects[0] == RotatedObject("sphere", 20, 20, 10, 4, 0.5)


# --------------------------------------------------------------------------- generated dataset


@pytest.fixture(scope="module")
def nanorods(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nanorods")
    return generate_nanorods_dataset(root, n_train=2, n_val=1, image_size=160, rods_per_image=12)


@pytest.mark.parametrize("split", ["train", "val"])
def test_all_readers_agree_on_generated_dataset(nanorods: Path, split: str) -> None:
    coco, coco_classes = read_coco_rotated(nanorods / "annotations" / f"{split}.json")
    kitti, kitti_classes = read_kitti(nanorods / "kitti" / split, nanorods / "images" / split)
    dota, dota_classes = read_dota(nanorods / "dota" / split, nanorods / "images" / split)
    assert coco_classes == kitti_classes == dota_classes == ["nanorod"]
    assert [im.file_name for im in coco] == [f"{split}/{im.file_name}" for im in kitti]
    assert sum(len(im.objects) for im in coco) == 12 * len(coco)
    _assert_same(coco, kitti)
    _assert_same(coco, dota)
    for im in coco:
        assert (nanorods / "images" / im.file_name).is_file()


# --------------------------------------------------------------------------- bad data

KITTI_BAD = {
    "zero_width": ("0 50 50 0 5 0.1", "degenerate", "w=0"),
    "negative_height": ("0 50 50 10 -1 0.1", "degenerate", "h=-1"),
    "nan": ("0 nan 50 10 5 0", "non_finite", "non-finite"),
    "inf_angle": ("0 50 50 10 5 inf", "non_finite", "non-finite"),
    "far_outside": ("0 900 50 10 5 0", "outside_image", "outside"),
    "unknown_class": ("3 50 50 10 5 0", "unknown_class", "class index 3"),
    "negative_class": ("-1 50 50 10 5 0", "unknown_class", "class index -1"),
    "too_few_fields": ("0 50 50 10", "malformed", "got 4 fields"),
    "not_a_number": ("0 50 abc 10 5 0", "malformed", "'abc' is not a number"),
    "float_class": ("0.5 50 50 10 5 0", "malformed", "not an integer"),
}


def _kitti_case(tmp_path: Path, bad_line: str) -> tuple[Path, Path, Path]:
    _blank_images(tmp_path / "img", [RotatedImage("x.png", 100, 100)])
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "classes.txt").write_text("rod\n")
    txt = labels / "x.txt"
    txt.write_text(f"0 40 40 10 5 0.2\n{bad_line}\n0 60 60 12 6 -0.2\n")
    return labels, tmp_path / "img", txt


@pytest.mark.parametrize("case", sorted(KITTI_BAD))
def test_kitti_bad_data(tmp_path: Path, case: str) -> None:
    line, kind, words = KITTI_BAD[case]
    labels, img, txt = _kitti_case(tmp_path, line)
    with pytest.raises(DataError, match=words) as info:
        read_kitti(labels, img)
    assert f"{txt}:2" in str(info.value)
    report = SkipReport(strict=False)
    images, _ = read_kitti(labels, img, report=report)
    assert report.counts == {kind: 1} and report.total == 1
    assert len(images[0].objects) == 2  # the good lines survive
    assert f"{txt}:2" in report.messages[0]


DOTA_BAD = {
    "degenerate": ("10 10 10 10 10 10 10 10 rod 0", "degenerate", "must be > 0"),
    "collinear": ("10 10 20 10 30 10 40 10 rod 0", "degenerate", "must be > 0"),
    "nan": ("10 10 nan 10 20 20 10 20 rod 0", "non_finite", "non-finite"),
    "far_outside": ("500 500 520 500 520 510 500 510 rod 0", "outside_image", "outside"),
    "unknown_class": ("10 10 20 10 20 20 10 20 tank 0", "unknown_class", "'tank'"),
    "too_few_fields": ("10 10 20 10 20 20 10 20", "malformed", "got 8 fields"),
    "bad_difficulty": ("10 10 20 10 20 20 10 20 rod hard", "malformed", "difficulty"),
    "not_a_number": ("10 10 20 y 20 20 10 20 rod 0", "malformed", "y2='y'"),
}


@pytest.mark.parametrize("case", sorted(DOTA_BAD))
def test_dota_bad_data(tmp_path: Path, case: str) -> None:
    line, kind, words = DOTA_BAD[case]
    _blank_images(tmp_path / "img", [RotatedImage("x.png", 100, 100)])
    (tmp_path / "ann").mkdir()
    txt = tmp_path / "ann" / "x.txt"
    txt.write_text(f"gsd:0.5\n{line}\n30 30 50 30 50 40 30 40 rod 1\n")
    with pytest.raises(DataError, match=words) as info:
        read_dota(tmp_path / "ann", tmp_path / "img", classes=["rod"])
    assert f"{txt}:2" in str(info.value)
    report = SkipReport(strict=False)
    images, _ = read_dota(tmp_path / "ann", tmp_path / "img", classes=["rod"], report=report)
    assert report.counts == {kind: 1}
    assert len(images[0].objects) == 1


COCO_BAD = {
    "zero_width": ({"rbox": [50, 50, 0, 5, 0]}, "degenerate", "w=0"),
    "negative_height": ({"rbox": [50, 50, 10, -2, 0]}, "degenerate", "h=-2"),
    "nan": ({"rbox": [50, float("nan"), 10, 5, 0]}, "non_finite", "non-finite"),
    "far_outside": ({"rbox": [50, -300, 10, 5, 0]}, "outside_image", "outside"),
    "unknown_class": ({"rbox": [50, 50, 10, 5, 0], "category_id": 7}, "unknown_class", "7"),
    "missing_rbox": ({}, "malformed", "'rbox' must be"),
    "short_rbox": ({"rbox": [50, 50, 10, 5]}, "malformed", "'rbox' must be"),
    "string_in_rbox": ({"rbox": [50, "x", 10, 5, 0]}, "malformed", "not a number"),
    "unknown_image": ({"rbox": [50, 50, 10, 5, 0], "image_id": 9}, "malformed", "image_id 9"),
}


@pytest.mark.parametrize("case", sorted(COCO_BAD))
def test_coco_bad_data(tmp_path: Path, case: str) -> None:
    fields, kind, words = COCO_BAD[case]
    good = {"id": 1, "image_id": 1, "category_id": 1, "rbox": [40, 40, 10, 5, 0.1]}
    bad = {"id": 2, "image_id": 1, "category_id": 1} | fields
    data = {
        "images": [{"id": 1, "file_name": "x.png", "width": 100, "height": 100}],
        "annotations": [good, bad],
        "categories": [{"id": 1, "name": "rod"}],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=words) as info:
        read_coco_rotated(path)
    assert f"{path}[annotations][1] (id=2)" in str(info.value)
    report = SkipReport(strict=False)
    images, classes = read_coco_rotated(path, report=report)
    assert report.counts == {kind: 1}
    assert classes == ["rod"] and len(images[0].objects) == 1


def test_file_level_problems_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as info:
        read_coco_rotated(tmp_path / "missing.json")
    assert "missing.json" in str(info.value)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_coco_rotated(tmp_path / "broken.json")
    (tmp_path / "labels").mkdir()
    _blank_images(tmp_path / "img", [RotatedImage("x.png", 10, 10)])
    with pytest.raises(DataError, match="classes file does not exist"):
        read_kitti(tmp_path / "labels", tmp_path / "img")
    with pytest.raises(DataError, match="image directory does not exist"):
        read_dota(tmp_path / "labels", tmp_path / "nope")


def test_label_without_image_is_reported(tmp_path: Path) -> None:
    labels, img, _ = _kitti_case(tmp_path, "0 50 50 10 5 0")
    (labels / "orphan.txt").write_text("0 5 5 2 1 0\n")
    with pytest.raises(DataError, match="no image named orphan"):
        read_kitti(labels, img)
    report = SkipReport(strict=False)
    images, _ = read_kitti(labels, img, report=report)
    assert report.counts == {"missing_image": 1} and len(images) == 1


def test_writers_reject_unknown_classes_and_duplicate_stems(tmp_path: Path) -> None:
    records = [RotatedImage("a.png", 10, 10, [RotatedObject("cat", 5, 5, 2, 1, 0)])]
    with pytest.raises(DataError, match="'cat' is not in classes"):
        write_kitti(records, ["dog"], tmp_path / "k")
    with pytest.raises(DataError, match="'cat' is not in classes"):
        write_coco_rotated(records, ["dog"], tmp_path / "c.json")
    dup = [RotatedImage("s1/a.png", 10, 10), RotatedImage("s2/a.png", 10, 10)]
    with pytest.raises(DataError, match="share the stem"):
        write_dota(dup, tmp_path / "d")
    with pytest.raises(DataError, match="whitespace"):
        write_dota([RotatedImage("a.png", 10, 10, [RotatedObject("a b", 5, 5, 2, 1, 0)])], tmp_path)


# --------------------------------------------------------------------------- degrees


def test_angles_in_degrees_are_rejected_with_the_file_named(tmp_path: Path) -> None:
    """A file whose angles are degrees (beyond a full turn) is refused even when bad objects
    are only skipped: every box of such a file would be turned wrongly."""
    labels, img, txt = _kitti_case(tmp_path, "0 50 50 10 5 30.0")
    for report in (None, SkipReport(strict=False)):
        with pytest.raises(DataError, match="angles must be in radians") as info:
            read_kitti(labels, img, report=report)
        assert f"{txt}:2" in str(info.value) and "30" in str(info.value)
    good = {"id": 1, "image_id": 1, "category_id": 1, "rbox": [40, 40, 10, 5, 0.1]}
    data = {
        "images": [{"id": 1, "file_name": "x.png", "width": 100, "height": 100}],
        "annotations": [good, {**good, "id": 2, "rbox": [60, 60, 10, 5, -45.0]}],
        "categories": [{"id": 1, "name": "rod"}],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="angles must be in radians") as info:
        read_coco_rotated(path, report=SkipReport(strict=False))
    assert f"{path}[annotations][1] (id=2)" in str(info.value)
    # a full turn either way (other tools' conventions, float noise) is still radians
    data["annotations"][1]["rbox"][4] = -2 * math.pi
    path.write_text(json.dumps(data))
    images, _ = read_coco_rotated(path)
    assert images[0].objects[1].angle == pytest.approx(0.0, abs=1e-9)


def test_prediction_results_in_degrees_are_rejected_with_the_file_named() -> None:
    """Predictions (COCO results with an ``rbox`` field, as analyze reads them) in degrees."""
    from em_lightning.inference.annotations import results_detections

    entry = {"category_id": 1, "score": 0.9, "rbox": [40.0, 40.0, 10.0, 4.0, 0.3]}
    dets = results_detections([entry], {1: 0}, 100, 100, "preds.json")
    assert len(dets) == 1 and dets[0].rbox[4] == pytest.approx(0.3)
    with pytest.raises(DataError, match="angles must be in radians") as info:
        results_detections([entry, {**entry, "rbox": [40.0, 40.0, 10.0, 4.0, 90.0]}], {1: 0},
                           100, 100, "preds.json")
    assert "preds.json" in str(info.value) and "result 1" in str(info.value)
