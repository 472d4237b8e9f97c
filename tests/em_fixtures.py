"""Writers for small microscope files in each vendor's real on-disk layout.

RosettaSciIO cannot write DM3/DM4, Velox EMD or TIA SER, so the reader tests build them here,
byte for byte as the acquisition programs lay them out (tag tree, HDF5 groups with JSON
metadata, binary header + offset tables). Only what the format defines is written; readers
are then compared with ``rsciio.<format>.file_reader`` on the same file.
"""

from __future__ import annotations

import json
import struct
import uuid
from pathlib import Path

import numpy as np

# ----------------------------------------------------------------------------- Gatan DM3/DM4

# Tag-tree encoding of simple values (DM type codes) and of image pixels (ImageData.DataType).
_DM_SIMPLE = {"short": 2, "long": 3, "ushort": 4, "ulong": 5, "float": 6, "double": 7, "bool": 8}
_DM_ARRAY_OF = {  # numpy dtype -> (array element type code, ImageData.DataType)
    np.dtype(np.int16): (2, 1),
    np.dtype(np.float32): (6, 2),
    np.dtype(np.uint8): (10, 6),
    np.dtype(np.int32): (3, 7),
    np.dtype(np.int8): (9, 9),
    np.dtype(np.uint16): (4, 10),
    np.dtype(np.uint32): (5, 11),
    np.dtype(np.float64): (7, 12),
}
_STRUCT_CODE = {2: "h", 3: "l", 4: "H", 5: "L", 6: "f", 7: "d", 8: "B"}


class _Tag:
    """One DM data tag: big-endian type description, little-endian payload."""

    def __init__(self, info: list[int], payload: bytes) -> None:
        self.info, self.payload = info, payload


def _simple(kind: str, value: float) -> _Tag:
    code = _DM_SIMPLE[kind]
    return _Tag([code], struct.pack("<" + _STRUCT_CODE[code], value))


def _string(text: str) -> _Tag:  # DM stores text as an array of UTF-16 code units
    codes = text.encode("utf-16-le")
    return _Tag([20, 4, len(codes) // 2], codes)


def _array(values: np.ndarray, element: int) -> _Tag:
    return _Tag([20, element, values.size], np.ascontiguousarray(values).tobytes())


def _dm_encode(name: str, value: object, version: int) -> bytes:
    """A named tag (data or group) in DM3 (32-bit sizes) or DM4 (64-bit sizes) layout."""
    q = ">Q" if version == 4 else ">L"
    head = struct.pack(">bH", 21 if isinstance(value, _Tag) else 20, len(name)) + name.encode()
    if isinstance(value, _Tag):
        body = b"%%%%" + struct.pack(q, len(value.info))
        body += b"".join(struct.pack(q, v) for v in value.info) + value.payload
    else:
        items = value.items() if isinstance(value, dict) else (("", v) for v in value)
        inner = b"".join(_dm_encode(k, v, version) for k, v in items)
        count = len(value)
        body = struct.pack(">BB", 0, 1) + struct.pack(q, count) + inner
    if version == 4:  # every DM4 tag carries the byte size of what follows
        head += struct.pack(">Q", len(body))
    return head + body


def _dm_image(data: np.ndarray, scales: list[float], units: list[str], name: str,
              data_type: int | None = None, element: int | None = None,
              tags: dict | None = None) -> dict:
    """ImageList entry; ``scales``/``units`` in DM's axis order (x, y, z, ...)."""
    if data_type is None:
        element, data_type = _DM_ARRAY_OF[data.dtype]
    dims = [{"Origin": _simple("float", 0.0), "Scale": _simple("float", s), "Units": _string(u)}
            for s, u in zip(scales, units)]
    return {
        "ImageData": {
            "Calibrations": {
                "Brightness": {"Origin": _simple("float", 0.0), "Scale": _simple("float", 1.0),
                               "Units": _string("")},
                "Dimension": dims,
                "DisplayCalibratedUnits": _simple("bool", 1),
            },
            "Data": _array(data, element),
            "DataType": _simple("ulong", data_type),
            "Dimensions": [_simple("ulong", n) for n in data.shape[::-1]],
            "PixelDepth": _simple("ulong", data.dtype.itemsize),
        },
        "ImageTags": tags if tags is not None else {},
        "Name": _string(name),
        "UniqueID": [_simple("ulong", 1000 + i) for i in range(4)],
    }


def write_dm(path: Path, data: np.ndarray, pixel_size: float, unit: str = "nm",
             version: int = 3, name: str = "HAADF", spectrum: np.ndarray | None = None) -> Path:
    """A DigitalMicrograph file as GMS saves it: ImageList[0] is the RGBA display thumbnail
    (listed under Thumbnails), then the image (2-D, or a 3-D stack z, y, x); ``spectrum``
    adds an EELS spectrum (eV axis) before the image, as a multi-signal document would."""
    thumb = np.full((8, 8), 0xFF808080, np.uint32).view(np.int32)
    images = [_dm_image(thumb, [1.0, 1.0], ["", ""], "thumbnail", data_type=23, element=3)]
    if spectrum is not None:
        images.append(_dm_image(spectrum.astype(np.float32), [0.25], ["eV"], "EELS Spectrum",
                                tags={"Meta Data": {"Signal": _string("EELS"),
                                                    "Format": _string("Spectrum")}}))
    n_space = min(data.ndim, 2)  # x, y calibrated; further axes (stack z) in plain indices
    images.append(_dm_image(data, [pixel_size] * n_space + [1.0] * (data.ndim - n_space),
                            [unit] * n_space + [""] * (data.ndim - n_space), name,
                            tags={"Microscope Info": {"Voltage": _simple("double", 200000.0),
                                                      "Illumination Mode": _string("STEM")}}))
    root = {
        "ApplicationBounds": _Tag([15, 0, 4] + [0, 3] * 4, struct.pack("<4l", 0, 0, 900, 1200)),
        "ImageList": images,
        "InImageMode": _simple("bool", 1),
        "Thumbnails": [{"ImageIndex": _simple("ulong", 0),
                        "SourceSize_Pixels": _Tag([15, 0, 2, 0, 3, 0, 3],
                                                  struct.pack("<2l", *(data.shape + (1,))[:2]))}],
    }
    q = ">Q" if version == 4 else ">L"
    inner = b"".join(_dm_encode(k, v, version) for k, v in root.items())
    tree = struct.pack(">BB", 1, 0) + struct.pack(q, len(root)) + inner
    tail = b"\0" * (16 if version == 4 else 8)
    header_size = 16 if version == 4 else 12
    total = header_size + len(tree) + len(tail)  # the header stores it less 24 (DM4) / 16 (DM3)
    blob = struct.pack(">L", version) + struct.pack(q, total - (24 if version == 4 else 16))
    blob += struct.pack(">L", 1)  # 1: tag payloads are little endian
    Path(path).write_bytes(blob + tree + tail)
    return Path(path)


# ----------------------------------------------------------------------------- TIA SER

_SER_DTYPE = {np.dtype(np.uint8): 1, np.dtype(np.uint16): 2, np.dtype(np.uint32): 3,
              np.dtype(np.int8): 4, np.dtype(np.int16): 5, np.dtype(np.int32): 6,
              np.dtype(np.float32): 7, np.dtype(np.float64): 8}


def write_ser(path: Path, frames: np.ndarray, pixel_size_m: float, version: int = 0x0220) -> Path:
    """A TIA ``.ser`` image series (one frame or several) as TIA writes it: header, one
    dimension record, data elements each followed by its time tag, then the offset tables.
    Rows are stored bottom-up (TIA's convention). ``version`` 0x0210 uses 32-bit offsets."""
    frames = np.asarray(frames)
    frames = frames[None] if frames.ndim == 2 else frames
    n, h, w = frames.shape
    wide = version > 0x0210
    off = "<Q" if wide else "<L"
    description, units = b"Number", b""
    dim = struct.pack("<Iddii", n, 0.0, 1.0, 0, len(description)) + description
    dim += struct.pack("<i", len(units)) + units
    head_len = (34 if wide else 30) + len(dim)
    elements, offsets, tag_offsets = b"", [], []
    for i, frame in enumerate(frames):
        offsets.append(head_len + len(elements))
        elements += struct.pack("<ddiddiHII", 0.0, pixel_size_m, 0, 0.0, pixel_size_m, 0,
                                _SER_DTYPE[frame.dtype], w, h)
        elements += np.ascontiguousarray(frame[::-1]).astype(frame.dtype.newbyteorder("<"))\
            .tobytes()
        tag_offsets.append(head_len + len(elements))
        elements += struct.pack("<HHI", 0x4152, 0, 1_700_000_000 + i)
    table_at = head_len + len(elements)
    header = struct.pack("<HHHIIII", 0x4949, 0x0197, version, 0x4122, 0x4152, n, n)
    header += struct.pack(off, table_at) + struct.pack("<I", 1)
    tables = b"".join(struct.pack(off, o) for o in offsets + tag_offsets)
    Path(path).write_bytes(header + dim + elements + tables)
    return Path(path)


# ----------------------------------------------------------------------------- Velox EMD


def _json_dataset(group, name: str, payload: dict) -> None:
    import h5py

    text = json.dumps(payload, indent=4).replace("/", "\\/") + "\n"
    group.create_dataset(name, data=np.array([text.encode()], dtype=object),
                         dtype=h5py.string_dtype("ascii"))


def _metadata_array(meta: dict, n_frames: int, size: int = 60000) -> np.ndarray:
    raw = np.frombuffer(json.dumps(meta, indent=4).encode(), np.uint8)
    out = np.zeros((size, n_frames), np.uint8)
    out[: raw.size, :] = raw[:, None]
    return out


def write_velox(path: Path, images: dict[str, np.ndarray], pixel_size_m: float,
                spectrum_image: bool = False, version: int = 7) -> Path:
    """A Velox EMD: ``images`` maps detector name -> (y, x) or (frames, y, x).

    Each image is ``/Data/Image/<uuid>/Data`` (y, x, frame; one chunk per frame) with a
    ``Metadata`` column of JSON bytes per frame (``BinaryResult`` holds the pixel size in m).
    Version 7 (Velox 2.x) links detector and data path in ``/Operations/StemInputOperation``
    and labels them in ``/Presentation/Displays/ImageDisplay``; version 11 (Velox 3.x) has no
    ``Operations``: the detector is ``BinaryResult.DetectorIndex`` into ``Detectors`` and the
    displays sit in ``/Displays``. ``spectrum_image`` adds the EDS ``SpectrumImage`` and
    ``SpectrumStream`` groups of a mapping acquisition."""
    import h5py

    names = list(images)
    keys = sorted(uuid.uuid4().hex for _ in names)  # h5py lists groups by name: keep order
    detectors = {f"Detector-{i}": {"DetectorName": n, "DetectorType": "ScanningDetector",
                                   "Inserted": "true", "Enabled": "true"}
                 for i, n in enumerate(names)}
    with h5py.File(path, "w") as f:
        _json_dataset(f, "Version", {"version": str(version), "format": "Velox"})
        _json_dataset(f, "Info", {"applicationVersion": "2.5.0.785" if version < 11 else "3.6"})
        stem = f.create_group("Operations/StemInputOperation") if version < 11 else None
        displays = f.create_group("Presentation/Displays/ImageDisplay" if version < 11
                                  else "Displays/ImageDisplay")
        for i, (name, key) in enumerate(zip(names, keys)):
            data = np.asarray(images[name])
            stack = data[None] if data.ndim == 2 else data
            n_frames, h, w = stack.shape
            meta = {
                "Core": {"MetadataDefinitionVersion": "7.9"},
                "Acquisition": {"AcquisitionStartDatetime": {"DateTime": "1565710322"}},
                "Optics": {"AccelerationVoltage": "300000"},
                "Scan": {"ScanSize": {"width": str(w), "height": str(h)}, "FrameTime": "1.5"},
                "Detectors": detectors,
                "BinaryResult": {
                    "DetectorIndex": str(i), "Detector": name,
                    "PixelSize": {"width": repr(pixel_size_m), "height": repr(pixel_size_m)},
                    "PixelUnitX": "m", "PixelUnitY": "m",
                    "Offset": {"x": repr(-w / 2 * pixel_size_m), "y": repr(-h / 2 * pixel_size_m)},
                    "Encoding": "",
                },
                "CustomProperties": {},
            }
            grp = f.create_group(f"Data/Image/{key}")
            grp.create_dataset("Data", data=np.moveaxis(stack, 0, -1), chunks=(h, w, 1))
            grp.create_dataset("Metadata", data=_metadata_array(meta, n_frames))
            if stem is not None:
                _json_dataset(stem, uuid.uuid4().hex, {
                    "dataPath": f"/Data/Image/{key}", "detector": name,
                    "detectorInfo": {"name": name, "segments": ""}})
            _json_dataset(displays, uuid.uuid4().hex, {
                "display": {"id": chr(97 + i), "label": name}, "dataPath": f"/Data/Image/{key}"})
        if stem is not None:
            _json_dataset(f["Operations"], "Operations", {"operations": [
                {"StemInputOperation": f"/Operations/StemInputOperation/{k}"} for k in stem]})
        if spectrum_image:
            si_key = uuid.uuid4().hex
            si = f.create_group(f"Data/SpectrumImage/{si_key}")
            _json_dataset(si, "SpectrumImageSettings", {"endFramePosition": "1"})
            stream = f.create_group(f"Data/SpectrumStream/{uuid.uuid4().hex}")
            stream.create_dataset("Data", data=np.full((16, 1), 65535, np.uint16))
            stream.create_dataset("Metadata", data=_metadata_array({"Detectors": detectors}, 1))
    return Path(path)


# ----------------------------------------------------------------------------- TIFF tags


def fei_tiff_tag(pixel_size_m: float, width: int, height: int) -> tuple:
    """``extratags`` entry: the FEI/Thermo SEM ``FEI_HELIOS`` INI text (tag 34682)."""
    text = "\r\n".join([
        "[User]", "Date=12/04/2026", "Time=09:15:02 AM", "User=user",
        "[Beam]", "HV=5000", "Spot=3", "[Scan]", "InternalScan=true",
        f"PixelWidth={pixel_size_m:.6e}", f"PixelHeight={pixel_size_m:.6e}",
        f"HorFieldsize={pixel_size_m * width:.6e}", f"VerFieldsize={pixel_size_m * height:.6e}",
        "[Image]", f"ResolutionX={width}", f"ResolutionY={height}", "DigitalContrast=1", "",
    ])
    return (34682, "s", 0, text, True)


def zeiss_tiff_tag(pixel_size_m: float, width: int) -> tuple:
    """``extratags`` entry: a Zeiss SmartSEM ``CZ_SEM`` text (tag 34118). Its unnamed header
    stores the pixel size for a 1024 px wide store at index 3; ``AP_IMAGE_PIXEL_SIZE`` the
    rounded pixel size of this image."""
    head = ["0", "0", "1", f"{pixel_size_m * width / 1024:.7e}".replace("E", "e"), "0"]
    named = ["AP_IMAGE_PIXEL_SIZE", f"Image Pixel Size = {pixel_size_m * 1e9:.4g} nm",
             "AP_WD", "WD = 5.1 mm", "DP_DETECTOR_TYPE", "Detector = InLens"]
    return (34118, "s", 0, "\r\n".join(head + named) + "\r\n", True)
