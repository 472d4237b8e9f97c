"""What a predict output folder already holds: fingerprints, settings and per-image records.

Why: a run over 10,000 images must survive a crash or a scheduler's time limit. Each image's
results are written as it finishes (:mod:`em_lightning.inference.parts`), and a small record in
``<output>/manifest/`` says which file they came from. Re-running the same command skips the
images whose record still matches their file and redoes the rest; a run with other settings
into the same folder is refused, so old and new results never mix.

* **File fingerprint**: size, mtime (ns) and the SHA-256 of the first and last MiB (of the whole
  file when it is at most 2 MiB). Size and mtime catch ordinary edits; the hash catches a file
  replaced by another of the same size with its time preserved (``cp -p``, a restore). A copy
  without preserved times counts as changed and is redone, the safe side. Reading 2 MiB costs
  little next to predicting a large image; small images are hashed whole.
* **Settings fingerprint**: everything that changes an image's results: the checkpoint's content
  (size + first/last MiB; a torch checkpoint ends in a zip directory holding every tensor's
  CRC, so this identifies the weights, wherever the file lies), ``score_thr``, ``scale``,
  ``tile.*``, ``pixel_size_nm``, ``overlays``, the task, the model's detector and test-time
  augmentation, and the data's classes, scope and test pipeline. Not in it: ``device`` and
  ``batch_size`` (how, not what), ``input`` (new images can be added to a folder and only they
  are processed), ``shard`` and the settings of the final tables and report (``exclude_border``,
  ``seed``, ``report_overlays``, ``export*``), which ``report_only=true`` may change.
* **Records** (``manifest/<key>.json``) are written last, after the image's parts, each through
  a temporary file and ``os.replace`` (fsynced first): a killed process leaves at worst a stray
  ``*.tmp-*`` file, never a record that points to a half-written part. A record also stores the
  byte size of its parts, checked before they are trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from em_lightning.errors import ConfigError, InputNotFoundError

__all__ = ["MANIFEST_DIR", "Manifest", "atomic_write", "file_fingerprint", "image_key",
           "prediction_settings"]

MANIFEST_DIR = "manifest"
SETTINGS_FILE = "settings.json"
CHUNK = 1 << 20  # 1 MiB
VERSION = 1  # of the record layout; a record of another version is redone


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """``{"size", "mtime_ns", "sha256"}`` of a file (see the module docstring)."""
    path = Path(path)
    stat = path.stat()
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        if stat.st_size <= 2 * CHUNK:
            digest.update(fh.read())
        else:
            digest.update(fh.read(CHUNK))
            fh.seek(-CHUNK, os.SEEK_END)
            digest.update(fh.read(CHUNK))
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest.hexdigest()}


def _content_fingerprint(path: str | Path) -> dict[str, Any]:
    """A file's fingerprint without its time: the same bytes anywhere are the same file."""
    fp = file_fingerprint(path)
    return {"size": fp["size"], "sha256": fp["sha256"]}


def prediction_settings(cfg: DictConfig) -> dict[str, Any]:
    """The resolved settings that change an image's results (listed in the module docstring)."""
    def plain(key: str) -> Any:
        value = OmegaConf.select(cfg, key, default=None)
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) \
            else value

    ckpt = Path(str(cfg.ckpt_path)).expanduser()
    if not ckpt.is_file():
        raise InputNotFoundError(f"{ckpt}: checkpoint file not found (ckpt_path)")
    return {
        "checkpoint": _content_fingerprint(ckpt),
        "task": str(cfg.task_name),
        "score_thr": float(cfg.score_thr),
        "scale": float(cfg.scale),
        "tile": plain("tile"),
        "pixel_size_nm": plain("pixel_size_nm"),
        "overlays": bool(cfg.overlays),
        "model.detector": plain("model.detector"),
        "model.test_time_aug": plain("model.test_time_aug"),
        "model.test_time_aug_iou": plain("model.test_time_aug_iou"),
        "data.classes": plain("data.classes"),
        "data.scope": plain("data.scope"),
        "data.test_pipeline": plain("data.test_pipeline"),
    }


def settings_hash(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()
                          ).hexdigest()[:16]


def _differences(old: Any, new: Any, key: str = "") -> list[str]:
    """Dotted keys whose values differ, with both values (short)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += _differences(old.get(k), new.get(k), f"{key}.{k}" if key else str(k))
        return out
    if old == new:
        return []
    if key.startswith("checkpoint"):
        return ["checkpoint (other weights)"]
    return [f"{key}: {json.dumps(old)[:60]} -> {json.dumps(new)[:60]}"]


def atomic_write(path: Path, write: Callable[[Path], object]) -> int:
    """Call ``write(tmp)``, fsync ``tmp`` and rename it to ``path``; returns the byte size.

    The rename is atomic, so ``path`` is either absent, the old file or the complete new one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        size = tmp.stat().st_size
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return size


def write_json(path: Path, data: Any, indent: int | None = None) -> int:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=indent)))


def image_key(name: str) -> str:
    """A file-name-safe, unique key for an image name (its path relative to the input)."""
    flat = re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace("/", "__"))[-80:]
    return f"{flat}-{hashlib.sha1(name.encode()).hexdigest()[:10]}"


class Manifest:
    """The records of one output folder (``<output>/manifest/``)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.dir = self.out_dir / MANIFEST_DIR

    def record_path(self, name: str) -> Path:
        return self.dir / f"{image_key(name)}.json"

    def claim(self, settings: Mapping[str, Any]) -> str:
        """Check that this folder's results were made with ``settings`` (or that it has none),
        record them, and return their hash; :class:`ConfigError` naming ``output`` otherwise."""
        digest = settings_hash(settings)
        path = self.dir / SETTINGS_FILE
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("hash") == digest:
                return digest
            if any(p.name != SETTINGS_FILE for p in self.dir.glob("*.json")):
                diffs = _differences(saved.get("settings", {}), dict(settings))
                raise ConfigError(
                    "output", f"{self.out_dir} holds results made with other settings "
                    f"({'; '.join(diffs) or 'another settings version'}); resuming would mix "
                    "them. Use a new output= folder, or delete "
                    f"{self.dir} and {self.out_dir / 'parts'} to start over")
        write_json(path, {"hash": digest, "settings": dict(settings)}, indent=1)
        return digest

    def write(self, name: str, record: dict[str, Any]) -> None:
        write_json(self.record_path(name), {"version": VERSION, "name": name, **record})

    def read(self, name: str) -> dict[str, Any] | None:
        """The record of an image, or None when there is none or it cannot be read."""
        path = self.record_path(name)
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("version") != VERSION \
                or record.get("name") != name:
            return None
        return record

    def count(self) -> int:
        """Records written so far (finished and failed images)."""
        return sum(1 for p in self.dir.glob("*.json") if p.name != SETTINGS_FILE)
