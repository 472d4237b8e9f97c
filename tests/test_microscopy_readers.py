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
        mrc.set_data(np.zeros((3, 8, 8), np.float32))
    with pytest.raises(DataError, match="3-D"):
        read_em_image(tmp_path / "stack.mrc")


# ----------------------------------------------------------------------------- RosettaSciIO


def _signal(data: np.ndarray, scale: float, units: str) -> dict:
    axes = [
        {"name": n, "size": s, "scale": scale, "offset": 0.0, "units": units, "navigate": False}
        for n, s in zip(("y", "x"), data.shape)
    ]
    return {
        "data": data,
        "axes": axes,
        "metadata": {"General": {"title": "t"}, "Signal": {"signal_type": ""}},
        "original_metadata": {},
    }


def test_emd_written_by_rsciio(tmp_path: Path) -> None:
    from rsciio.emd import file_writer

    data = _ramp(np.uint16, 4000, shape=(12, 10))
    file_writer(tmp_path / "img.emd", _signal(data, 0.0015, "µm"))
    img = read_em_image(tmp_path / "img.emd")
    assert img.pixel_size_nm == pytest.approx(1.5)
    assert img.pixel_size_source == "metadata"
    assert img.data.dtype == np.uint16
    np.testing.assert_array_equal(img.data, data)


@pytest.mark.parametrize(("suffix", "module"), [(".dm3", "digitalmicrograph"), (".ser", "tia")])
def test_dm_and_ser_dispatch_to_rsciio(tmp_path: Path, monkeypatch, suffix, module) -> None:
    import importlib

    plugin = importlib.import_module(f"rsciio.{module}")
    data = _ramp(np.float32, 1, shape=(8, 9))
    spectrum = {"data": np.zeros(50), "axes": [{"size": 50, "scale": 1, "units": "eV"}]}
    calls = []

    def fake_reader(filename, **kwargs):
        calls.append(filename)
        return [spectrum, _signal(data, 0.42, "nm")]

    monkeypatch.setattr(plugin, "file_reader", fake_reader)
    path = tmp_path / f"img{suffix}"
    path.write_bytes(b"stub")
    img = read_em_image(path)
    assert calls == [str(path)]
    assert (img.pixel_size_nm, img.pixel_size_source) == (0.42, "metadata")
    np.testing.assert_array_equal(img.data, data)

    monkeypatch.setattr(plugin, "file_reader", lambda f, **k: [_signal(data, 0.1, "1/nm")])
    assert read_em_image(path, 2.0).pixel_size_source == "user"  # diffraction: no real size


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
