"""Annotated masks as analyze measures them equal pycocotools' ``COCO.annToMask`` exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from pycocotools.coco import COCO

from em_lightning.inference.annotations import instance_detection

H, W = 64, 80


def _polygon(rng: np.random.Generator, cx: float, cy: float, r: float) -> list[float]:
    n = int(rng.integers(3, 12))
    t = np.sort(rng.uniform(0, 2 * np.pi, n))
    radius = r * rng.uniform(0.6, 1.2, n)
    xy = np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], 1)
    return xy.ravel().round(int(rng.integers(1, 3))).tolist()  # 1-2 decimals, as tools write


def _uncompressed(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: column-major run lengths, starting with a run of zeros."""
    flat = mask.ravel(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _random_mask(rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    x, y = int(rng.integers(-5, W - 2)), int(rng.integers(-5, H - 2))
    mask[max(y, 0):y + int(rng.integers(1, 30)), max(x, 0):x + int(rng.integers(1, 40))] = 1
    return mask & (rng.random((H, W)) > 0.2)  # holes and several parts


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> COCO:
    rng = np.random.default_rng(0)
    anns = []
    for k in range(300):
        kind = k % 6
        if kind <= 2:  # 1-3 polygons; centres beyond every border give border-cut objects
            seg = [_polygon(rng, rng.uniform(-5, W + 5), rng.uniform(-5, H + 5),
                            rng.uniform(1, 15)) for _ in range(kind + 1)]
        elif kind == 3:  # compressed RLE
            rle = mask_utils.encode(np.asfortranarray(_random_mask(rng)))
            seg = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        else:  # uncompressed RLE, as crowd annotations are stored (kind 5: iscrowd=1)
            seg = _uncompressed(_random_mask(rng))
        anns.append({"id": k + 1, "image_id": 1, "category_id": 1, "segmentation": seg,
                     "iscrowd": int(kind == 5), "area": 0.0, "bbox": [0, 0, 1, 1]})
    doc = {"images": [{"id": 1, "height": H, "width": W, "file_name": "a.png"}],
           "categories": [{"id": 1, "name": "x"}], "annotations": anns}
    path = Path(tmp_path_factory.mktemp("coco")) / "ann.json"
    path.write_text(json.dumps(doc))
    return COCO(str(path))


def test_uncompressed_helper_matches_pycocotools() -> None:
    mask = _random_mask(np.random.default_rng(3))
    rle = mask_utils.frPyObjects(_uncompressed(mask), H, W)
    np.testing.assert_array_equal(mask_utils.decode(rle), mask)


@pytest.mark.parametrize("kind", ["1 polygon", "2 polygons", "3 polygons", "compressed RLE",
                                  "uncompressed RLE", "crowd RLE"])
def test_instance_masks_equal_ann_to_mask(coco, kind) -> None:
    """Polygons were rasterised shifted into a crop: 94 of 400 such objects came out
    1-3 px off; now every pixel agrees, border-cut and multi-polygon objects included."""
    k = ["1 polygon", "2 polygons", "3 polygons", "compressed RLE", "uncompressed RLE",
         "crowd RLE"].index(kind)
    anns = [a for a in coco.anns.values() if (a["id"] - 1) % 6 == k]
    cut = 0
    for ann in anns:
        ref = coco.annToMask(ann).astype(bool)
        det = instance_detection({"bbox_label": 0, "mask": ann["segmentation"]}, H, W)
        if not ref.any():
            assert det is None
            continue
        full = det.window(0, 0, W, H)
        np.testing.assert_array_equal(full, ref, err_msg=f"annotation {ann['id']}")
        assert int(det.mask.sum()) == int(ref.sum())
        x0, y0, x1, y1 = det.box
        cut += bool(x0 == 0 or y0 == 0 or x1 == W or y1 == H)
    if k < 3:
        assert cut >= 5  # border-cut objects were part of the check


def test_rle_crop_is_tight_and_placed() -> None:
    from em_lightning.inference.annotations import rle_crop

    mask = np.zeros((H, W), bool)
    mask[10:13, 70:80] = True  # runs continue from one column into the next
    mask[:, 79] = True
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    crop, (x0, y0) = rle_crop(rle)
    assert (x0, y0) == (70, 0) and crop.shape == (H, 10)
    np.testing.assert_array_equal(crop, mask[:, 70:])
    empty = mask_utils.encode(np.zeros((4, 5), np.uint8, order="F"))
    assert rle_crop(empty) is None
