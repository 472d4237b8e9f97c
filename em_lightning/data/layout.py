"""Check that a dataset folder holds the files of its format before anything reads it.

Why: a user's folder that lacks the expected files must stop the run with a message that says
what was expected, what is there and which setting to change; it must never be "repaired" by
generating demo data into it (the user's data is never written to).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from em_lightning.data.errors import DataError

#: what each ``data.format`` needs under ``data.root``, for messages
EXPECTED = {
    "coco": "annotations/{split}.json (COCO) and the images under images/",
    "dota": "dota/{split}/*.txt (one DOTA file per image) and the images in images/{split}/",
    "kitti": "kitti/{split}/*.txt (one LabelImg-KITTI file per image) + kitti/{split}/classes.txt "
             "and the images in images/{split}/",
}
KITTI_CLASSES = "classes.txt"
MAX_LISTED = 12


def kitti_classes_file(root: Path, label_dir: Path) -> Path | None:
    """``classes.txt`` of a KITTI split: in the split folder, else ``kitti/``, else the root."""
    for folder in (label_dir, label_dir.parent, root):
        if (folder / KITTI_CLASSES).is_file():
            return folder / KITTI_CLASSES
    return None


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:  # an absolute ann_file or image folder elsewhere
        return str(path)


def _listing(folder: Path, pattern: str = "*") -> list[str]:
    if not folder.is_dir():
        return []
    names = sorted(p.relative_to(folder).as_posix() + ("/" if p.is_dir() else "")
                   for p in folder.glob(pattern) if not p.name.startswith("."))
    return names[:MAX_LISTED] + ([f"... ({len(names) - MAX_LISTED} more)"]
                                 if len(names) > MAX_LISTED else [])


def _found(root: Path) -> str:
    names = _listing(root)
    return "the folder is empty" if not names else f"it contains {', '.join(names)}"


def _hints(root: Path, fmt: str, split: str) -> list[str]:
    """Settings that would make this folder load, guessed from what it contains."""
    hints = []
    jsons = [p.name for p in sorted((root / "annotations").glob("*.json"))]
    matching = [n for n in jsons if split in n]
    if matching and fmt == "coco":
        pattern = matching[0].replace(split, "{split}", 1)
        hints.append(f"found annotations/{matching[0]}: pass "
                     f"\"data.dataset.ann_file='annotations/{pattern}'\"")
    for other in ("dota", "kitti"):
        if other != fmt and (root / other).is_dir():
            hints.append(f"found {other}/: pass data.format={other}")
    if fmt != "coco" and jsons:
        hints.append(f"found annotations/{jsons[0]}: pass data.format=coco")
    return hints


def _missing_root(root: Path) -> DataError:
    parent = root.parent
    close = difflib.get_close_matches(root.name, [p.name for p in parent.iterdir()
                                                  if p.is_dir()], n=1) if parent.is_dir() else []
    hint = f"; did you mean data.root={parent / close[0]}?" if close else ""
    return DataError(root, f"data.root: folder not found{hint}")


def check_layout(root: str | Path, dataset_cfg: dict[str, Any], split: str) -> None:
    """Raise :class:`DataError` unless ``root`` holds split ``split`` in the configured format.

    ``dataset_cfg`` is the datamodule's dataset config with ``{split}`` already filled in
    (``ann_file``, ``data_prefix.img`` and, for rotated data, ``ann_format``).
    """
    root = Path(root)
    if not root.is_dir():
        raise _missing_root(root)
    fmt = str(dataset_cfg.get("ann_format", "coco"))
    ann = root / str(dataset_cfg.get("ann_file", ""))
    images = root / str((dataset_cfg.get("data_prefix") or {}).get("img", ""))
    problem = None
    if fmt == "coco" and not ann.is_file():
        problem = f"{_rel(ann, root)} not found"
    elif fmt in ("dota", "kitti") and not ann.is_dir():
        problem = f"{_rel(ann, root)}/ not found"
    elif fmt in ("dota", "kitti") and not any(ann.glob("*.txt")):
        problem = f"{_rel(ann, root)}/ has no .txt label files"
    elif fmt == "kitti" and kitti_classes_file(root, ann) is None:
        problem = (f"{_rel(ann, root)}/{KITTI_CLASSES} not found (one class name per "
                   f"line, line i = class index i; also accepted in kitti/ or the root)")
    elif not images.is_dir():
        problem = f"image folder {_rel(images, root)}/ not found"
    if problem is None:
        return
    expected = EXPECTED.get(fmt, "").format(split=split)
    hints = _hints(root, fmt, split)
    raise DataError(root, f"no data.format={fmt} dataset for split '{split}': {problem}. "
                          f"Expected {expected}; {_found(root)}"
                          + "".join(f"\n  hint: {h}" for h in hints))


def check_output_outside(output: str | Path, data_folder: str | Path, key: str) -> None:
    """Refuse an output folder inside the user's data folder (the tool never writes there)."""
    out, data = Path(output).expanduser().resolve(), Path(data_folder).expanduser().resolve()
    if out == data or data in out.parents:
        from em_lightning.errors import ConfigError

        raise ConfigError(key, f"{output} is inside the data folder {data_folder}; the tool "
                               "never writes into your data: choose an output folder elsewhere")
