"""Read electron-microscopy images together with their physical pixel size.

Measurements are only comparable between instruments and magnifications in nm, so every
reader returns the pixel size it found in the file's own metadata. A pixel size given by the
user is a fallback (metadata describes the actual acquisition, a config value may be stale).
All problems surface as :class:`~em_lightning.data.errors.DataError` naming the file.

Supported: PNG/JPEG/BMP (OpenCV), TIFF (tifffile: ImageJ, FEI/Thermo, Zeiss SEM and
physical ``ResolutionUnit`` calibrations), Gatan DM3/DM4, FEI/Thermo Velox and Berkeley EMD,
TIA SER (RosettaSciIO), MRC (mrcfile). Calibrations agree with what RosettaSciIO reports for the
same file (see tests/test_microscopy_readers.py). Files holding several datasets (Velox detectors,
DM spectra next to an image, frame stacks) yield one image; :attr:`EMImage.dataset` and an
INFO log line say which one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

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


#: IMOD's header stamp; with flag bit 0 clear, mode-0 bytes are unsigned (as IMOD writes them).
_IMOD_STAMP = 1146047817
#: Old FEI/Thermo MRC extended header (1024 records of 128 bytes): pixel size (m) at byte 44.
_FEI_EXT_BYTES, _FEI_PIXEL_OFFSET = 128 * 1024, 44
_SPECTRAL_SIGNALS = ("EELS", "EDS", "CL")


@dataclass
class EMImage:
    """A 2-D EM image in its original dtype plus where its pixel size came from."""

    data: np.ndarray
    path: Path
    pixel_size_nm: float | None
    pixel_size_source: str  # "metadata" | "user" | "none"
    #: Which dataset of the file this is: its title (e.g. "HAADF") and, when the file holds
    #: several datasets, frames or pages, which one was taken; "" for a plain single image.
    dataset: str = ""

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
# Each returns a _Read and may raise anything; read_em_image turns failures into DataError.


class _Read(NamedTuple):
    data: np.ndarray
    pixel_nm: float | None
    dataset: str = ""


def _first_frame(path: Path, data: np.ndarray, what: str = "frame") -> tuple[np.ndarray, str]:
    """A stack is reduced to its first frame, never silently."""
    if data.ndim != 3:
        return data, ""
    log.info("%s: %d %ss, reading the first", path, data.shape[0], what)
    return data[0], f"{what} 1 of {data.shape[0]}"


def _read_cv2(path: Path) -> _Read:
    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise DataError(path, "OpenCV could not decode the image (corrupt or unsupported)")
    return _Read(to_gray(data, "bgr"), None)


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


def _tiff_vendor_nm(tif: Any, width: int) -> float | None:
    """FEI/Thermo and Zeiss SEM calibrations, read from the same fields as RosettaSciIO."""
    fei = getattr(tif, "fei_metadata", None) or {}
    scan, beam, image = (fei.get(k) or {} for k in ("Scan", "IRBeam", "Image"))
    if scan.get("PixelWidth"):
        return unit_to_nm(scan["PixelWidth"], "m")
    if beam.get("HFW") and image.get("ResolutionX"):  # ion-beam images: field width / pixels
        return unit_to_nm(float(beam["HFW"]) / float(image["ResolutionX"]), "m")
    escan = fei.get("EScan") or {}
    if escan.get("PixelWidth"):
        return unit_to_nm(escan["PixelWidth"], "m")
    sem = getattr(tif, "sem_metadata", None) or {}
    head = sem.get("") or ()
    # SmartSEM's unnamed header holds the pixel size (m) of a 1024 px wide store at index 3;
    # "Image Pixel Size" is the same value rounded to 4 digits, kept as a fallback.
    if len(head) > 3 and isinstance(head[3], (int, float)) and head[3] > 0 and width:
        return unit_to_nm(head[3] * 1024 / width, "m")
    entry = sem.get("ap_image_pixel_size")
    if isinstance(entry, (tuple, list)) and len(entry) >= 3:
        return unit_to_nm(entry[1], entry[2])
    return None


def _read_tiff(path: Path) -> _Read:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        dataset = f"page 1 of {len(tif.pages)}" if len(tif.pages) > 1 else ""
        if dataset:
            log.info("%s: %d pages, reading the first", path, len(tif.pages))
        data = page.asarray()
        data = to_gray(np.squeeze(data) if data.ndim > 3 else data, "rgb")
        ij = tif.imagej_metadata or {}
        pixel = _tiff_vendor_nm(tif, data.shape[1])
        if pixel is None:
            pixel = _tiff_resolution_nm(page, ij.get("unit") if ij else None)
    return _Read(data, pixel, dataset)


def _mrc_fei_pixel_nm(mrc: Any) -> float | None:
    """Pixel size from an old FEI/Thermo extended header (RosettaSciIO reads it the same way)."""
    if int(mrc.header.nsymbt) != _FEI_EXT_BYTES or bytes(mrc.header.exttyp) in (b"FEI1", b"FEI2"):
        return None
    raw = np.asarray(mrc.extended_header).tobytes()
    width_m = np.frombuffer(raw, mrc.header.dtype["cella"]["x"], 1, _FEI_PIXEL_OFFSET)[0]
    return unit_to_nm(float(width_m), "m") if width_m > 0 else None


def _read_mrc(path: Path) -> _Read:
    import mrcfile

    with mrcfile.open(path, permissive=False) as mrc:
        data = np.array(mrc.data)
        header = mrc.header
        volume = mrc.is_volume() or mrc.is_volume_stack()
        voxel_x = float(mrc.voxel_size.x)
        pixel = _mrc_fei_pixel_nm(mrc)
        stamp, flags = np.frombuffer(bytes(header.extra2)[40:48], header.dtype["nsymbt"])
    if int(header.mode) == 0 and not (stamp == _IMOD_STAMP and flags & 1):
        data = data.view(np.uint8)  # mode 0 as IMOD writes it (and RosettaSciIO reads it)
    if volume:
        raise DataError(path, f"MRC holds a {data.ndim}-D volume {data.shape}, not an image")
    data, dataset = _first_frame(path, np.squeeze(data))
    if pixel is None and voxel_x > 0:
        pixel = unit_to_nm(voxel_x, "Å")
    return _Read(data, pixel, dataset)


def _title(signal: dict) -> str:
    return str(((signal.get("metadata") or {}).get("General") or {}).get("title") or "")


def _image_view(signal: dict) -> tuple[np.ndarray, list[dict]] | None:
    """(data, axes) of an image or a stack of images (frames first), else None: spectra,
    spectrum images, complex FFT/DPC data and 4-D datasets are not images to detect on."""
    signal_type = str(((signal.get("metadata") or {}).get("Signal") or {}).get("signal_type")
                      or "").upper()
    if signal_type.startswith(_SPECTRAL_SIGNALS) or "SPECTRUM" in signal_type:
        return None
    data = np.asarray(signal["data"])
    axes = list(signal.get("axes") or [])
    if len(axes) != data.ndim:
        axes = [{} for _ in range(data.ndim)]
    elif all("index_in_array" in ax for ax in axes):
        axes.sort(key=lambda ax: ax["index_in_array"])
    keep = [i for i, n in enumerate(data.shape) if n > 1]
    data = data.reshape([data.shape[i] for i in keep])
    axes = [axes[i] for i in keep]
    energy = any(str(ax.get("units") or "").strip().lower().endswith("ev") for ax in axes)
    if data.ndim not in (2, 3) or energy or np.iscomplexobj(data):
        return None
    return data, axes


def _rsciio_pick_image(path: Path, signals: list[dict]) -> _Read:
    """The image among a file's datasets: HAADF where a STEM file holds several detectors,
    else the first image; of a stack, the first frame. Logged when there was a choice."""
    views = [(i, view) for i, sig in enumerate(signals) if (view := _image_view(sig))]
    if not views:
        shapes = [tuple(np.shape(s["data"])) for s in signals]
        raise DataError(path, f"no image among the datasets in the file (shapes {shapes}; "
                              "spectra and spectrum images are not read)")
    titles = [_title(s) for s in signals]
    index, (data, axes) = next(
        ((i, v) for i, v in views if "HAADF" in titles[i].upper()), views[0])
    parts = [titles[index]] if titles[index] else []
    if len(signals) > 1:
        names = ", ".join(t or "untitled" for t in titles)
        parts.append(f"dataset {index + 1} of {len(signals)} ({names})")
    data, frame = _first_frame(path, data)
    axes = axes[-2:]
    dataset = ", ".join(parts + ([frame] if frame else []))
    if len(signals) > 1:
        log.info("%s: reading %s", path, dataset)
    if data.dtype.names:  # DM RGB(A) images come as structured arrays
        data = to_gray(np.stack([data[c] for c in ("R", "G", "B")], axis=-1))
    y_axis, x_axis = axes
    pixel = unit_to_nm(x_axis.get("scale"), x_axis.get("units"))
    other = unit_to_nm(y_axis.get("scale"), y_axis.get("units"))
    if pixel and other and abs(other - pixel) > 0.01 * pixel:
        log.warning("%s: non-square pixels %.4g x %.4g nm; using x", path, pixel, other)
    return _Read(data, pixel, dataset)


def _rsciio_plugin(path: Path, module: str) -> Any:
    """A RosettaSciIO plugin, imported lazily because rsciio pulls in dask."""
    try:
        return __import__(f"rsciio.{module}", fromlist=["file_reader"])
    except ImportError as exc:
        raise DataError(
            path, f"reading {path.suffix} needs RosettaSciIO: pip install rosettasciio ({exc})"
        ) from None


def _rsciio_reader(module: str, **kwargs: Any) -> Callable[[Path], _Read]:
    def read(path: Path) -> _Read:
        plugin = _rsciio_plugin(path, module)
        return _rsciio_pick_image(path, plugin.file_reader(str(path), **kwargs))

    return read


def _read_emd(path: Path) -> _Read:
    """Velox or Berkeley (NCEM) EMD. ``select_type`` only concerns Velox; "images" skips the
    EDS spectrum stream, which is large and not an image."""
    plugin = _rsciio_plugin(path, "emd")
    try:
        signals = plugin.file_reader(str(path), select_type="images")
    except ModuleNotFoundError as exc:
        if "sparse" not in str(exc):
            raise
        signals = _velox_images_without_sparse(path)
    return _rsciio_pick_image(path, signals)


def _velox_images_without_sparse(path: Path) -> list[dict]:
    """RosettaSciIO 0.15 requires the optional `sparse` package for any Velox file with an EDS
    spectrum image, even when only its images are asked for, and raises after having read
    them; the images are taken from its reader object instead."""
    import h5py
    from rsciio.emd._emd_velox import FeiEMDReader

    reader = FeiEMDReader(select_type="images")
    with h5py.File(path, "r") as f:
        try:
            reader.read_file(f)
        except ModuleNotFoundError:
            log.debug("%s: EDS spectrum image skipped (no `sparse`)", path)
    return reader.dictionaries


_READERS: dict[str, Callable[[Path], _Read]] = {
    **dict.fromkeys((".png", ".jpg", ".jpeg", ".bmp"), _read_cv2),
    **dict.fromkeys((".tif", ".tiff"), _read_tiff),
    **dict.fromkeys((".mrc", ".mrcs", ".rec", ".st"), _read_mrc),
    **dict.fromkeys((".dm3", ".dm4"), _rsciio_reader("digitalmicrograph")),
    ".emd": _read_emd,
    ".ser": _rsciio_reader("tia"),
}
SUPPORTED_SUFFIXES: tuple[str, ...] = tuple(sorted(_READERS))


def read_em_image(path: str | Path, pixel_size_nm: float | None = None) -> EMImage:
    """Read one EM image as 2-D data in its original dtype with its pixel size.

    Pixel size precedence: file metadata, then ``pixel_size_nm`` ("user"), else None ("none").
    Of a file with several datasets or frames one image is read (``EMImage.dataset`` says
    which). Raises DataError for missing, unsupported, unreadable or image-less files.
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
        data, meta_nm, dataset = reader(path)
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
        return EMImage(data, path, float(meta_nm), "metadata", dataset)
    if pixel_size_nm is not None:
        return EMImage(data, path, float(pixel_size_nm), "user", dataset)
    return EMImage(data, path, None, "none", dataset)
