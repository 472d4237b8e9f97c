"""Label images and labelme files -> COCO: exact masks, and a dataset that trains.

Label images are built with known objects (touching, with holes, in two pieces, cut by the
border, single pixels, 16-bit values above 255); every COCO mask is compared with the label
image itself through pycocotools' ``annToMask``.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from hydra.utils import instantiate
from PIL import Image
from pycocotools.coco import COCO

from em_lightning.data.convert import main
from em_lightning.data.label_images import mask_segmentation, read_label_image
from tests.conftest import compose_cfg

ROOT = Path(__file__).resolve().parent.parent
SIZE = 128


def label_image(seed: int = 0) -> np.ndarray:
    """uint16 labels: 12 objects of every awkward kind, values up to 65535."""
    lab = np.zeros((SIZE, SIZE), np.uint16)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    lab[(yy - 40) ** 2 + (xx - 40) ** 2 <= 15 ** 2] = 300  # disc
    lab[20:50, 56:70] = 301  # touches the disc (x 25..55)
    lab[50:70, 56:70] = 302  # shares an edge with 301
    ring = ((yy - 95) ** 2 + (xx - 95) ** 2 <= 18 ** 2) & ((yy - 95) ** 2 + (xx - 95) ** 2 > 7 ** 2)
    lab[ring] = 1000  # a hole in the middle
    lab[0:10, 0:25] = 5  # cut by the top and left borders
    lab[118:128, 110:128] = 65535  # bottom-right corner, 16-bit maximum
    lab[80:86, 10:16] = 7  # two pieces of one object
    lab[80:86, 30:36] = 7
    lab[100, 50] = 12  # one pixel
    lab[105, 60], lab[106, 61], lab[107, 62] = 13, 13, 13  # diagonal, 8-connected only
    lab[60:75, 100:127] = 256  # touches the right border
    rng = np.random.default_rng(seed)
    blob = cv2.GaussianBlur(rng.random((SIZE, SIZE)).astype(np.float32), (0, 0), 3) > 0.52
    lab[(lab == 0) & blob & (yy > 100) & (xx < 40)] = 4000  # irregular, possibly several pieces
    lab[(lab == 0) & (yy > 110) & (yy < 118) & (xx > 70) & (xx < 100)] = 4001
    return lab


def assert_exact(coco: COCO, labels: np.ndarray, image_id: int) -> dict[int, dict]:
    """Every annotation of the image is exactly one label value's pixels; returns them by value."""
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
    by_value = {}
    for ann in anns:
        mask = coco.annToMask(ann).astype(bool)
        values = np.unique(labels[mask])
        assert len(values) == 1 and values[0] != 0
        value = int(values[0])
        assert np.array_equal(mask, labels == value), value
        assert ann["area"] == mask.sum()
        rows, cols = np.nonzero(mask)
        assert ann["bbox"] == [cols.min(), rows.min(), cols.ptp() + 1, rows.ptp() + 1]
        by_value[value] = ann
    assert sorted(by_value) == sorted(int(v) for v in np.unique(labels) if v)
    return by_value


@pytest.fixture
def dataset(tmp_path: Path) -> dict:
    """A dataset folder (images/train/) and labels elsewhere, as 16-bit PNG and TIFF."""
    root = tmp_path / "data"
    (root / "images" / "train").mkdir(parents=True)
    labels_dir = tmp_path / "labels"
    labels_dir.mkdir()
    labs = {"a": label_image(0), "b": label_image(1)}
    for stem, lab in labs.items():
        gray = np.where(lab > 0, 200, 40).astype(np.uint8)
        cv2.imwrite(str(root / "images" / "train" / f"{stem}.png"), gray)
    cv2.imwrite(str(labels_dir / "a_masks.png"), labs["a"])  # 16-bit PNG
    tifffile.imwrite(labels_dir / "b_masks.tif", labs["b"])
    return {"root": root, "labels": labels_dir, "labs": labs}


def _convert(dataset: dict, *extra: str) -> int:
    return main(["label-images", "--input", str(dataset["labels"]), "--images",
                 str(dataset["root"] / "images"), "--label-suffix", "_masks", "--output",
                 str(dataset["root"] / "annotations" / "train.json"), *extra])


def test_every_object_is_exact_with_polygons_where_possible(dataset, capsys) -> None:
    assert _convert(dataset, "--class", "big_vesicle") == 0
    out = capsys.readouterr().out
    coco = COCO(str(dataset["root"] / "annotations" / "train.json"))
    assert [i["file_name"] for i in coco.dataset["images"]] == ["train/a.png", "train/b.png"]
    total = 0
    for image_id, stem in ((1, "a"), (2, "b")):
        lab = dataset["labs"][stem]
        anns = assert_exact(coco, lab, image_id)
        total += len(anns)
        assert isinstance(anns[1000]["segmentation"], dict)  # ring: RLE
        assert isinstance(anns[7]["segmentation"], dict)  # two pieces: RLE
        for value in (300, 301, 302, 5, 65535, 256, 12):  # one piece, no hole: a polygon
            assert isinstance(anns[value]["segmentation"], list), value
            assert len(anns[value]["segmentation"]) == 1
        assert len(anns[301]["segmentation"][0]) == 16  # a rectangle: 4 cut corners
    assert f"{total} objects" in out and "no items skipped" in out
    assert {c["name"] for c in coco.dataset["categories"]} == {"big_vesicle"}


def test_converted_labels_load_as_a_vesicles_training_set(dataset, tmp_path) -> None:
    assert _convert(dataset, "--class", "big_vesicle") == 0
    cfg = compose_cfg(["task=vesicles", "experiment=tiny", f"data.root={dataset['root']}",
                       "data.classes=[big_vesicle]"], tmp_path)
    ds = instantiate(cfg.data).build_dataset("train", augment=False)
    assert len(ds) == 2
    for i in range(2):
        sample = ds[i]["data_samples"]
        lab = dataset["labs"][Path(sample.img_path).stem]
        masks = sample.gt_instances.masks.to_ndarray().astype(bool)  # image_size = SIZE: 1:1
        values = [v for v in np.unique(lab) if v]
        assert masks.shape == (len(values), SIZE, SIZE)
        want = sorted(np.count_nonzero(lab == v) for v in values)
        assert sorted(m.sum() for m in masks) == want
        for m in masks:
            assert np.array_equal(m, lab == np.unique(lab[m])[0])
    ds_aug = instantiate(cfg.data).build_dataset("train", augment=True)  # trains: no error
    assert len(ds_aug[0]["data_samples"].gt_instances) > 0


def test_class_map_per_value_and_per_file(dataset, tmp_path, capsys) -> None:
    cmap = tmp_path / "classes.csv"
    cmap.write_text("file,value,class\n,300,big_vesicle\n,1000,big_vesicle\n,7,hole\n"
                    "a_masks.png,12,small_vesicle\n")
    assert _convert(dataset, "--class-map", str(cmap)) == 1
    err = capsys.readouterr().err
    assert "a_masks.png (value 5)" in err and "not in the class map" in err
    assert _convert(dataset, "--class-map", str(cmap), "--no-strict") == 0
    out = capsys.readouterr().out
    coco = COCO(str(dataset["root"] / "annotations" / "train.json"))
    names = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    assert sorted(names.values()) == ["big_vesicle", "hole", "small_vesicle"]
    got = {(a["image_id"], names[a["category_id"]]) for a in coco.dataset["annotations"]}
    assert got == {(1, "big_vesicle"), (1, "hole"), (1, "small_vesicle"), (2, "big_vesicle"),
                   (2, "hole")}
    assert len(coco.dataset["annotations"]) == 4 + 3
    assert "unmapped_value" in out


def test_bad_label_images_and_outputs_fail_with_one_line(dataset, tmp_path, capsys) -> None:
    out = dataset["root"] / "annotations" / "train.json"
    bad = ["label-images", "--input", str(dataset["labels"]), "--images",
           str(dataset["root"] / "images"), "--label-suffix", "_masks", "--class", "x"]
    assert main([*bad, "--output", str(dataset["labels"] / "coco.json")]) == 1
    assert "inside the input folder" in capsys.readouterr().err
    cv2.imwrite(str(dataset["labels"] / "c_masks.png"), np.zeros((8, 8, 3), np.uint8))
    assert main([*bad, "--output", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert "c_masks.png" in err and "no image named c.*" in err and "\n" not in err
    cv2.imwrite(str(dataset["root"] / "images" / "c.png"), np.zeros((8, 8), np.uint8))
    assert main([*bad, "--output", str(out)]) == 1
    assert "c_masks.png" in (err := capsys.readouterr().err) and "2-D" in err
    tifffile.imwrite(tmp_path / "float.tif", np.full((8, 8), 1.5, np.float32))
    with pytest.raises(ValueError, match="non-integer"):
        read_label_image(tmp_path / "float.tif")
    assert not out.exists()


@pytest.mark.parametrize("kind", ["png8", "png16", "palette_png", "tif8", "tif32", "float_tif"])
def test_label_image_types_read_back_exactly(kind: str, tmp_path: Path) -> None:
    lab = label_image(0).astype(np.int64)
    if kind in ("png8", "palette_png", "tif8", "tif32"):
        lab = np.unique(lab, return_inverse=True)[1].reshape(lab.shape)  # values 0..12
    path = tmp_path / ("lab.tif" if "tif" in kind else "lab.png")
    if kind == "png8":
        cv2.imwrite(str(path), lab.astype(np.uint8))
    elif kind == "png16":
        cv2.imwrite(str(path), lab.astype(np.uint16))
    elif kind == "palette_png":
        Image.fromarray(lab.astype(np.uint8), mode="L").convert("P").save(path)
    elif kind == "tif8":
        tifffile.imwrite(path, lab.astype(np.uint8))
    elif kind == "tif32":
        lab = lab * 70000  # beyond 16 bits
        tifffile.imwrite(path, lab.astype(np.uint32))
    else:
        tifffile.imwrite(path, lab.astype(np.float32))
    got = read_label_image(path)
    assert got.shape == lab.shape and np.array_equal(got.astype(np.int64), lab)


def test_segmentation_is_exact_on_random_shapes() -> None:
    """Random blobs of every shape: polygon or RLE, the decoded mask is always the input."""
    from pycocotools import mask as mask_utils
    from skimage.measure import label

    rng = np.random.default_rng(3)
    n_poly = n = 0
    for _ in range(12):
        field = cv2.GaussianBlur(rng.random((96, 96)).astype(np.float32), (0, 0),
                                 float(rng.uniform(1, 3)))
        labels = label(field > np.quantile(field, rng.uniform(0.5, 0.8)), connectivity=2)
        for value in range(1, labels.max() + 1):
            full = labels == value
            rows, cols = np.nonzero(full)
            crop = full[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
            seg, kind = mask_segmentation(crop, (cols.min(), rows.min()), 96, 96)
            rle = (mask_utils.merge(mask_utils.frPyObjects(seg, 96, 96)) if kind == "polygon"
                   else {**seg, "counts": seg["counts"].encode()})
            assert np.array_equal(mask_utils.decode(rle).astype(bool), full)
            n += 1
            n_poly += kind == "polygon"
    assert n > 200 and n_poly > 0.8 * n


# --------------------------------------------------------------------------- labelme


def _png_b64(mask: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _labelme_folder(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "lm"
    (root / "images" / "train").mkdir(parents=True)
    folder = root / "images" / "train"
    cv2.imwrite(str(folder / "img.png"), np.full((64, 80), 90, np.uint8))
    blob = np.zeros((6, 5), bool)
    blob[1:5, 1:4] = True
    shapes = [
        {"label": "hole", "shape_type": "rectangle", "points": [[30, 20], [10, 5]],
         "group_id": None},
        {"label": "big_vesicle", "shape_type": "polygon",
         "points": [[40, 10], [60, 10], [60, 30], [50, 40], [40, 30]], "group_id": None},
        {"label": "big_vesicle", "shape_type": "circle", "points": [[20, 45], [30, 45]],
         "group_id": None},
        {"label": "hole", "shape_type": "rectangle", "points": [[62, 40], [66, 44]],
         "group_id": 3},
        {"label": "hole", "shape_type": "rectangle", "points": [[70, 40], [74, 46]],
         "group_id": 3},
        {"label": "small_vesicle", "shape_type": "mask", "points": [[50, 50], [54, 55]],
         "mask": _png_b64(blob), "group_id": None},
        {"label": "hole", "shape_type": "line", "points": [[1, 1], [9, 9]], "group_id": None},
    ]
    doc = {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": "img.png",
           "imageData": None, "imageHeight": 64, "imageWidth": 80}
    (folder / "img.json").write_text(json.dumps(doc))
    return root, folder


def test_labelme_shapes_become_coco_objects(tmp_path, capsys) -> None:
    root, folder = _labelme_folder(tmp_path)
    out = root / "annotations" / "train.json"
    argv = ["labelme", "--input", str(folder), "--images", str(root / "images"), "--output",
            str(out)]
    assert main(argv) == 1  # the line has no area
    assert "[shapes][6]" in (err := capsys.readouterr().err) and "'line' has no area" in err
    assert main([*argv, "--no-strict"]) == 0
    assert "skipped 1 items: 1 no_area" in capsys.readouterr().out
    coco = COCO(str(out))
    assert coco.dataset["images"][0]["file_name"] == "train/img.png"
    names = {c["name"]: c["id"] for c in coco.dataset["categories"]}
    assert list(names) == ["big_vesicle", "hole", "small_vesicle"]
    anns = coco.dataset["annotations"]
    assert len(anns) == 5
    rect = coco.annToMask(anns[0]).astype(bool)
    want = np.zeros((64, 80), bool)
    want[5:20, 10:30] = True  # corners (10, 5)-(30, 20): pixels x 10..29, y 5..19
    assert np.array_equal(rect, want)
    assert anns[1]["area"] == pytest.approx(20 * 20 + 20 * 10 / 2, rel=0.03)  # the pentagon
    assert anns[2]["area"] == pytest.approx(np.pi * 10 ** 2, rel=0.03)
    group = coco.annToMask(anns[3]).astype(bool)
    assert len(anns[3]["segmentation"]) == 2 and group.sum() == 4 * 4 + 4 * 6
    mask = coco.annToMask(anns[4]).astype(bool)
    blob = np.zeros((64, 80), bool)
    blob[51:55, 51:54] = True
    assert np.array_equal(mask, blob) and anns[4]["category_id"] == names["small_vesicle"]
    cfg = compose_cfg(["task=vesicles", "experiment=tiny", f"data.root={root}"], tmp_path)
    ds = instantiate(cfg.data).build_dataset("train", augment=False)
    assert len(ds[0]["data_samples"].gt_instances) == 5


def test_help_lists_the_sub_commands() -> None:
    def help_of(*args: str) -> str:
        return subprocess.run([sys.executable, "-m", "em_lightning.data.convert", *args,
                               "--help"], capture_output=True, text=True, check=True,
                              cwd=ROOT).stdout

    assert "label-images" in help_of() and "labelme" in help_of()
    text = help_of("label-images")
    assert "--class-map" in text and "value,class" in text and "RLE" in text
    assert "group_id" in help_of("labelme")
