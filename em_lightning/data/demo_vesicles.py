"""Deterministic synthetic TEM bright-field images of vesicles and holes, as a COCO dataset.

This is the built-in demo dataset: it lets the Mask R-CNN pipeline run end to end without
downloading anything, while staying close enough to real micrographs that a model has to learn
something. Defaults follow a real reference dataset (about 30 big vesicles, 120 small vesicles
and 30 holes per image):

* big vesicles: large, slightly elliptical/irregular, light interior with LOW contrast against
  the background and a thin darker membrane rim;
* small vesicles: small, dark discs;
* holes: small, bright, nearly featureless circles (no film).

The background is textured film (smoothed noise at several scales) with unannotated clutter
(tiny dark particles smaller than any small vesicle, faint membrane fragments), under uneven
illumination; the optics blur it and the detector adds Poisson shot noise and read noise.

Ground truth is exact by construction: every instance is a polygon, the COCO ``segmentation``
is that polygon, and the region painted into the image is that polygon rasterised with
pycocotools, i.e. the very mask ``COCO.annToMask`` returns. Instances never overlap (and never
touch). Each image has its own seed derived from ``(seed, split, index)``, so image ``k`` does
not depend on how many images are requested, and the same seed gives byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_utils

log = logging.getLogger(__name__)

CATEGORIES = [
    {"id": 1, "name": "big_vesicle"},
    {"id": 2, "name": "small_vesicle"},
    {"id": 3, "name": "hole"},
]
BIG_VESICLE, SMALL_VESICLE, HOLE = 1, 2, 3

_SPLITS = ("train", "val")
_MAX_TRIES = 200  # placement attempts per instance before giving up on it
_MIN_VISIBLE = 0.6  # an instance cut by the image border keeps at least this fraction
_GAP_PX = 1  # free pixels kept between instances, so masks neither overlap nor touch
_REFERENCE_SIDE = 512.0  # pixel sizes below are given for this side and scale with the image
_FINE_TEXTURE = 0.030  # amplitude of the finest film grain (transmission units)


@dataclass(frozen=True)
class _ShapeSpec:
    """Size and shape ranges of one category; radii are fractions of the image side."""

    radius: tuple[float, float]
    aspect: tuple[float, float]  # minor / major axis
    wobble: float  # std of the low-order radial harmonics, makes outlines less ideal


_SPECS = {
    BIG_VESICLE: _ShapeSpec(radius=(0.05, 0.09), aspect=(0.80, 1.00), wobble=0.015),
    SMALL_VESICLE: _ShapeSpec(radius=(0.008, 0.016), aspect=(0.85, 1.00), wobble=0.0),
    HOLE: _ShapeSpec(radius=(0.008, 0.014), aspect=(0.92, 1.00), wobble=0.0),
}


@dataclass(frozen=True)
class _Instance:
    """A placed instance: its annotated polygon and, for big vesicles, the rim's inner edge."""

    category_id: int
    polygon: np.ndarray  # (N, 2) x, y in COCO pixel coordinates, clipped to the image
    inner: np.ndarray | None = None  # unclipped inner membrane outline (rendering only)


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


def _outline(
    center: np.ndarray, a: float, b: float, theta: float, harmonics: np.ndarray, shrink: float = 0
) -> np.ndarray:
    """Ellipse (semi-axes a >= b, rotated by theta) with small radial harmonics, as a polygon.

    Vertices are spaced evenly in polar angle, ~3 px apart (at least 16), so the polygon is a
    faithful outline at any size. ``shrink`` moves every vertex inwards (inner membrane edge).
    """
    perimeter = math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b)))
    n = max(16, math.ceil(perimeter / 3))
    phi = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    rho = a * b / np.sqrt((b * np.cos(phi)) ** 2 + (a * np.sin(phi)) ** 2)
    for k, (amp, phase) in enumerate(harmonics, start=2):
        rho = rho * (1 + amp * np.cos(k * phi + phase))
    rho = np.maximum(rho - shrink, 0.5)
    ang = phi + theta
    return np.stack([center[0] + rho * np.cos(ang), center[1] + rho * np.sin(ang)], axis=1)


def _clip_to_box(poly: np.ndarray, size: int) -> np.ndarray:
    """Sutherland-Hodgman clip of a polygon to the image rectangle [0, size]^2."""
    out = poly
    for axis, bound, keep_below in ((0, 0.0, False), (0, size, True), (1, 0.0, False),
                                    (1, size, True)):
        if len(out) == 0:
            break
        inside = out[:, axis] <= bound if keep_below else out[:, axis] >= bound
        pts: list[np.ndarray] = []
        for i in range(len(out)):
            cur, nxt = out[i], out[(i + 1) % len(out)]
            cur_in, nxt_in = inside[i], inside[(i + 1) % len(out)]
            if cur_in:
                pts.append(cur)
            if cur_in != nxt_in:
                t = (bound - cur[axis]) / (nxt[axis] - cur[axis])
                pts.append(cur + t * (nxt - cur))
        out = np.array(pts, dtype=np.float64).reshape(-1, 2)
    return out


def _polygon_area(poly: np.ndarray) -> float:
    """Shoelace area, used to reject instances that the border cuts down to slivers."""
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _dedupe(poly: np.ndarray) -> np.ndarray:
    """Drop consecutive duplicate vertices (left by clipping and rounding)."""
    keep = np.any(poly != np.roll(poly, 1, axis=0), axis=1)
    return poly[keep] if keep.any() else poly[:1]


def polygon_mask(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    """Rasterise a polygon exactly as pycocotools (and so ``COCO.annToMask``) does: HxW uint8."""
    rles = mask_utils.frPyObjects([np.asarray(polygon, np.float64).ravel().tolist()], height,
                                  width)
    return mask_utils.decode(rles)[:, :, 0]


def _fill(canvas: np.ndarray, polygon: np.ndarray, origin: tuple[int, int] = (0, 0)) -> None:
    """cv2.fillPoly with 1/16 px precision; a pixel centre sits at (i + 0.5) in COCO coordinates.

    cv2 fills every pixel the outline touches: a near-superset of the pycocotools raster (a
    pixel in ~10^4 differs), and with the 1 px gap a safe, fast occupancy test.
    """
    pts = np.round((polygon - 0.5 - np.asarray(origin, np.float64)) * 16).astype(np.int32)
    cv2.fillPoly(canvas, [pts], 1, lineType=cv2.LINE_8, shift=4)


# --------------------------------------------------------------------------------------------
# Placement
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pose:
    """Random shape parameters of one candidate instance (pixels, radians)."""

    center: np.ndarray
    a: float
    b: float
    theta: float
    harmonics: np.ndarray
    rim: float  # membrane thickness, big vesicles only

    def outline(self, shrink: float = 0.0) -> np.ndarray:
        return _outline(self.center, self.a, self.b, self.theta, self.harmonics, shrink)


def _pose(rng: np.random.Generator, cat: int, radius: float, size: int) -> _Pose:
    """Draw one random pose; every draw consumes the same random numbers (determinism)."""
    spec = _SPECS[cat]
    aspect = rng.uniform(*spec.aspect)
    theta = rng.uniform(0.0, math.pi)
    center = rng.uniform(0.0, size, 2)
    harmonics = np.stack([rng.normal(0.0, spec.wobble, 3), rng.uniform(0, 2 * math.pi, 3)], 1)
    rim = max(rng.uniform(1.5, 3.0) * size / _REFERENCE_SIDE, 1.0)
    return _Pose(center, radius, radius * aspect, theta, harmonics, rim)


def _visible_part(polygon: np.ndarray, size: int) -> np.ndarray | None:
    """The polygon clipped to the image and rounded (as annotated); None if mostly cut away."""
    if polygon.min() >= 0 and polygon.max() <= size:
        return _dedupe(np.round(polygon, 2))
    clipped = _dedupe(np.round(_clip_to_box(polygon, size), 2))
    if len(clipped) < 3 or _polygon_area(clipped) < _MIN_VISIBLE * _polygon_area(polygon):
        return None
    return clipped


def _window(polygon: np.ndarray, size: int) -> tuple[int, int, int, int]:
    """Pixel box x0, y0, x1, y1 around a polygon plus the gap, clipped to the image."""
    lo = np.floor(polygon.min(0)).astype(int) - _GAP_PX - 1
    hi = np.ceil(polygon.max(0)).astype(int) + _GAP_PX + 2
    return max(lo[0], 0), max(lo[1], 0), min(hi[0], size), min(hi[1], size)


def _claim(polygon: np.ndarray, occupied: np.ndarray) -> bool:
    """Mark the polygon's pixels as occupied if it, grown by the gap, lands on free pixels only."""
    x0, y0, x1, y1 = _window(polygon, occupied.shape[0])
    if x1 <= x0 or y1 <= y0:
        return False
    local = np.zeros((y1 - y0, x1 - x0), np.uint8)
    _fill(local, polygon, (x0, y0))
    grown = cv2.dilate(local, np.ones((2 * _GAP_PX + 1,) * 2, np.uint8))
    window = occupied[y0:y1, x0:x1]
    if np.any(window & grown):
        return False
    window |= local
    return True


def _place_instances(
    rng: np.random.Generator, size: int, counts: dict[int, int]
) -> list[_Instance]:
    """Rejection-sample non-overlapping instances, largest first (denser packing).

    An instance that finds no free spot in ``_MAX_TRIES`` poses is dropped, so crowded settings
    yield fewer instances than requested, deterministically.
    """
    wanted = [(rng.uniform(*_SPECS[cat].radius) * size, cat)
              for cat, n in counts.items() for _ in range(n)]
    wanted.sort(key=lambda rc: -rc[0])
    occupied = np.zeros((size, size), np.uint8)
    placed: list[_Instance] = []
    for radius, cat in wanted:
        for _ in range(_MAX_TRIES):
            pose = _pose(rng, cat, radius, size)
            cx, cy = np.minimum(pose.center.astype(int), size - 1)
            if occupied[cy, cx]:  # cheap early rejection: the centre is already taken
                continue
            visible = _visible_part(pose.outline(), size)
            if visible is not None and _claim(visible, occupied):
                inner = pose.outline(shrink=pose.rim) if cat == BIG_VESICLE else None
                placed.append(_Instance(cat, visible, inner))
                break
    return placed


# --------------------------------------------------------------------------------------------
# Rendering (transmission in [0, ~1], then detector)
# --------------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit std: film texture at one spatial scale."""
    field = rng.standard_normal((size, size), dtype=np.float32)
    if sigma >= 0.5:
        field = cv2.GaussianBlur(field, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return field / (float(field.std()) + 1e-12)


def _film(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Film transmission: mean level plus multi-scale texture; also returns the fine texture."""
    scale = size / _REFERENCE_SIDE
    fine = _smooth_noise(rng, size, 1.0 * scale)
    film = rng.uniform(0.40, 0.55) + _FINE_TEXTURE * fine
    for sigma, amp in ((4.0, 0.030), (16.0, 0.035), (48.0, 0.030)):
        film += amp * _smooth_noise(rng, size, sigma * scale)
    return film.astype(np.float32), fine


def _paint(rng: np.random.Generator, image: np.ndarray, inst: _Instance, mask: np.ndarray,
           fine: np.ndarray, level: float) -> None:
    """Paint one instance over exactly its annotated mask, with per-instance contrast.

    Works in the instance's bounding window (views into the full-size arrays) for speed.
    """
    x0, y0, x1, y1 = _window(inst.polygon, image.shape[0])
    image, fine = image[y0:y1, x0:x1], fine[y0:y1, x0:x1]
    region = mask[y0:y1, x0:x1].astype(bool)
    if inst.category_id == BIG_VESICLE:
        inner = np.zeros(region.shape, np.uint8)
        _fill(inner, inst.inner, (x0, y0))
        inner = inner.astype(bool) & region
        rim = region & ~inner
        image[inner] += rng.uniform(0.02, 0.06)
        image[rim] -= rng.uniform(0.05, 0.12) * np.clip(1 + 0.5 * fine[rim], 0.2, None)
    elif inst.category_id == SMALL_VESICLE:
        image[region] -= rng.uniform(0.10, 0.22)
    else:  # a hole in the film: bright and almost featureless
        grain = 0.3 * _FINE_TEXTURE * fine[region]  # no film, so little texture
        image[region] = level + rng.uniform(0.22, 0.38) + grain


def _clutter(rng: np.random.Generator, size: int, occupied: np.ndarray, n_specks: int,
             n_arcs: int) -> np.ndarray:
    """Unannotated distractors on free film: tiny dark particles and faint membrane fragments.

    The particles are smaller than any small vesicle, so a model must use size, not darkness.
    """
    scale = size / _REFERENCE_SIDE
    layer = np.zeros((size, size), np.float32)
    for _ in range(n_specks):
        r = rng.uniform(0.0025, 0.005) * size
        c = np.round((rng.uniform(0, size, 2) - 0.5) * 16).astype(int)
        cv2.circle(layer, tuple(int(v) for v in c), max(int(round(r * 16)), 8),
                   float(rng.uniform(0.06, 0.18)), -1, cv2.LINE_AA, 4)
    thickness = max(1, int(round(scale)))
    for _ in range(n_arcs):
        center = tuple(int(v) for v in rng.uniform(0, size, 2))
        axes = tuple(int(v) for v in rng.uniform(0.03, 0.10, 2) * size)
        start = rng.uniform(0, 360)
        cv2.ellipse(layer, center, axes, rng.uniform(0, 180), start, start + rng.uniform(40, 120),
                    float(rng.uniform(0.03, 0.07)), thickness, cv2.LINE_AA)
    grown = cv2.dilate(occupied, np.ones((2 * _GAP_PX + 3,) * 2, np.uint8))
    layer[grown.astype(bool)] = 0.0
    return layer


def _illumination(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth uneven illumination: a tilted gradient times vignetting (up to ~+-15 %)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    angle = rng.uniform(0, 2 * math.pi)
    tilt = rng.uniform(-0.15, 0.15) * (xx * math.cos(angle) + yy * math.sin(angle)) * 2
    cx, cy = rng.uniform(-0.2, 0.2, 2)
    vignette = -rng.uniform(0.05, 0.15) * ((xx - cx) ** 2 + (yy - cy) ** 2) * 2
    return (1 + tilt + vignette).astype(np.float32)


def _acquire(rng: np.random.Generator, transmission: np.ndarray) -> np.ndarray:
    """Optics blur, Poisson shot noise at a modest dose, read noise, 8-bit quantisation."""
    blurred = cv2.GaussianBlur(transmission, (0, 0), rng.uniform(0.8, 1.3),
                               borderType=cv2.BORDER_REFLECT)
    dose = rng.uniform(70.0, 120.0)  # electrons per pixel at full transmission
    counts = rng.poisson(np.clip(blurred, 0, None).astype(np.float64) * dose) / dose
    signal = counts + rng.normal(0.0, 0.01, counts.shape)
    return np.clip(np.round(signal * 220.0), 0, 255).astype(np.uint8)


def render_vesicle_image(
    rng: np.random.Generator,
    size: int = 512,
    n_big: int = 30,
    n_small: int = 120,
    n_holes: int = 30,
) -> tuple[np.ndarray, list[dict]]:
    """Render one synthetic micrograph.

    Returns the ``size`` x ``size`` uint8 image and one ``{"category_id", "polygon"}`` per
    instance (polygon: (N, 2) float x, y in COCO pixel coordinates). The annotated polygon's
    pycocotools raster is exactly the painted region. Fewer instances than requested are
    returned when they do not fit without overlap.
    """
    if size < 32:
        raise ValueError(f"image size must be >= 32 px, got {size}")
    if min(n_big, n_small, n_holes) < 0:
        raise ValueError("instance counts must be >= 0")
    placed = _place_instances(rng, size, {BIG_VESICLE: n_big, SMALL_VESICLE: n_small,
                                          HOLE: n_holes})
    image, fine = _film(rng, size)
    level = float(image.mean())
    occupied = np.zeros((size, size), np.uint8)
    for inst in placed:
        mask = np.ascontiguousarray(polygon_mask(inst.polygon, size, size))
        _paint(rng, image, inst, mask, fine, level)
        x0, y0, x1, y1 = _window(inst.polygon, size)
        occupied[y0:y1, x0:x1] |= mask[y0:y1, x0:x1]
    image -= _clutter(rng, size, occupied, n_specks=n_small // 4, n_arcs=max(1, n_big // 6))
    image *= _illumination(rng, size)
    out = _acquire(rng, image)
    return out, [{"category_id": i.category_id, "polygon": i.polygon} for i in placed]


# --------------------------------------------------------------------------------------------
# COCO dataset
# --------------------------------------------------------------------------------------------


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Per-image generator: image ``index`` of ``split`` is independent of the split size."""
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLITS.index(split), index]))


def _annotation(instance: dict, ann_id: int, image_id: int, size: int) -> dict:
    """COCO annotation whose segmentation, bbox and area all come from the same polygon."""
    poly = np.asarray(instance["polygon"], np.float64)
    flat = [round(float(v), 2) for v in poly.ravel()]
    rle = mask_utils.frPyObjects([flat], size, size)[0]
    x0, y0 = poly.min(0)
    x1, y1 = poly.max(0)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": int(instance["category_id"]),
        "segmentation": [flat],
        "bbox": [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2),
                 round(float(y1 - y0), 2)],
        "area": float(mask_utils.area(rle)),
        "iscrowd": 0,
    }


def _write_split(root: Path, split: str, n_images: int, params: dict, seed: int) -> None:
    """Render and write the PNGs of one split and its COCO json."""
    size = params["image_size"]
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for k in range(n_images):
        image, instances = render_vesicle_image(
            image_rng(seed, split, k), size, params["n_big"], params["n_small"],
            params["n_holes"])
        file_name = f"{split}/vesicles_{k:03d}.png"
        if not cv2.imwrite(str(root / "images" / file_name), image):
            raise OSError(f"could not write {root / 'images' / file_name}")
        images.append({"id": k + 1, "file_name": file_name, "width": size, "height": size})
        for inst in instances:
            annotations.append(_annotation(inst, len(annotations) + 1, k + 1, size))
    coco = {
        "info": {"description": "em_lightning synthetic TEM vesicles demo dataset",
                 "generator": __name__, "split": split, "seed": seed, **params},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }
    with open(root / "annotations" / f"{split}.json", "w", encoding="utf-8") as f:
        json.dump(coco, f, sort_keys=True)
        f.write("\n")


_README = """\
Synthetic TEM bright-field vesicle dataset (em_lightning built-in demo data).

Generated deterministically by em_lightning.data.demo_vesicles; the same parameters give
byte-identical files. Regenerate with:

    python -m em_lightning.data.demo_vesicles --root <this folder> --n-train {n_train} \\
        --n-val {n_val} --image-size {image_size} --n-big {n_big} --n-small {n_small} \\
        --n-holes {n_holes} --seed {seed}

Layout (COCO instance segmentation, file_name relative to images/):
    images/train/vesicles_NNN.png, images/val/vesicles_NNN.png  (8-bit grayscale)
    annotations/train.json, annotations/val.json

Categories: 1 big_vesicle (large, light, low-contrast interior, thin dark rim),
            2 small_vesicle (small, dark), 3 hole (small, bright).
Requested per image: {n_big} big vesicles, {n_small} small vesicles, {n_holes} holes
(fewer when they do not fit without overlap). Unannotated clutter (tiny dark particles,
faint membrane fragments), textured film, uneven illumination, blur and shot noise are
part of the images on purpose. Segmentations are the exact polygons that were painted.

Parameters: n_train={n_train} n_val={n_val} image_size={image_size} seed={seed}
"""


def generate_vesicles_dataset(
    root: str | Path,
    n_train: int = 14,
    n_val: int = 2,
    image_size: int = 512,
    n_big: int = 30,
    n_small: int = 120,
    n_holes: int = 30,
    seed: int = 0,
) -> Path:
    """Write the demo dataset (PNGs, COCO jsons, README.txt) under ``root``; returns ``root``."""
    if n_train < 0 or n_val < 0:
        raise ValueError("n_train and n_val must be >= 0")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    root = Path(root)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    params = {"image_size": image_size, "n_big": n_big, "n_small": n_small, "n_holes": n_holes}
    for split, n in zip(_SPLITS, (n_train, n_val)):
        _write_split(root, split, n, params, seed)
    (root / "README.txt").write_text(
        _README.format(n_train=n_train, n_val=n_val, seed=seed, **params), encoding="utf-8")
    return root


def ensure_vesicles_dataset(root: str | Path, **generator_kwargs) -> bool:
    """Generate the demo dataset unless ``root/annotations/train.json`` exists.

    Returns True if it generated the dataset, False if it was already there.
    """
    root = Path(root)
    if (root / "annotations" / "train.json").exists():
        return False
    log.debug("Generating the synthetic vesicles demo dataset in %s", root.resolve())
    generate_vesicles_dataset(root, **generator_kwargs)
    return True


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: always (re)generates the dataset at --root."""
    parser = argparse.ArgumentParser(
        prog="python -m em_lightning.data.demo_vesicles",
        description="Generate the deterministic synthetic TEM vesicles/holes demo dataset "
                    "(COCO instance segmentation: big_vesicle, small_vesicle, hole).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--root", required=True, type=Path, default=argparse.SUPPRESS,
                        help="output folder (images/, annotations/, README.txt)")
    parser.add_argument("--n-train", type=int, default=14, help="number of training images")
    parser.add_argument("--n-val", type=int, default=2, help="number of validation images")
    parser.add_argument("--image-size", type=int, default=512, help="square image side in px")
    parser.add_argument("--n-big", type=int, default=30, help="big vesicles per image")
    parser.add_argument("--n-small", type=int, default=120, help="small vesicles per image")
    parser.add_argument("--n-holes", type=int, default=30, help="holes per image")
    parser.add_argument("--seed", type=int, default=0, help="same seed -> identical files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    root = generate_vesicles_dataset(
        args.root, n_train=args.n_train, n_val=args.n_val, image_size=args.image_size,
        n_big=args.n_big, n_small=args.n_small, n_holes=args.n_holes, seed=args.seed)
    log.info("Wrote the vesicles demo dataset to %s", root.resolve())


if __name__ == "__main__":
    main()
