"""EM-specific pipeline steps, registered in mmdet's and mmrotate's TRANSFORMS.

mmdet/mmrotate provide flips, resizes, crops and rotations; what EM needs beyond them is loading
8/16-bit/float grayscale without clipping, a transpose (with flips: all eight 90-degree
symmetries of a micrograph) and intensity jitter (brightness, contrast, gamma, noise).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from mmcv.transforms import BaseTransform

from em_lightning.data.errors import DataError


def read_grayscale(path: str | Path) -> np.ndarray:
    """Read an image file as a 2-D array in its original dtype; clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image file not found")
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            img = tifffile.imread(path)
        except Exception as exc:
            raise DataError(path, f"TIFF cannot be decoded ({exc})") from exc
    else:
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise DataError(path, "image cannot be decoded (corrupt or unsupported format)")
    if img.ndim == 3:
        img = img[..., :3].mean(axis=-1) if img.shape[-1] >= 3 else img[..., 0]
    if img.ndim != 2:
        raise DataError(path, f"expected a 2-D grayscale image, got shape {img.shape}")
    return img


def normalize_em(img: np.ndarray, mode: str = "auto") -> np.ndarray:
    """float32 in [0, 255] from any grayscale array, never clipping.

    ``auto``: 8-bit stays as is; 16-bit and float data are min-max stretched per image (EM
    detectors rarely fill the 16-bit range). ``dtype``: divide integers by their dtype maximum.
    ``minmax``: always stretch. ``none``: cast only.
    """
    if mode == "none" or (mode == "auto" and img.dtype == np.uint8):
        return img.astype(np.float32)
    if mode == "dtype" and np.issubdtype(img.dtype, np.integer):
        return img.astype(np.float32) * (255.0 / np.iinfo(img.dtype).max)
    if mode not in ("auto", "minmax", "dtype"):
        raise ValueError(f"unknown normalize mode {mode!r}; expected auto, minmax, dtype, none")
    img = img.astype(np.float32)
    lo, hi = float(img.min()), float(img.max())
    return (img - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(img)


def register_transforms() -> None:
    """Register the EM transforms in mmdet's and mmrotate's registries (idempotent)."""
    from mmdet.registry import TRANSFORMS as MMDET_TRANSFORMS
    from mmrotate.registry import TRANSFORMS as MMROTATE_TRANSFORMS

    for registry in (MMDET_TRANSFORMS, MMROTATE_TRANSFORMS):
        for cls in (EMLoadImage, EMRandomTranspose, EMIntensityJitter):
            registry.register_module(module=cls, force=True)


class EMLoadImage(BaseTransform):
    """Load a grayscale EM image as a 3-channel float32 array in [0, 255]."""

    def __init__(self, normalize: str = "auto") -> None:
        self.normalize = normalize

    def transform(self, results: dict) -> dict:
        gray = normalize_em(read_grayscale(results["img_path"]), self.normalize)
        img = np.repeat(gray[..., None], 3, axis=-1)
        results["img"] = img
        results["img_shape"] = img.shape[:2]
        results["ori_shape"] = img.shape[:2]
        return results


class EMRandomTranspose(BaseTransform):
    """Swap x and y of image, boxes (horizontal or rotated) and masks with probability ``prob``."""

    def __init__(self, prob: float = 0.5) -> None:
        self.prob = prob

    def transform(self, results: dict) -> dict:
        if np.random.rand() >= self.prob:
            return results
        results["img"] = np.ascontiguousarray(results["img"].transpose(1, 0, 2))
        h, w = results["img_shape"][:2]
        results["img_shape"] = (w, h)
        if results.get("gt_bboxes") is not None:
            results["gt_bboxes"] = transpose_boxes(results["gt_bboxes"])
        if results.get("gt_masks") is not None:
            results["gt_masks"] = transpose_masks(results["gt_masks"])
        return results


def transpose_boxes(boxes: object) -> object:
    """Mirror mmdet/mmrotate box structures about the image diagonal y = x."""
    tensor = boxes.tensor.clone()  # type: ignore[attr-defined]
    if tensor.shape[-1] == 4:  # x1 y1 x2 y2
        tensor = tensor[:, [1, 0, 3, 2]]
    elif tensor.shape[-1] == 5:  # cx cy w h angle: direction (cos a, sin a) -> (sin a, cos a)
        tensor = tensor[:, [1, 0, 2, 3, 4]]
        tensor[:, 4] = np.pi / 2 - tensor[:, 4]
    else:
        raise ValueError(f"cannot transpose boxes with {tensor.shape[-1]} values")
    out = type(boxes)(tensor)
    if hasattr(out, "regularize_boxes"):
        out = type(boxes)(out.regularize_boxes("le90"))
    return out


def transpose_masks(masks: object) -> object:
    from mmdet.structures.mask import BitmapMasks, PolygonMasks

    if isinstance(masks, BitmapMasks):
        return BitmapMasks(masks.masks.transpose(0, 2, 1).copy(), masks.width, masks.height)
    if isinstance(masks, PolygonMasks):
        polys = [[p.reshape(-1, 2)[:, ::-1].reshape(-1).copy() for p in obj]
                 for obj in masks.masks]
        return PolygonMasks(polys, masks.width, masks.height)
    raise TypeError(f"cannot transpose masks of type {type(masks).__name__}")


class EMIntensityJitter(BaseTransform):
    """Random brightness, contrast, gamma and gaussian noise on a float [0, 255] image."""

    def __init__(self, brightness: float = 0.1, contrast: float = 0.2, gamma: float = 0.2,
                 noise_std: float = 3.0, prob: float = 0.8) -> None:
        self.brightness, self.contrast, self.gamma = brightness, contrast, gamma
        self.noise_std, self.prob = noise_std, prob

    def transform(self, results: dict) -> dict:
        if np.random.rand() >= self.prob:
            return results
        img = results["img"].astype(np.float32) / 255.0
        gamma = float(np.exp(np.random.uniform(-self.gamma, self.gamma)))
        img = np.power(np.clip(img, 0.0, None), gamma)
        mean = float(img.mean())
        img = (img - mean) * np.random.uniform(1 - self.contrast, 1 + self.contrast) + mean
        img = img + np.random.uniform(-self.brightness, self.brightness)
        img = img * 255.0
        if self.noise_std > 0:
            img = img + np.random.normal(0.0, np.random.uniform(0, self.noise_std), img.shape[:2]
                                         )[..., None]
        results["img"] = img.astype(np.float32)
        return results
