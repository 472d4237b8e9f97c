"""Where and when the synthetic demo dataset may be written.

Why: the demo generator must never write into a user's folder. It runs only when ``data.root``
is the task's own demo folder (``data.demo_root``, under the project's ``data/`` by default) and
that folder does not yet hold a complete dataset. It writes into a temporary sibling folder and
renames it into place, so an interrupted generation never leaves a half dataset that is later
taken for whole.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from em_lightning.data.errors import DataError

log = logging.getLogger(__name__)
MARKER = ".em_lightning_demo"
COMPLETE = Path("annotations") / "train.json"


def is_demo_root(root: str | Path, demo_root: str | Path | None) -> bool:
    return demo_root is not None and Path(root).expanduser().resolve() == \
        Path(demo_root).expanduser().resolve()


def ensure_demo(root: str | Path, demo_root: str | Path | None,
                generate: Callable[[Path], Any] | None) -> bool:
    """Generate the demo dataset at ``root`` if it is the demo folder and incomplete.

    Returns True when it generated. Any other ``root`` is left untouched (False).
    """
    root = Path(root).expanduser()
    if generate is None or not is_demo_root(root, demo_root) or (root / COMPLETE).is_file():
        return False
    if root.is_dir() and any(root.iterdir()) and not (root / MARKER).exists():
        raise DataError(root, "data.demo_root: the folder exists but holds no complete demo "
                              "dataset and was not made by the demo generator; the tool does not "
                              "write into it. Move it away or set data.demo_root to a new folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    (tmp / MARKER).write_text("written by em_lightning's demo generator; safe to delete\n")
    log.info("no demo dataset under %s yet: generating it (once)", root)
    try:
        generate(tmp)
        if (root / COMPLETE).is_file():  # another process finished first
            return False
        if root.exists():  # an empty folder or an earlier interrupted attempt (has the marker)
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True
