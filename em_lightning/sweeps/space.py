"""Which overrides of a sweep are sampled: the search space as the Optuna sweeper sees it."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

SPACE_FILE = "search_space.yaml"


def search_space(config: DictConfig) -> dict[str, str]:
    """``{key: spec}`` sampled by the sweep: ``hydra.sweeper.params`` and sweep-syntax overrides.

    Mirrors hydra-optuna-sweeper: command-line overrides come after ``params`` and a plain
    (non-sweep) override of the same key fixes that key, removing it from the space.
    """
    params = config.hydra.sweeper.get("params") or {}
    lines = [f"{key}={value}" for key, value in params.items()]
    lines += list(config.hydra.overrides.task)
    space: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(lines):
        key = override.get_key_element()
        if override.is_sweep_override():
            space[key] = override.input_line.split("=", 1)[1]
        else:
            space.pop(key, None)
    return space


def override_values(overrides: Iterable[str]) -> dict[str, Any]:
    """``{key: typed value}`` of concrete overrides (``a.b=[4,8]`` -> ``[4, 8]``); deletions
    (``~key``) are left out."""
    out: dict[str, Any] = {}
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        if not override.is_delete():
            out[override.get_key_element()] = override.value()
    return out


def write_space(sweep_dir: str | Path, space: dict[str, str]) -> Path:
    path = Path(sweep_dir) / SPACE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(space), path)
    return path


def read_space(sweep_dir: str | Path) -> dict[str, str] | None:
    """The space written at sweep start, or ``None`` (sweep started without SweepSummary)."""
    path = Path(sweep_dir) / SPACE_FILE
    if not path.is_file():
        return None
    return {str(k): str(v) for k, v in OmegaConf.load(path).items()}
