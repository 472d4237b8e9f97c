"""The converter CLI: lossless chains between formats and clear failures on bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from em_lightning.data.convert import main
from em_lightning.data.demo_nanorods import generate_nanorods_dataset
from em_lightning.data.rotated_formats import (
    RotatedImage,
    read_coco_rotated,
    read_dota,
    read_kitti,
    rotated_iou,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nanorods")
    return generate_nanorods_dataset(root, n_train=2, n_val=1, image_size=128, rods_per_image=10)


def _assert_same(a: list[RotatedImage], b: list[RotatedImage]) -> None:
    assert [Path(im.file_name).name for im in a] == [Path(im.file_name).name for im in b]
    for im_a, im_b in zip(a, b):
        assert (im_a.width, im_a.height) == (im_b.width, im_b.height)
        assert len(im_a.objects) == len(im_b.objects)
        for o1, o2 in zip(im_a.objects, im_b.objects):
            assert o1.label == o2.label
            assert rotated_iou(o1.rbox, o2.rbox) >= 0.999


def _convert(src: str, dst: str, inp: Path, out: Path, images: Path, *extra: str) -> int:
    argv = ["--from", src, "--to", dst, "--input", str(inp), "--output", str(out)]
    return main([*argv, "--images", str(images), *extra])


def test_kitti_dota_coco_and_back(dataset: Path, tmp_path: Path, capsys) -> None:
    images = dataset / "images" / "train"
    original, _ = read_kitti(dataset / "kitti" / "train", images)
    assert _convert("kitti", "dota", dataset / "kitti" / "train", tmp_path / "dota", images) == 0
    assert "converted 2 images, 20 objects" in capsys.readouterr().out
    assert _convert("dota", "coco", tmp_path / "dota", tmp_path / "a.json", images) == 0
    assert _convert("coco", "kitti", tmp_path / "a.json", tmp_path / "kitti", images) == 0
    assert _convert("kitti", "coco", tmp_path / "kitti", tmp_path / "b.json", images) == 0
    assert _convert("coco", "dota", tmp_path / "b.json", tmp_path / "dota2", images) == 0
    out = capsys.readouterr().out
    assert "no items skipped" in out
    _assert_same(original, read_dota(tmp_path / "dota", images)[0])
    _assert_same(original, read_coco_rotated(tmp_path / "a.json")[0])
    _assert_same(original, read_kitti(tmp_path / "kitti", images)[0])
    _assert_same(original, read_dota(tmp_path / "dota2", images)[0])


def test_coco_input_matches_generated_ground_truth(dataset: Path, tmp_path: Path) -> None:
    ann = dataset / "annotations" / "val.json"
    assert (
        main(["--from", "coco", "--to", "dota", "--input", str(ann), "--output", str(tmp_path)])
        == 0
    )
    # the converter's DOTA file matches the generator's up to the 6-decimal rounding
    generated = (dataset / "dota" / "val" / "nanorods_000.txt").read_text().split()
    converted = (tmp_path / "nanorods_000.txt").read_text().split()
    assert len(converted) == len(generated) == 10 * 10
    for a, b in zip(converted, generated):
        if a[0].isalpha():
            assert a == b
        else:
            assert float(a) == pytest.approx(float(b), abs=3e-6)


def _bad_kitti(dataset: Path, tmp_path: Path) -> tuple[Path, Path]:
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "classes.txt").write_text("nanorod\n")
    txt = labels / "nanorods_000.txt"
    txt.write_text("0 40 40 30 6 0.1\n0 50 50 -3 6 0.2\n")
    return labels, txt


def test_bad_input_fails_naming_file_and_line(dataset: Path, tmp_path: Path, capsys) -> None:
    labels, txt = _bad_kitti(dataset, tmp_path)
    images = dataset / "images" / "train"
    assert _convert("kitti", "coco", labels, tmp_path / "out.json", images) == 1
    err = capsys.readouterr().err
    assert f"{txt}:2" in err and "w=-3" in err
    assert not (tmp_path / "out.json").exists()


def test_no_strict_skips_and_reports(dataset: Path, tmp_path: Path, capsys) -> None:
    labels, txt = _bad_kitti(dataset, tmp_path)
    images = dataset / "images" / "train"
    assert _convert("kitti", "coco", labels, tmp_path / "out.json", images, "--no-strict") == 0
    out = capsys.readouterr().out
    assert "converted 2 images, 1 objects" in out
    assert "skipped 1 items: 1 degenerate" in out and f"{txt}:2" in out
    assert len(read_coco_rotated(tmp_path / "out.json")[0][0].objects) == 1


def test_missing_input_and_bad_arguments(dataset: Path, tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope.json"
    assert main(["--from", "coco", "--to", "kitti", "--input", str(missing), "--output", "x"]) == 1
    assert f"{missing}: annotation file does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # kitti input needs --images
        main(["--from", "kitti", "--to", "coco", "--input", str(tmp_path), "--output", "o.json"])
    assert info.value.code == 2
    assert "--images is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--from", "yolo", "--to", "coco", "--input", "a", "--output", "b"])


def test_help_runs_as_module_and_explains_angles() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "em_lightning.data.convert", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert "clockwise" in result.stdout and "le90" in result.stdout
