"""What a run needs to be reproduced: package versions, git commit, dataset fingerprint."""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import subprocess
from collections.abc import Iterable
from pathlib import Path

PACKAGES = ("em_lightning", "torch", "torchvision", "mmcv", "mmengine", "mmdet", "mmrotate",
            "pytorch-lightning", "hydra-core", "omegaconf", "pycocotools", "numpy", "wandb")


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit(path: str | Path = ".") -> dict[str, str | bool | None]:
    """Commit hash and whether the work tree had uncommitted changes (None outside git)."""
    def run(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=path, capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def fingerprint_files(paths: Iterable[str | Path]) -> str:
    """SHA-256 over the sorted files' names and bytes: same data, same fingerprint."""
    digest = hashlib.sha256()
    for path in sorted({Path(p) for p in paths}):
        digest.update(path.name.encode())
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def dataset_files(dataset: object) -> list[Path]:
    """Annotation file(s) and image files an mmengine dataset reads."""
    files: list[Path] = []
    ann = Path(getattr(dataset, "ann_file", "") or "")
    if ann.is_file():
        files.append(ann)
    elif ann.is_dir():
        files.extend(p for p in ann.iterdir() if p.is_file())
    for i in range(len(dataset)):  # type: ignore[arg-type]
        files.append(Path(dataset.get_data_info(i)["img_path"]))  # type: ignore[attr-defined]
    return files
