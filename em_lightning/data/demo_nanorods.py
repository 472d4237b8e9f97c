"""Deterministic synthetic HAADF-STEM images of heavily overlapping nanorods.

Why: rotated-box detectors must be tested on the hard case of real nanorod micrographs, rods
lying in side-by-side bundles, crossing and stacked on each other, without shipping data. The
images imitate HAADF contrast, which grows with projected mass thickness, so rods are rendered
as spherocylinders (a cylinder with hemispherical caps that fits its ground-truth rectangle)
whose projected thickness *adds* where rods overlap. Then the acquisition is imitated: probe
blur, scan-line jitter and offsets, Poisson shot noise and Gaussian read noise, 8-bit PNG.

Ground truth is the exact rectangle each rod was drawn in (``w`` = length along the rod axis,
``h`` = diameter, le90 angle, conventions of :mod:`em_lightning.data.rotated_formats`).
Everything is driven by ``np.random.default_rng`` with a per-image seed derived from
``(seed, split, index)``, so the same seed gives byte-identical files and changing ``n_train``
does not change the validation images.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from shapely.geometry import Polygon
from shapely.strtree import STRtree

from em_lightning.data.rotated_formats import (
    RotatedImage,
    RotatedObject,
    normalize_le90,
    rbox_to_corners,
    write_coco_rotated,
    write_dota,
    write_kitti,
)

log = logging.getLogger(__name__)

CLASS_NAME = "nanorod"
LENGTH_RANGE = (25.0, 70.0)  # px; rod sizes are absolute, so smaller images hold fewer rods
WIDTH_RANGE = (5.0, 10.0)
BUNDLE_FRACTION = 0.35  # share of rods placed in side-by-side bundles
STACK_PROBABILITY = 0.45  # chance a non-bundle rod is dropped onto / across an existing rod
PROBE_SIGMA = 1.2
SPLITS = {"train": 0, "val": 1}

Rod = tuple[float, float, float, float, float]  # cx, cy, length, diameter, angle


# --------------------------------------------------------------------------- layout


def _random_length(rng: np.random.Generator) -> float:
    lo, hi = LENGTH_RANGE
    return float(np.clip(rng.normal(45.0, 12.0), lo, hi))


def _random_width(rng: np.random.Generator) -> float:
    return float(rng.uniform(*WIDTH_RANGE))


def _clip_centre(x: float, y: float, size: int) -> tuple[float, float]:
    margin = 2.0
    return float(np.clip(x, margin, size - margin)), float(np.clip(y, margin, size - margin))


def _bundle(rng: np.random.Generator, size: int, k: int) -> list[Rod]:
    """k rods with nearly equal angle side by side, spaced a bit under one diameter."""
    cx, cy = rng.uniform(0.1 * size, 0.9 * size, 2)
    theta = rng.uniform(-math.pi / 2, math.pi / 2)
    base_len, base_w = _random_length(rng), _random_width(rng)
    axis = np.array([math.cos(theta), math.sin(theta)])
    normal = np.array([-math.sin(theta), math.cos(theta)])
    rods = []
    for i in range(k):
        w = float(np.clip(base_w * rng.uniform(0.85, 1.15), *WIDTH_RANGE))
        length = float(np.clip(base_len * rng.uniform(0.8, 1.2), *LENGTH_RANGE))
        lateral = (i - (k - 1) / 2) * base_w * rng.uniform(0.75, 1.05)
        axial = rng.normal(0.0, 0.15 * base_len)
        x, y = np.array([cx, cy]) + lateral * normal + axial * axis
        angle = theta + rng.normal(0.0, math.radians(4.0))
        rods.append((*_clip_centre(x, y, size), length, w, angle))
    return rods


def _on_top_of(rng: np.random.Generator, size: int, base: Rod) -> Rod:
    """A rod crossing ``base`` at a random angle, or lying along it partly stacked."""
    bx, by, blen, bw, bangle = base
    axis = np.array([math.cos(bangle), math.sin(bangle)])
    normal = np.array([-math.sin(bangle), math.cos(bangle)])
    length, w = _random_length(rng), _random_width(rng)
    if rng.random() < 0.5:  # crossing
        x, y = np.array([bx, by]) + rng.uniform(-0.4, 0.4) * blen * axis
        angle = rng.uniform(-math.pi / 2, math.pi / 2)
    else:  # stacked: nearly parallel, shifted along the axis and a little sideways
        shift = rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.8) * (blen + length) / 2
        side = rng.uniform(-0.5, 0.5) * bw
        x, y = np.array([bx, by]) + shift * axis + side * normal
        angle = bangle + rng.normal(0.0, math.radians(8.0))
    return (*_clip_centre(x, y, size), length, w, angle)


def _layout(rng: np.random.Generator, size: int, n_rods: int) -> list[Rod]:
    rods: list[Rod] = []
    n_bundled = round(BUNDLE_FRACTION * n_rods)
    while len(rods) < n_bundled:
        k = min(int(rng.integers(3, 7)), n_bundled - len(rods))
        rods.extend(_bundle(rng, size, k))
    while len(rods) < n_rods:
        if rods and rng.random() < STACK_PROBABILITY:
            rods.append(_on_top_of(rng, size, rods[int(rng.integers(len(rods)))]))
        else:
            x, y = rng.uniform(0, size, 2)
            angle = rng.uniform(-math.pi / 2, math.pi / 2)
            rods.append((*_clip_centre(x, y, size), _random_length(rng), _random_width(rng), angle))
    return rods


# --------------------------------------------------------------------------- rendering


def _add_rod_thickness(thickness: np.ndarray, rod: Rod, density: float) -> None:
    """Add the projected thickness of a spherocylinder inscribed in the rod's rectangle."""
    cx, cy, length, diameter, angle = rod
    size_y, size_x = thickness.shape
    reach = length / 2 + 1.0
    x0, x1 = max(0, math.floor(cx - reach)), min(size_x, math.ceil(cx + reach) + 1)
    y0, y1 = max(0, math.floor(cy - reach)), min(size_y, math.ceil(cy + reach) + 1)
    if x0 >= x1 or y0 >= y1:
        return
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(float) + 0.5  # pixel centres
    dx, dy = xs - cx, ys - cy
    c, s = math.cos(angle), math.sin(angle)
    u = dx * c + dy * s  # along the axis
    v = -dx * s + dy * c  # across
    r = diameter / 2
    excess = np.maximum(np.abs(u) - (length / 2 - r), 0.0)
    chord = 2.0 * np.sqrt(np.maximum(r * r - excess**2 - v**2, 0.0))
    thickness[y0:y1, x0:x1] += density * chord


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Dark amorphous support film: low offset, slow thickness variation, fine texture."""
    coarse = rng.normal(0.0, 1.0, (6, 6))  # smooth field from a coarse grid: cheap, no big blur
    slow = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    slow = slow / (np.abs(slow).max() + 1e-12)
    fine = cv2.GaussianBlur(rng.normal(0.0, 1.0, (size, size)), (0, 0), 1.0)
    return 0.07 + 0.02 * slow + 0.01 * fine


def _scan_jitter(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Shift each scan line by a random sub-pixel amount, as probe-position noise does."""
    xs = np.arange(image.shape[1], dtype=float)
    shifts = rng.normal(0.0, 0.35, image.shape[0])
    return np.stack([np.interp(xs - s, xs, row) for s, row in zip(shifts, image)])


def _detector_noise(rng: np.random.Generator, signal: np.ndarray) -> np.ndarray:
    """Poisson shot noise, Gaussian read noise and per-line offsets (scan-line noise)."""
    dose = 80.0  # electrons per pixel at full scale
    noisy = rng.poisson(np.clip(signal, 0.0, None) * dose) / dose
    noisy = noisy + rng.normal(0.0, 0.015, signal.shape)
    offsets = rng.normal(0.0, 0.012, signal.shape[0])
    strong = rng.random(signal.shape[0]) < 0.02
    offsets[strong] += rng.normal(0.0, 0.04, int(strong.sum()))
    return noisy + offsets[:, None]


def render_nanorod_image(
    rng: np.random.Generator, size: int = 512, n_rods: int = 62
) -> tuple[np.ndarray, list[RotatedObject]]:
    """Render one (size, size) uint8 image and the exact rotated box of every rod."""
    rods = _layout(rng, size, n_rods)
    densities = rng.uniform(0.85, 1.15, len(rods))
    thickness = np.zeros((size, size))
    for rod, density in zip(rods, densities):
        _add_rod_thickness(thickness, rod, float(density))
    signal = _background(rng, size) + 0.04 * thickness
    signal = cv2.GaussianBlur(signal, (0, 0), PROBE_SIGMA)
    signal = _scan_jitter(rng, signal)
    image = _detector_noise(rng, signal)
    image8 = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    objects = [RotatedObject(CLASS_NAME, *normalize_le90(*rod)) for rod in rods]
    return image8, objects


# --------------------------------------------------------------------------- statistics


def box_coverage(objects: Sequence[RotatedObject], size: int | tuple[int, int]) -> np.ndarray:
    """Per pixel, how many ground-truth rectangles contain the pixel centre."""
    height, width = (size, size) if isinstance(size, int) else size
    ys, xs = np.mgrid[0:height, 0:width].astype(float) + 0.5
    count = np.zeros((height, width), dtype=np.int32)
    for o in objects:
        c, s = math.cos(o.angle), math.sin(o.angle)
        u = (xs - o.cx) * c + (ys - o.cy) * s
        v = -(xs - o.cx) * s + (ys - o.cy) * c
        count += (np.abs(u) <= o.w / 2) & (np.abs(v) <= o.h / 2)
    return count


def overlap_statistics(objects: Sequence[RotatedObject], min_fraction: float = 0.05) -> dict:
    """How crowded the rods are: share of rods overlapping another, and neighbour counts.

    Two rods overlap when their rectangles intersect by more than ``min_fraction`` of the
    smaller one, so mere edge contact in a bundle does not count.
    """
    polys = [Polygon(rbox_to_corners(*o.rbox)) for o in objects]
    tree = STRtree(polys)
    neighbours = [0] * len(polys)
    for i, j in zip(*tree.query(polys, predicate="intersects")):
        if i < j:
            inter = polys[i].intersection(polys[j]).area
            if inter > min_fraction * min(polys[i].area, polys[j].area):
                neighbours[i] += 1
                neighbours[j] += 1
    n = max(len(polys), 1)
    return {
        "n_rods": len(polys),
        "fraction_overlapping": sum(k > 0 for k in neighbours) / n,
        "mean_neighbours": sum(neighbours) / n,
        "max_neighbours": max(neighbours, default=0),
    }


# --------------------------------------------------------------------------- dataset

_README = """\
Synthetic HAADF-STEM nanorod dataset (em_lightning.data.demo_nanorods)

Generated with: n_train={n_train} n_val={n_val} image_size={image_size}
rods_per_image={rods_per_image} seed={seed}. Same parameters give byte-identical files.

Images: bright rods (HAADF contrast ~ projected thickness, adding up where rods overlap) on a
dark support film; many rods lie in side-by-side bundles, cross or are stacked. Rods are
{len_lo:g}-{len_hi:g} px long and {w_lo:g}-{w_hi:g} px wide. Acquisition effects: Gaussian probe
blur (sigma {sigma} px), scan-line jitter and offsets, Poisson + Gaussian noise. 8-bit PNG.

Layout
  images/{{train,val}}/nanorods_NNN.png
  annotations/{{train,val}}.json   COCO with "rbox": [cx, cy, w, h, angle_rad]; file_name is
                                  relative to images/, e.g. "train/nanorods_000.png"
  dota/{{train,val}}/nanorods_NNN.txt    DOTA v1: x1 y1 ... x4 y4 class difficulty
  kitti/{{train,val}}/nanorods_NNN.txt   class_idx cx cy w h angle_rad (+ classes.txt)

Single class: "{cls}". Boxes are the exact rectangles the rods were drawn in: w = length along
the rod axis, h = diameter. Pixel centres are at (j+0.5, i+0.5); angle in radians, clockwise
on screen (y down), le90: w >= h, angle in [-pi/2, pi/2). DOTA corners are clockwise on screen.
"""


def _image_seed(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS[split], index])


def _write_split(
    root: Path, split: str, n_images: int, image_size: int, rods_per_image: int, seed: int
) -> list[RotatedImage]:
    image_dir = root / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n_images):
        image, objects = render_nanorod_image(
            _image_seed(seed, split, i), image_size, rods_per_image
        )
        name = f"nanorods_{i:03d}.png"
        if not cv2.imwrite(str(image_dir / name), image):
            raise OSError(f"could not write {image_dir / name}")
        records.append(RotatedImage(f"{split}/{name}", image_size, image_size, objects))
    write_dota(records, root / "dota" / split)
    write_kitti(records, [CLASS_NAME], root / "kitti" / split)
    return records


def generate_nanorods_dataset(
    root: str | Path,
    n_train: int = 19,
    n_val: int = 2,
    image_size: int = 512,
    rods_per_image: int = 62,
    seed: int = 0,
) -> Path:
    """Write images and COCO / DOTA / KITTI labels under ``root``; returns ``root``.

    ``annotations/train.json`` is written last (atomically), so its presence means the dataset
    is complete; :func:`ensure_nanorods_dataset` relies on that.
    """
    root = Path(root)
    params = {"n_train": n_train, "n_val": n_val, "image_size": image_size}
    params |= {"rods_per_image": rods_per_image, "seed": seed}
    splits = {"val": n_val, "train": n_train}
    records = {
        s: _write_split(root, s, n, image_size, rods_per_image, seed) for s, n in splits.items()
    }
    (root / "README.txt").write_text(
        _README.format(
            **params,
            len_lo=LENGTH_RANGE[0],
            len_hi=LENGTH_RANGE[1],
            w_lo=WIDTH_RANGE[0],
            w_hi=WIDTH_RANGE[1],
            sigma=PROBE_SIGMA,
            cls=CLASS_NAME,
        )
    )
    ann_dir = root / "annotations"
    write_coco_rotated(records["val"], [CLASS_NAME], ann_dir / "val.json")
    tmp = ann_dir / "train.json.tmp"
    write_coco_rotated(records["train"], [CLASS_NAME], tmp)
    os.replace(tmp, ann_dir / "train.json")
    return root


def ensure_nanorods_dataset(root: str | Path, **kw) -> bool:
    """Generate the dataset unless ``root/annotations/train.json`` exists; True if generated."""
    root = Path(root)
    if (root / "annotations" / "train.json").is_file():
        return False
    log.debug("nanorod demo dataset not found under %s; generating it (%s)", root, kw or "defaults")
    generate_nanorods_dataset(root, **kw)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m em_lightning.data.demo_nanorods",
        description="Generate the synthetic HAADF-STEM overlapping-nanorod dataset "
        "(images + COCO-rotated / DOTA / KITTI labels). Same seed -> byte-identical files.",
    )
    parser.add_argument("root", type=Path, help="output directory")
    parser.add_argument("--n-train", type=int, default=19)
    parser.add_argument("--n-val", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--rods-per-image", type=int, default=62)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = generate_nanorods_dataset(
        args.root, args.n_train, args.n_val, args.image_size, args.rods_per_image, args.seed
    )
    n_images = args.n_train + args.n_val
    print(f"wrote {n_images} images, {n_images * args.rods_per_image} rods to {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
