"""One image's results on disk as soon as it is done, and the dataset built from them.

Why: prediction keeps nothing per image in memory (memory stays flat over 10,000 images), and a
killed run loses at most the images in flight. Per finished image, in ``<output>/parts/``:

* ``<key>.parquet``: its objects table, exactly :func:`em_lightning.inference.results.measure`'s
  (the one record per object that predict and analyze share);
* ``<key>.coco.json``: its COCO results entries
  (:func:`em_lightning.inference.results.coco_entries`);

then its record in ``<output>/manifest/`` (:mod:`em_lightning.inference.manifest`). Image and
object ids are provisional in the parts; :class:`ResultStore.collect` numbers them 1..N in input
order when the tables are built, so a resumed, sharded or rebuilt run gives the same ids as one
uninterrupted run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from em_lightning.inference.manifest import Manifest, atomic_write, image_key, write_json
from em_lightning.inference.results import ImageInfo

log = logging.getLogger(__name__)

__all__ = ["PARTS_DIR", "Collected", "ResultStore"]

PARTS_DIR = "parts"


@dataclass
class Collected:
    """What the folder holds for the current input list, in input order."""

    images: list[ImageInfo] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)  # of ``images``, same order
    skipped: list[dict] = field(default_factory=list)  # {"file", "reason"}
    pending: list[str] = field(default_factory=list)  # files without a (current) result


class ResultStore:
    """Parts and manifest records of one output folder (layout in the module docstring)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.parts = self.out_dir / PARTS_DIR
        self.manifest = Manifest(self.out_dir)
        self.settings = ""

    def claim(self, settings: dict[str, Any]) -> None:
        """Refuse a folder holding results of other settings (see ``Manifest.claim``)."""
        self.settings = self.manifest.claim(settings)

    def _files(self, name: str) -> tuple[Path, Path]:
        key = image_key(name)
        return self.parts / f"{key}.parquet", self.parts / f"{key}.coco.json"

    def write_done(self, info: ImageInfo, objects: pd.DataFrame, coco: list[dict],
                   fingerprint: dict, **extra: Any) -> None:
        """Write an image's parts, then its record (the record makes them count)."""
        table_path, coco_path = self._files(info.name)
        sizes = {"parquet": atomic_write(table_path,
                                         lambda tmp: objects.to_parquet(tmp, index=False)),
                 "coco": write_json(coco_path, coco)}
        self.manifest.write(info.name, {
            "status": "done", "settings": self.settings, "fingerprint": fingerprint,
            "path": info.path, "height": info.height, "width": info.width,
            "pixel_size_nm": info.pixel_size_nm, "pixel_size_source": info.pixel_size_source,
            "n_objects": len(objects), "part_bytes": sizes, **extra})

    def write_failed(self, name: str, path: str, reason: str, fingerprint: dict | None) -> None:
        """Record an unreadable file (retried by the next run; listed as skipped)."""
        self.manifest.write(name, {"status": "failed", "settings": self.settings,
                                   "fingerprint": fingerprint, "path": path, "reason": reason})

    def record(self, name: str, fingerprint: dict | None) -> dict | None:
        """The current record of an image: same settings, same file, parts intact; else None."""
        record = self.manifest.read(name)
        if record is None or record.get("settings") != self.settings \
                or record.get("fingerprint") != fingerprint:
            return None
        if record.get("status") == "done":
            sizes = record.get("part_bytes") or {}
            for path, kind in zip(self._files(name), ("parquet", "coco")):
                try:
                    if path.stat().st_size != sizes.get(kind):
                        return None
                except OSError:
                    return None
        return record

    def is_done(self, name: str, fingerprint: dict | None) -> bool:
        record = self.record(name, fingerprint)
        return record is not None and record["status"] == "done"

    def collect(self, names: Sequence[str], paths: Sequence[Path],
                fingerprints: Sequence[dict | None]) -> Collected:
        """The images with current results, numbered 1..N in input order, the current
        failures and the files still to do (``paths``: where the files are now)."""
        out = Collected()
        for name, path, fp in zip(names, paths, fingerprints):
            record = self.record(name, fp)
            if record is None:
                out.pending.append(name)
            elif record["status"] == "failed":
                out.skipped.append({"file": str(path), "reason": record["reason"]})
            else:
                out.images.append(ImageInfo(len(out.images) + 1, name, str(path),
                                            record["height"], record["width"],
                                            record["pixel_size_nm"],
                                            record["pixel_size_source"]))
                out.records.append(record)
        return out

    def objects(self, images: Sequence[ImageInfo]) -> Iterator[pd.DataFrame]:
        """Each image's objects table with its final ``image_id``."""
        for info in images:
            table = pd.read_parquet(self._files(info.name)[0])
            table["image_id"] = info.id
            yield table

    def coco(self, images: Sequence[ImageInfo]) -> Iterator[dict]:
        """All COCO results entries with final ids (object ids 1..N in table order)."""
        next_id = 1
        for info in images:
            for entry in json.loads(self._files(info.name)[1].read_text()):
                entry["id"], entry["image_id"] = next_id, info.id
                next_id += 1
                yield entry

    def write_coco(self, images: Sequence[ImageInfo], path: Path) -> None:
        """``coco_results.json`` streamed from the parts (one image in memory at a time)."""
        def write(tmp: Path) -> None:
            with tmp.open("w") as fh:
                fh.write("[")
                for k, entry in enumerate(self.coco(images)):
                    fh.write((", " if k else "") + json.dumps(entry))
                fh.write("]")

        atomic_write(path, write)
