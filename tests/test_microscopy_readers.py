"""Readers return 2-D data in the original dtype, the pixel size and its provenance."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from em_lightning.data.errors import DataError
from em_lightning.data.microscopy import (
    normalize_to_float,
    read_em_image,
    to_gray,
    unit_to_nm,
)
from tests.em_fixtures import fei_tiff_tag, write_dm, write_ser, write_velox, zeiss_tiff_tag


def _ramp(dtype: type, hi: int, shape=(24, 32)) -> np.ndarray:
    return np.linspace(0, hi, num=shape[0] * shape[1]).reshape(shape).astype(dtype)


# ----------------------------------------------------------------------------- PNG / JPEG


def test_png_8_and_16_bit_keep_dtype_and_values(tmp_path: Path) -> None:
    for dtype, hi in ((np.uint8, 255), (np.uint16, 60000)):
        data = _ramp(dtype, hi)
        path = tmp_path / f"img_{np.dtype(dtype).name}.png"
        cv2.imwrite(str(path), data)
        img = read_em_image(path)
        assert img.data.dtype == dtype and img.data.shape == (24, 32)
        np.testing.assert_array_equal(img.data, data)
        assert (img.pixel_size_nm, img.pixel_size_source) == (None, "none")
    img = read_em_image(tmp_path / "img_uint16.png", pixel_size_nm=0.8)
    assert (img.pixel_size_nm, img.pixel_size_source) == (0.8, "user")


def test_rgb_png_and_jpeg_become_gray(tmp_path: Path) -> None:
    gray = _ramp(np.uint8, 250)
    cv2.imwrite(str(tmp_path / "gray_as_rgb.png"), np.dstack([gray] * 3))
    np.testing.assert_array_equal(read_em_image(tmp_path / "gray_as_rgb.png").data, gray)

    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., 2] = 200  # pure red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    img = read_em_image(tmp_path / "red.png")
    assert img.data.dtype == np.uint8 and img.data.shape == (4, 5)
    assert np.all(img.data == round(0.299 * 200))

    cv2.imwrite(str(tmp_path / "photo.jpg"), np.dstack([gray] * 3))
    jpg = read_em_image(tmp_path / "photo.jpg")
    assert jpg.data.shape == (24, 32) and jpg.data.dtype == np.uint8
    assert np.abs(jpg.data.astype(int) - gray).mean() < 3


# ----------------------------------------------------------------------------- TIFF


def test_tiff_imagej_calibration(tmp_path: Path) -> None:
    data = _ramp(np.uint16, 40000)
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.0025, 1 / 0.0025),
                     metadata={"unit": "micron"})  # fmt: skip
    img = read_em_image(path, pixel_size_nm=99.0)  # metadata beats the user value
    assert img.pixel_size_nm == pytest.approx(2.5)
    assert img.pixel_size_source == "metadata"
    np.testing.assert_array_equal(img.data, data)


@pytest.mark.parametrize(
    ("resolution", "unit", "expected"),
    [
        (1e7 / 1.25, "CENTIMETER", 1.25),  # 1.25 nm/px
        (1e3 / 4.0, "MICROMETER", 4.0),
        (72.0, "INCH", None),  # 72 dpi is a screen setting, not a calibration
        (1.0, "NONE", None),
    ],
)
def test_tiff_resolution_unit(tmp_path: Path, resolution, unit, expected) -> None:
    path = tmp_path / "res.tif"
    tifffile.imwrite(path, _ramp(np.uint8, 255), resolution=(resolution, resolution),
                     resolutionunit=unit)  # fmt: skip
    img = read_em_image(path)
    if expected is None:
        assert (img.pixel_size_nm, img.pixel_size_source) == (None, "none")
    else:
        assert img.pixel_size_nm == pytest.approx(expected, rel=1e-6)
        assert img.pixel_size_source == "metadata"


def test_tiff_float32_and_rgb(tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(size=(16, 20)).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tif", data)
    img = read_em_image(tmp_path / "f.tif")
    assert img.data.dtype == np.float32
    np.testing.assert_array_equal(img.data, data)

    rgb = np.zeros((6, 7, 3), np.uint16)
    rgb[..., 1] = 1000  # green in RGB order
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    gray = read_em_image(tmp_path / "rgb.tif").data
    assert gray.dtype == np.uint16 and np.all(gray == 587)


# ----------------------------------------------------------------------------- MRC


def test_mrc_voxel_size_in_angstrom(tmp_path: Path) -> None:
    import mrcfile

    data = np.random.default_rng(1).normal(size=(18, 22)).astype(np.float32)
    with mrcfile.new(tmp_path / "img.mrc") as mrc:
        mrc.set_data(data)
        mrc.voxel_size = 3.2  # Å
    img = read_em_image(tmp_path / "img.mrc")
    assert img.pixel_size_nm == pytest.approx(0.32)
    assert img.pixel_size_source == "metadata"
    np.testing.assert_array_equal(img.data, data)

    with mrcfile.new(tmp_path / "uncalibrated.mrc") as mrc:
        mrc.set_data(data)  # voxel size 0 = not set
    assert read_em_image(tmp_path / "uncalibrated.mrc", 1.1).pixel_size_source == "user"

    with mrcfile.new(tmp_path / "stack.mrc") as mrc:
        mrc.set_data(np.zeros((3, 8, 8), np.float32))  # a volume (space group 1), not a stack
    with pytest.raises(DataError, match="3-D volume"):
        read_em_image(tmp_path / "stack.mrc")


# ----------------------------------------------------------------------------- vs RosettaSciIO
# Every format is read back with rsciio's own reader from the same file; shape, dtype, pixel
# values and the pixel size (converted with pint, not with the project's unit table) must agree.


def _rsciio_signals(module: str, path: Path, **kwargs) -> list[dict]:
    import importlib

    return importlib.import_module(f"rsciio.{module}").file_reader(str(path), **kwargs)


def _reference_nm(signal: dict) -> float | None:
    """Pixel width (last array axis) of an rsciio signal in nm; None when uncalibrated."""
    import pint

    axes = signal["axes"]
    if all("index_in_array" in ax for ax in axes):
        axes = sorted(axes, key=lambda ax: ax["index_in_array"])
    x_axis = axes[-1]
    if not x_axis.get("units"):
        return None
    try:
        return pint.UnitRegistry().Quantity(float(x_axis["scale"]), x_axis["units"]).m_as("nm")
    except (pint.errors.UndefinedUnitError, pint.errors.DimensionalityError):
        return None


def _assert_like_rsciio(img, signal: dict, frame: int | None = None) -> None:
    ref = np.asarray(signal["data"])
    ref = ref[frame] if frame is not None else ref
    assert img.data.shape == ref.shape and img.data.dtype == ref.dtype
    np.testing.assert_array_equal(img.data, ref)
    expected = _reference_nm(signal)
    if expected is None:
        assert (img.pixel_size_nm, img.pixel_size_source) == (None, "none")
    else:
        assert img.pixel_size_nm == pytest.approx(expected, rel=1e-6)
        assert img.pixel_size_source == "metadata"


def _by_title(signals: list[dict], title: str) -> dict:
    return next(s for s in signals if s["metadata"]["General"].get("title") == title)


# Velox EMD -----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [7, 11])
def test_velox_emd_multi_detector_reads_haadf(tmp_path: Path, version: int) -> None:
    rng = np.random.default_rng(2)
    images = {n: rng.integers(0, 65535, (20, 24), dtype=np.uint16) for n in ("BF", "HAADF", "DF2")}
    path = write_velox(tmp_path / "stem.emd", images, pixel_size_m=7.5e-12, version=version)
    signals = _rsciio_signals("emd", path, select_type="images")
    assert [s["metadata"]["General"]["title"] for s in signals] == ["BF", "HAADF", "DF2"]
    img = read_em_image(path, pixel_size_nm=3.0)
    _assert_like_rsciio(img, _by_title(signals, "HAADF"))
    assert img.pixel_size_nm == pytest.approx(0.0075)
    np.testing.assert_array_equal(img.data, images["HAADF"])
    assert img.dataset == "HAADF, dataset 2 of 3 (BF, HAADF, DF2)"


def test_velox_emd_single_detector_and_frame_stack(tmp_path: Path, caplog) -> None:
    frames = np.arange(3 * 16 * 12, dtype=np.uint16).reshape(3, 16, 12)
    path = write_velox(tmp_path / "one.emd", {"DF4": frames[0]}, pixel_size_m=2.5e-10)
    img = read_em_image(path)
    _assert_like_rsciio(img, _rsciio_signals("emd", path, select_type="images")[0])
    assert (img.pixel_size_nm, img.dataset) == (pytest.approx(0.25), "DF4")

    path = write_velox(tmp_path / "series.emd", {"HAADF": frames}, pixel_size_m=1.2e-9)
    (signal,) = _rsciio_signals("emd", path, select_type="images")
    assert np.shape(signal["data"]) == (3, 16, 12)
    with caplog.at_level("INFO", logger="em_lightning.data.microscopy"):
        img = read_em_image(path)
    _assert_like_rsciio(img, signal, frame=0)
    assert img.dataset == "HAADF, frame 1 of 3"
    assert "3 frames, reading the first" in caplog.text


def test_velox_emd_with_eds_spectrum_image_reads_its_image(tmp_path: Path) -> None:
    import importlib.util

    haadf = np.arange(16 * 12, dtype=np.uint16).reshape(16, 12)
    path = write_velox(tmp_path / "eds.emd", {"HAADF": haadf}, 4e-10, spectrum_image=True)
    if importlib.util.find_spec("sparse") is None:  # rsciio 0.15 wants it even for images only
        with pytest.raises(ModuleNotFoundError, match="sparse"):
            _rsciio_signals("emd", path, select_type="images")
    reference = write_velox(tmp_path / "same_without_eds.emd", {"HAADF": haadf}, 4e-10)
    img = read_em_image(path)
    _assert_like_rsciio(img, _rsciio_signals("emd", reference, select_type="images")[0])
    assert img.pixel_size_nm == pytest.approx(0.4)


# Berkeley (NCEM) EMD -------------------------------------------------------------------------


def _signal(data: np.ndarray, scale: float, units: str) -> dict:
    axes = [
        {"name": n, "size": s, "scale": scale, "offset": 0.0, "units": units, "navigate": False}
        for n, s in zip(("y", "x"), data.shape)
    ]
    return {"data": data, "axes": axes, "original_metadata": {},
            "metadata": {"General": {"title": "t"}, "Signal": {"signal_type": ""}}}


def test_ncem_emd_written_by_rsciio(tmp_path: Path) -> None:
    from rsciio.emd import file_writer

    data = _ramp(np.uint16, 4000, shape=(12, 10))
    file_writer(tmp_path / "img.emd", _signal(data, 0.0015, "µm"))
    img = read_em_image(tmp_path / "img.emd")
    _assert_like_rsciio(img, _rsciio_signals("emd", tmp_path / "img.emd")[0])
    assert img.pixel_size_nm == pytest.approx(1.5)


# Gatan DM3 / DM4 -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", [3, 4])
def test_dm_image_matches_rsciio(tmp_path: Path, version: int) -> None:
    data = np.random.default_rng(version).integers(0, 4000, (14, 18)).astype(np.uint16)
    path = write_dm(tmp_path / f"img.dm{version}", data, 0.125, "nm", version=version)
    (signal,) = _rsciio_signals("digitalmicrograph", path)  # the thumbnail is not a dataset
    img = read_em_image(path)
    _assert_like_rsciio(img, signal)
    assert (img.pixel_size_nm, img.dataset) == (0.125, "HAADF")


@pytest.mark.parametrize("version", [3, 4])
def test_dm_spectrum_and_image_stack_pick_first_frame(tmp_path: Path, version: int) -> None:
    stack = np.random.default_rng(5).random((3, 10, 12)).astype(np.float32)
    path = write_dm(tmp_path / f"doc.dm{version}", stack, 0.002, "µm", version=version,
                    name="Survey", spectrum=np.linspace(0, 1, 40))
    signals = _rsciio_signals("digitalmicrograph", path)
    assert [s["metadata"]["General"]["title"] for s in signals] == ["EELS Spectrum", "Survey"]
    img = read_em_image(path)
    _assert_like_rsciio(img, signals[1], frame=0)
    assert img.pixel_size_nm == pytest.approx(2.0)
    assert img.dataset == "Survey, dataset 2 of 2 (EELS Spectrum, Survey), frame 1 of 3"


def test_dm_uncalibrated_and_spectrum_only(tmp_path: Path) -> None:
    data = _ramp(np.int16, 3000, shape=(8, 6))
    path = write_dm(tmp_path / "raw.dm3", data, 1.0, "")
    img = read_em_image(path)
    _assert_like_rsciio(img, _rsciio_signals("digitalmicrograph", path)[0])
    assert (img.pixel_size_nm, img.pixel_size_source) == (None, "none")
    assert read_em_image(path, pixel_size_nm=0.5).pixel_size_source == "user"

    path = write_dm(tmp_path / "spectrum.dm4", np.zeros(50, np.float32), 0.5, "eV", version=4)
    with pytest.raises(DataError, match="no image among the datasets"):
        read_em_image(path)


# TIA SER -------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [0x0210, 0x0220])
def test_ser_image_and_series_match_rsciio(tmp_path: Path, version: int) -> None:
    frames = np.random.default_rng(7).integers(0, 30000, (2, 12, 9)).astype(np.int16)
    path = write_ser(tmp_path / "one_1.ser", frames[0], 3.5e-10, version=version)
    img = read_em_image(path)
    _assert_like_rsciio(img, _rsciio_signals("tia", path)[0])
    np.testing.assert_array_equal(img.data, frames[0])  # TIA's bottom-up rows, flipped back
    assert (img.pixel_size_nm, img.dataset) == (pytest.approx(0.35), "")

    path = write_ser(tmp_path / "series_1.ser", frames, 3.5e-10, version=version)
    img = read_em_image(path)
    _assert_like_rsciio(img, _rsciio_signals("tia", path)[0], frame=0)
    assert img.dataset == "frame 1 of 2"


# MRC -----------------------------------------------------------------------------------------


def test_mrc_matches_rsciio(tmp_path: Path) -> None:
    import mrcfile

    cases = {
        "float.mrc": (np.random.default_rng(1).normal(size=(18, 22)).astype(np.float32), 3.2),
        "bytes.mrc": (_ramp(np.int8, 127, shape=(6, 5)) - 3, 7.0),  # mode 0: IMOD's unsigned
        "counts.mrc": (_ramp(np.uint16, 60000, shape=(6, 5)), 0.0),  # voxel size 0: unset
    }
    for name, (data, voxel) in cases.items():
        with mrcfile.new(tmp_path / name) as mrc:
            mrc.set_data(data)
            mrc.voxel_size = voxel
        img, (signal,) = read_em_image(tmp_path / name), _rsciio_signals("mrc", tmp_path / name)
        if voxel:
            _assert_like_rsciio(img, signal)
        else:  # rsciio reports 0.0 nm for an unset voxel size: no calibration, not a size
            assert signal["axes"][-1]["scale"] == 0.0
            assert (img.pixel_size_nm, img.pixel_size_source) == (None, "none")
            np.testing.assert_array_equal(img.data, signal["data"])
    assert read_em_image(tmp_path / "bytes.mrc").data.dtype == np.uint8


def test_mrc_image_stack_and_fei_extended_header(tmp_path: Path) -> None:
    import mrcfile

    stack = np.random.default_rng(3).normal(size=(4, 10, 8)).astype(np.float32)
    with mrcfile.new(tmp_path / "movie.mrcs") as mrc:
        mrc.set_data(stack)
        mrc.set_image_stack()
        mrc.voxel_size = 1.06
    img = read_em_image(tmp_path / "movie.mrcs")
    _assert_like_rsciio(img, _rsciio_signals("mrc", tmp_path / "movie.mrcs")[0], frame=0)
    assert (img.pixel_size_nm, img.dataset) == (pytest.approx(0.106), "frame 1 of 4")

    extended = np.zeros((1024, 32), np.float32)  # old FEI layout: 1024 records of 128 bytes
    extended[0, 11] = 2.75e-10  # pixel size (m)
    with mrcfile.new(tmp_path / "fei.mrc") as mrc:
        mrc.set_data(stack[0])
        mrc.set_extended_header(extended.view(np.uint8).ravel())
    img = read_em_image(tmp_path / "fei.mrc")
    _assert_like_rsciio(img, _rsciio_signals("mrc", tmp_path / "fei.mrc")[0])
    assert img.pixel_size_nm == pytest.approx(0.275)


# TIFF ----------------------------------------------------------------------------------------


def _tiff_like_rsciio(path: Path, **kwargs):
    img = read_em_image(path)
    _assert_like_rsciio(img, _rsciio_signals("tiff", path, **kwargs)[0])
    return img


def test_tiff_plain_and_resolution_unit_match_rsciio(tmp_path: Path) -> None:
    data = _ramp(np.uint16, 50000, shape=(10, 14))
    tifffile.imwrite(tmp_path / "plain.tif", data)
    img = _tiff_like_rsciio(tmp_path / "plain.tif")
    assert (img.pixel_size_nm, img.pixel_size_source, img.dataset) == (None, "none", "")
    tifffile.imwrite(tmp_path / "cm.tif", data, resolution=(1e7 / 2.5, 1e7 / 2.5),
                     resolutionunit="CENTIMETER")  # fmt: skip
    # rsciio reads ResolutionUnit only when asked to (most programs write screen dpi there)
    img = _tiff_like_rsciio(tmp_path / "cm.tif", force_read_resolution=True)
    assert img.pixel_size_nm == pytest.approx(2.5)


def test_tiff_imagej_matches_rsciio(tmp_path: Path) -> None:
    data = _ramp(np.uint8, 255, shape=(9, 11))
    tifffile.imwrite(tmp_path / "um.tif", data, imagej=True, resolution=(1 / 0.004, 1 / 0.004),
                     metadata={"unit": "micron"})  # fmt: skip
    assert _tiff_like_rsciio(tmp_path / "um.tif").pixel_size_nm == pytest.approx(4.0)
    # rsciio keeps ImageJ's number but drops every unit other than "micron": compare the number
    tifffile.imwrite(tmp_path / "nm.tif", data, imagej=True, resolution=(1 / 0.8, 1 / 0.8),
                     metadata={"unit": "nm"})  # fmt: skip
    (signal,) = _rsciio_signals("tiff", tmp_path / "nm.tif")
    assert signal["axes"][-1]["units"] is None
    assert read_em_image(tmp_path / "nm.tif").pixel_size_nm == pytest.approx(
        signal["axes"][-1]["scale"])


def test_tiff_fei_and_zeiss_match_rsciio(tmp_path: Path) -> None:
    data = _ramp(np.uint8, 255, shape=(20, 30))
    tag = fei_tiff_tag(3.3e-9, width=30, height=16)  # 4 rows of data bar below the image
    tifffile.imwrite(tmp_path / "fei.tif", data, extratags=[tag])
    assert _tiff_like_rsciio(tmp_path / "fei.tif").pixel_size_nm == pytest.approx(3.3)

    ion = (34682, "s", 0, "[IRBeam]\r\nHFW=6e-07\r\nVFW=4e-07\r\n[Image]\r\nResolutionX=30\r\n"
           "ResolutionY=20\r\n", True)  # FIB image: no [Scan] section
    tifffile.imwrite(tmp_path / "fib.tif", data, extratags=[ion])
    assert _tiff_like_rsciio(tmp_path / "fib.tif").pixel_size_nm == pytest.approx(20.0)

    pixel_m = 2.2334567e-9  # SmartSEM rounds "Image Pixel Size" to 2.233 nm
    tifffile.imwrite(tmp_path / "zeiss.tif", data, extratags=[zeiss_tiff_tag(pixel_m, 30)])
    assert _tiff_like_rsciio(tmp_path / "zeiss.tif").pixel_size_nm == pytest.approx(2.2334567)


def test_tiff_multipage_reads_first_page(tmp_path: Path) -> None:
    pages = np.stack([_ramp(np.uint16, 100 * (i + 1), shape=(6, 7)) for i in range(3)])
    tifffile.imwrite(tmp_path / "pages.tif", pages, photometric="minisblack")
    img = read_em_image(tmp_path / "pages.tif")
    ref = _rsciio_signals("tiff", tmp_path / "pages.tif")[0]["data"]
    np.testing.assert_array_equal(img.data, ref[0])
    assert img.dataset == "page 1 of 3"


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif", ".dm3", ".dm4", ".emd", ".ser", ".mrc"])
def test_corrupt_files_raise_data_error(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"corrupt{suffix}"
    path.write_bytes(b"this is not an image" * 8)
    with pytest.raises(DataError) as info:
        read_em_image(path)
    assert info.value.path == str(path)
    assert "cannot read" in info.value.problem or "could not decode" in info.value.problem


def test_missing_and_unsupported_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        read_em_image(tmp_path / "nope.png")
    (tmp_path / "x.gif").write_bytes(b"GIF89a")
    with pytest.raises(DataError, match="unsupported image type"):
        read_em_image(tmp_path / "x.gif")


# ----------------------------------------------------------------------------- helpers


def test_normalize_to_float() -> None:
    u16 = np.array([[0, 1000, 65535]], np.uint16)
    np.testing.assert_allclose(normalize_to_float(u16), [[0, 1000 / 65535, 1]], rtol=1e-6)
    u8 = np.array([[0, 51, 255]], np.uint8)
    np.testing.assert_allclose(normalize_to_float(u8), [[0, 0.2, 1]], rtol=1e-6)
    i16 = np.array([[-32768, 0, 32767]], np.int16)
    np.testing.assert_allclose(normalize_to_float(i16), [[0, 32768 / 65535, 1]], rtol=1e-6)
    f = np.array([[-2.0, 0.0, 2.0, np.nan]])
    out = normalize_to_float(f)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0, 0.5, 1, 0]])
    assert not normalize_to_float(np.full((2, 2), 7.0)).any()


def test_unit_conversion_and_gray() -> None:
    assert unit_to_nm(2.0, "Å") == pytest.approx(0.2)
    assert unit_to_nm(0.5, "\\u00B5m") == pytest.approx(500)
    assert unit_to_nm(3e-10, "m") == pytest.approx(0.3)
    assert unit_to_nm(1.0, "1 / nm") is None and unit_to_nm(1.0, "<undefined>") is None
    assert to_gray(np.zeros((3, 4, 4), np.uint8)).shape == (3, 4)
