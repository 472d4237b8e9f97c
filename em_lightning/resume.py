"""Resuming a training in its own run directory: ``ckpt_path=<run>/checkpoints/last.ckpt``.

A resumed training writes into the run directory of its checkpoint, not into a new one, so the
run keeps one story: one ``csv/metrics.csv``, one W&B run (resumed by id), and checkpoint
tracking that goes on (Lightning's ``ModelCheckpoint`` reloads its best score only when its
directory is the one stored in the checkpoint). Hydra picks the run directory before the task
code runs, hence the OmegaConf resolvers below, used in ``conf/hydra/default.yaml``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

# wandb names its run folders <wandb dir>/(offline-)run-<YYYYmmdd_HHMMSS>-<run id>
_WANDB_RUN_DIR = re.compile(r"^(?:offline-)?run-(?P<time>\d{8}_\d{6})-(?P<id>[A-Za-z0-9]+)$")


def continued_run_dir(ckpt_path: Any, train: Any = True) -> Path | None:
    """The run directory that a training from ``ckpt_path`` continues, else None.

    Only the last checkpoint of a run continues it (``<run>/checkpoints/last*.ckpt``):
    training on from an earlier one (``best-*.ckpt``) would overwrite the later history, so it
    starts a new run directory; so does evaluation only (``train=false``).
    """
    if not ckpt_path or not _as_bool(train):
        return None
    path = Path(str(ckpt_path)).expanduser()
    if path.parent.name != "checkpoints" or not path.name.startswith("last") \
            or path.suffix != ".ckpt" or not path.is_file():
        return None
    return path.parent.parent.resolve()


def continues_in_place(ckpt_path: Any, train: Any, output_dir: Any) -> bool:
    """The training resumes ``ckpt_path`` inside the checkpoint's own run directory."""
    run_dir = continued_run_dir(ckpt_path, train)
    return run_dir is not None and Path(str(output_dir)).resolve() == run_dir


def run_dir(ckpt_path: Any, train: Any, new_dir: str) -> str:
    """Hydra's ``run.dir``: the checkpoint's run directory when resuming, else ``new_dir``."""
    continued = continued_run_dir(ckpt_path, train)
    return str(continued) if continued is not None else new_dir


def config_subdir(ckpt_path: Any, train: Any, mode: Any, stamp: str) -> str:
    """Hydra's ``output_subdir``: a run resumed in place keeps the ``.hydra/`` files of its
    first start and stores those of each resume in ``.hydra/resume-<stamp>/`` (single runs
    only: a sweep job always has its own directory)."""
    single_run = getattr(mode, "name", str(mode)).upper() == "RUN"
    if single_run and continued_run_dir(ckpt_path, train) is not None:
        return f".hydra/resume-{stamp}"
    return ".hydra"


def wandb_run_id(run_dir: str | Path) -> str | None:
    """The id of the W&B run logged in ``run_dir`` (the newest, if there are several)."""
    found = sorted((m.group("time"), m.group("id")) for p in Path(run_dir).glob("wandb/*run-*")
                   if p.is_dir() and (m := _WANDB_RUN_DIR.match(p.name)))
    return found[-1][1] if found else None


def register_resolvers() -> None:
    """``em_run_dir`` and ``em_config_subdir`` for ``conf/hydra/default.yaml``."""
    for name, fn in (("em_run_dir", run_dir), ("em_config_subdir", config_subdir)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "0", "no", "null", "none")
    return bool(value)
