"""Find the images to process and read them one at a time, skipping (and recording) bad ones."""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from em_lightning.data.microscopy import SUPPORTED_SUFFIXES, EMImage, read_em_image
from em_lightning.data.transforms import normalize_em
from em_lightning.errors import InputNotFoundError

log = logging.getLogger(__name__)

__all__ = ["image_name", "list_inputs", "read_images"]


def list_inputs(spec: str) -> tuple[list[Path], Path]:
    """(files, root) for a folder (all supported images below it), a glob or one file.

    Files in a folder with other suffixes are ignored (a folder may hold notes or labels);
    files a glob names explicitly are all attempted, so a wrong type is reported, not ignored.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*")
                       if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)
        ignored = sum(1 for p in path.rglob("*") if p.is_file()) - len(files)
        if ignored:
            log.info("%s: ignoring %d files without an image suffix %s", path, ignored,
                     SUPPORTED_SUFFIXES)
        root = path
    elif path.is_file():
        files, root = [path], path.parent
    elif glob.has_magic(spec):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True)
                       if Path(p).is_file())
        root = Path(os.path.commonpath([p.parent for p in files])) if files else Path(".")
    else:
        raise InputNotFoundError(f"input={spec}: not a file, a folder or a matching glob")
    if not files:
        raise InputNotFoundError(f"input={spec}: no image files found (supported: "
                                f"{', '.join(SUPPORTED_SUFFIXES)})")
    return files, root


def image_name(path: Path, root: Path) -> str:
    """The image's name in tables and COCO files: its path relative to the input root."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.name


def read_images(files: Sequence[Path], pixel_size_nm: float | None, normalize: str,
                skipped: list[dict], on_skip: Callable[[], object] | None = None
                ) -> Iterator[tuple[EMImage, np.ndarray]]:
    """Yield (image, model input in [0, 255]) per readable file; unreadable files are appended
    to ``skipped`` as ``{"file", "reason"}``, logged and reported to ``on_skip``, and the
    rest continues."""
    for path in files:
        try:
            image = read_em_image(path, pixel_size_nm)
            gray = normalize_em(image.data, normalize)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped, not fatal
            reason = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
            skipped.append({"file": str(path), "reason": reason})
            log.warning("skipping %s", reason)
            if on_skip is not None:
                on_skip()
            continue
        yield image, gray
