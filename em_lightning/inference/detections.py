"""One detected object with its mask stored cropped to its bounding box.

A Mask R-CNN mask of a 4096 x 4096 image is 16 MB as a full-image bool array, and such an
image can hold thousands of objects; a crop plus its offset costs only the object's own
pixels. COCO RLE for the results file is built from the crop directly (:func:`crop_to_rle`),
never from a full-image array.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pycocotools.mask as mask_utils

from em_lightning.analysis.morphology import rbox_corners

__all__ = ["Detection", "crop_mask", "crop_to_rle", "rle_to_crop"]


@dataclass
class Detection:
    """A detection in image (or tile-local) pixel coordinates.

    ``mask`` is a bool crop whose top-left pixel is ``origin`` (x, y); ``rbox`` is
    ``(cx, cy, w, h, angle_rad)`` (mmrotate le90); exactly one of them is set. ``box`` is the
    axis-aligned extent ``(x0, y0, x1, y1)`` (for masks: pixel edges of the crop). ``tile``,
    ``cut`` and ``owned`` are filled by the tiled predictor for the seam merge.
    """

    label: int
    score: float
    box: np.ndarray
    mask: np.ndarray | None = None
    origin: tuple[int, int] = (0, 0)
    rbox: np.ndarray | None = None
    tile: int = 0
    cut: bool = False
    owned: bool = True

    @classmethod
    def from_crop(cls, label: int, score: float, crop: np.ndarray,
                  origin: tuple[int, int]) -> Detection:
        """A mask detection whose box is the crop's pixel extent."""
        x0, y0 = origin
        box = np.array([x0, y0, x0 + crop.shape[1], y0 + crop.shape[0]], float)
        return cls(label, score, box, mask=crop, origin=(x0, y0))

    @property
    def centre(self) -> tuple[float, float]:
        if self.rbox is not None:
            return float(self.rbox[0]), float(self.rbox[1])
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2

    def shifted(self, dx: int, dy: int) -> Detection:
        """The same detection translated by whole pixels (tile -> image coordinates)."""
        rbox = None if self.rbox is None else self.rbox + np.array([dx, dy, 0, 0, 0], float)
        return replace(self, box=self.box + np.array([dx, dy, dx, dy], float), rbox=rbox,
                       origin=(self.origin[0] + dx, self.origin[1] + dy))

    def window(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """This object's pixels inside the window ``[x0, x1) x [y0, y1)`` as a bool array."""
        out = np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), bool)
        if self.mask is None:
            raise ValueError("window() needs a mask detection")
        ox, oy = self.origin
        h, w = self.mask.shape
        ax0, ay0, ax1, ay1 = max(x0, ox), max(y0, oy), min(x1, ox + w), min(y1, oy + h)
        if ax1 > ax0 and ay1 > ay0:
            out[ay0 - y0:ay1 - y0, ax0 - x0:ax1 - x0] = self.mask[ay0 - oy:ay1 - oy,
                                                                  ax0 - ox:ax1 - ox]
        return out

    def outline(self) -> np.ndarray:
        """Polygon (N, 2) of a rotated box's corners; masks have no single polygon."""
        if self.rbox is None:
            raise ValueError("outline() needs a rotated-box detection")
        return rbox_corners(*(float(v) for v in self.rbox))


def crop_mask(mask: np.ndarray) -> tuple[np.ndarray, tuple[int, int]] | None:
    """Bool crop of a full mask to its pixel extent and the crop's (x, y); None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return np.ascontiguousarray(mask[y0:y1, x0:x1], dtype=bool), (int(x0), int(y0))


def crop_to_rle(crop: np.ndarray, origin: tuple[int, int], height: int, width: int) -> dict:
    """Compressed COCO RLE of a crop placed at ``origin`` in a ``height x width`` image.

    Runs are computed on the crop's pixels only (column-major, as COCO stores them), so the
    cost does not grow with the image size.
    """
    x0, y0 = origin
    h, w = crop.shape
    if x0 < 0 or y0 < 0 or x0 + w > width or y0 + h > height:
        raise ValueError(f"crop {w}x{h} at {origin} lies outside the {width}x{height} image")
    padded = np.zeros((h + 2, w), np.int8)
    padded[1:-1] = crop
    diff = np.diff(padded, axis=0)  # +1 where a run starts, -1 one past its end
    sj, si = np.nonzero(diff.T == 1)  # column-major order: by column, then row
    ej, ei = np.nonzero(diff.T == -1)
    starts = (x0 + sj).astype(np.int64) * height + y0 + si
    ends = (x0 + ej).astype(np.int64) * height + y0 + ei
    if starts.size:  # runs that continue from the bottom of one column into the next
        keep_start = np.ones(starts.size, bool)
        keep_start[1:] = starts[1:] != ends[:-1]
        keep_end = np.ones(ends.size, bool)
        keep_end[:-1] = keep_start[1:]
        starts, ends = starts[keep_start], ends[keep_end]
    bounds = np.empty(2 * starts.size + 2, np.int64)
    bounds[0], bounds[-1] = 0, height * width
    bounds[1:-1:2], bounds[2:-1:2] = starts, ends
    counts = np.diff(bounds).tolist()
    if len(counts) > 1 and counts[-1] == 0:  # a run that ends at the last pixel: no final 0
        counts.pop()
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def rle_to_crop(rle: dict) -> tuple[np.ndarray, tuple[int, int]] | None:
    """Decode a COCO RLE (compressed or not) to a crop and its (x, y); None when empty."""
    if isinstance(rle.get("counts"), list):
        height, width = rle["size"]
        rle = mask_utils.frPyObjects(rle, height, width)
    return crop_mask(mask_utils.decode(rle).astype(bool))
