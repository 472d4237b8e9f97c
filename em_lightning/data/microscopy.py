"""Read electron-microscopy images together with their physical pixel size.

Measurements are only comparable between instruments and magnifications in nm, so every
reader returns the pixel size it found in the file's own metadata. A pixel size given by the
user is a fallback (metadata describes the actual acquisition, a config value may be stale).
All problems surface as :class:`~em_lightning.data.errors.DataError` naming the file.

Supported: PNG/JPEG/BMP (OpenCV), TIFF (tifffile: ImageJ, FEI/Thermo, Zeiss SEM and
physical ``ResolutionUnit`` calibrations), Gatan DM3/DM4, FEI/Thermo Velox and Berkeley EMD,
TIA SER (RosettaSciIO), MRC (mrcfile).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from em_lightning.data.errors import DataError

log = logging.getLogger(__name__)

__all__ = ["EMImage", "normalize_to_float", "read_em_image", "SUPPORTED_SUFFIXES"]

#: Length units as written by the various acquisition programs, in nm.
_UNIT_NM: dict[str, float] = {
    "pm": 1e-3,
    "a": 0.1,
    "å": 0.1,
    "angstrom": 0.1,
    "nm": 1.0,
    "nanometer": 1.0,
    "um": 1e3,
    "µm": 1e3,
    "μm": 1e3,
    "micron": 1e3,
    "microns": 1e3,
    "micrometer": 1e3,
    "mm": 1e6,
    "cm": 1e7,
    "m": 1e9,
}
#: Pixel sizes outside this range (nm) come from placeholder metadata (e.g. 72 dpi), not a
#: microscope, and are ignored.
_PLAUSIBLE_NM = (1e-4, 1e5)
_RESUNIT_NM = {3: 1e7, 4: 1e6, 5: 1e3}  # TIFF ResolutionUnit CENTIMETER, MILLIMETER, MICROMETER
_RGB_WEIGHTS = np.array([0.299, 0.587, 0.114])


@dataclass
class EMImage:
    """A 2-D EM image in its original dtype plus where its pixel size came from."""

    data: np.ndarray
    path: Path
    pixel_size_nm: float | None
    pixel_size_source: str  # "metadata" | "user" | "none"

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape  # type: ignore[return-value]


def unit_to_nm(value: float, unit: Any) -> float | None:
    """Convert ``value`` in ``unit`` to nm; None for unknown/reciprocal units or implausible
    values, so a diffraction pattern (1/nm) or an uncalibrated axis never yields a size."""
    if unit is None or value is None:
        return None
    key = str(unit).strip().lower().replace("\\u00b5", "µ").replace("μ", "µ")
    factor = _UNIT_NM.get(key)
    try:
        nm = float(value) * factor if factor else None
    except (TypeError, ValueError):
        return None
    if nm is None or not math.isfinite(nm) or not _PLAUSIBLE_NM[0] <= nm <= _PLAUSIBLE_NM[1]:
        return None
    return nm


def to_gray(data: np.ndarray, channel_order: str = "rgb") -> np.ndarray:
    """Reduce an HxWx{1,3,4} colour image to 2-D in the same dtype (alpha dropped).

    Gray images saved as RGB (all channels equal) are returned exactly, without rounding.
    """
    if data.ndim == 2:
        return data
    if data.ndim != 3 or data.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected a 2-D image or HxWx{{1,3,4}}, got shape {data.shape}")
    if data.shape[2] == 1:
        return data[:, :, 0]
    rgb = data[:, :, :3] if channel_order == "rgb" else data[:, :, 2::-1]
    if np.array_equal(rgb[:, :, 0], rgb[:, :, 1]) and np.array_equal(rgb[:, :, 0], rgb[:, :, 2]):
        return np.ascontiguousarray(rgb[:, :, 0])
    gray = rgb.astype(np.float64) @ _RGB_WEIGHTS
    if np.issubdtype(data.dtype, np.integer):
        info = np.iinfo(data.dtype)
        gray = np.clip(np.rint(gray), info.min, info.max)
    return gray.astype(data.dtype)


def normalize_to_float(data: np.ndarray) -> np.ndarray:
    """Scale to float32 in [0, 1]: integers by their dtype's full range, so 16-bit counts keep
    their meaning across images (no clipping, no per-image stretch); floats by min/max,
    because float data has no natural range. Non-finite values map to 0."""
    arr = np.asarray(data)
    if arr.dtype == bool:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        out = (arr.astype(np.float64) - info.min) / (float(info.max) - float(info.min))
        return out.astype(np.float32)
    arr = arr.astype(np.float64)
    finite = np.isfinite(arr)
    if not finite.any():
        return np.zeros(arr.shape, np.float32)
    lo, hi = float(arr[finite].min()), float(arr[finite].max())
    out = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    return np.where(finite, out, 0.0).astype(np.float32)


# --------------------------------------------------------------------------- readers
# Each returns (2-D data, pixel size in nm or None) and may raise anything; read_em_image
# turns failures into DataError.


def _read_cv2(path: Path) -> tuple[np.ndarray, float | None]:
    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise DataError(path, "OpenCV could not decode the image (corrupt or unsupported)")
    return to_gray(data, "bgr"), None


def _tiff_resolution_nm(page: Any, unit: str | None) -> float | None:
    """Pixel size from XResolution (pixels per unit), using the ImageJ unit when present."""
    tag = page.tags.get("XResolution")
    if tag is None:
        return None
    num, den = tag.value
    if not num or not den:
        return None
    per_unit = num / den
    if unit is not None:  # ImageJ stores 1/pixel_width in XResolution, the unit in ImageJ text
        return unit_to_nm(1.0 / per_unit, unit)
    factor = _RESUNIT_NM.get(int(page.resolutionunit))  # INCH = print dpi, not a calibration
    return unit_to_nm(factor / per_unit, "nm") if factor else None


def _tiff_vendor_nm(tif: Any) -> float | None:
    """FEI/Thermo (PixelWidth in m) and Zeiss SEM (Image Pixel Size) TIFF calibrations."""
    fei = getattr(tif, "fei_metadata", None) or {}
    width = (fei.get("Scan") or {}).get("PixelWidth") or (fei.get("EScan") or {}).get("PixelWidth")
    if width:
        return unit_to_nm(width, "m")
    sem = getattr(tif, "sem_metadata", None) or {}
    entry = sem.get("ap_image_pixel_size")
    if isinstance(entry, (tuple, list)) and len(entry) >= 3:
        return unit_to_nm(entry[1], entry[2])
    return None


def _read_tiff(path: Path) -> tuple[np.ndarray, float | None]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        if len(tif.pages) > 1:
            log.info("%s: %d pages, reading the first", path, len(tif.pages))
        data = page.asarray()
        data = to_gray(np.squeeze(data) if data.ndim > 3 else data, "rgb")
        ij = tif.imagej_metadata or {}
        pixel = _tiff_vendor_nm(tif)
        if pixel is None:
            pixel = _tiff_resolution_nm(page, ij.get("unit") if ij else None)
    return data, pixel


def _read_mrc(path: Path) -> tuple[np.ndarray, float | None]:
    import mrcfile

    with mrcfile.open(path, permissive=False) as mrc:
        data = np.array(mrc.data)
        voxel_x = float(mrc.voxel_size.x)
    data = np.squeeze(data)
    if data.ndim != 2:
        raise DataError(path, f"MRC holds a {data.ndim}-D volume/stack {data.shape}, not an image")
    return data, unit_to_nm(voxel_x, "Å") if voxel_x > 0 else None


def _rsciio_pick_image(path: Path, signals: list[dict]) -> tuple[np.ndarray, float | None]:
    """First 2-D image among the signals of a multi-signal file (Velox: HAADF, BF, ...)."""
    for sig in signals:
        data = np.asarray(sig["data"])
        axes = [ax for ax in sig.get("axes", []) if ax.get("size", 1) > 1]
        if np.squeeze(data).ndim != 2 or len(axes) != 2:
            continue
        x_axis, y_axis = sorted(axes, key=lambda ax: ax.get("index_in_array", 0))[::-1]
        pixel = unit_to_nm(x_axis.get("scale"), x_axis.get("units"))
        other = unit_to_nm(y_axis.get("scale"), y_axis.get("units"))
        if pixel and other and abs(other - pixel) > 0.01 * pixel:
            log.warning("%s: non-square pixels %.4g x %.4g nm; using x", path, pixel, other)
        return np.squeeze(data), pixel
    shapes = [tuple(np.shape(s["data"])) for s in signals]
    raise DataError(path, f"no 2-D image among the datasets in the file (shapes {shapes})")


def _rsciio_reader(module: str, **kwargs: Any) -> Callable[[Path], tuple[np.ndarray, float | None]]:
    """Reader for a RosettaSciIO plugin; imported lazily because rsciio pulls in dask."""

    def read(path: Path) -> tuple[np.ndarray, float | None]:
        try:
            plugin = __import__(f"rsciio.{module}", fromlist=["file_reader"])
        except ImportError as exc:
            raise DataError(
                path, f"reading {path.suffix} needs RosettaSciIO: pip install rosettasciio ({exc})"
            ) from None
        return _rsciio_pick_image(path, plugin.file_reader(str(path), **kwargs))

    return read


_READERS: dict[str, Callable[[Path], tuple[np.ndarray, float | None]]] = {
    **dict.fromkeys((".png", ".jpg", ".jpeg", ".bmp"), _read_cv2),
    **dict.fromkeys((".tif", ".tiff"), _read_tiff),
    **dict.fromkeys((".mrc", ".mrcs", ".rec", ".st"), _read_mrc),
    **dict.fromkeys((".dm3", ".dm4"), _rsciio_reader("digitalmicrograph")),
    ".emd": _rsciio_reader("emd", select_type="image"),
    ".ser": _rsciio_reader("tia"),
}
SUPPORTED_SUFFIXES: tuple[str, ...] = tuple(sorted(_READERS))


def read_em_image(path: str | Path, pixel_size_nm: float | None = None) -> EMImage:
    """Read one EM image as 2-D data in its original dtype with its pixel size.

    Pixel size precedence: file metadata, then ``pixel_size_nm`` ("user"), else None ("none").
    Raises DataError for missing, unsupported, unreadable or non-2-D files.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(
            path, f"unsupported image type {path.suffix!r}; supported: {SUPPORTED_SUFFIXES}"
        )
    if pixel_size_nm is not None and not (math.isfinite(pixel_size_nm) and pixel_size_nm > 0):
        raise ValueError(f"pixel_size_nm must be a positive number, got {pixel_size_nm!r}")
    try:
        data, meta_nm = reader(path)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - every third-party failure becomes one clear error
        raise DataError(path, f"cannot read file ({type(exc).__name__}: {exc})") from None
    data = np.asarray(data)
    if data.ndim != 2 or data.size == 0:
        raise DataError(path, f"expected a 2-D image, got shape {data.shape}")
    if meta_nm is not None:
        if pixel_size_nm is not None and not math.isclose(meta_nm, pixel_size_nm, rel_tol=0.01):
            log.warning(
                "%s: metadata pixel size %.4g nm overrides the given %.4g nm",
                path,
                meta_nm,
                pixel_size_nm,
            )
        return EMImage(data, path, float(meta_nm), "metadata")
    if pixel_size_nm is not None:
        return EMImage(data, path, float(pixel_size_nm), "user")
    return EMImage(data, path, None, "none")
