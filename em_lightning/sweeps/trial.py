"""What ``em_lightning.train.main`` does differently when it runs as one trial of a sweep."""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from em_lightning.sweeps.space import override_values, read_space


class NonFiniteMetricError(RuntimeError):
    """The optimized metric of a trial is missing or NaN/inf.

    Raised instead of returning NaN: hydra-optuna-sweeper 1.3.0 passes a NaN to
    ``study.tell``, which optuna 2.10 rejects, and its fallback ``tell(FAIL, values=[nan])``
    raises again, ending the whole sweep. An exception is recorded as one failed trial.
    """


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def trial_number(output_dir: str | Path, job_num: int) -> int:
    """Trial directories are named by Optuna trial number (also after a resume)."""
    name = Path(output_dir).name
    return int(name) if name.isdigit() else int(job_num)


def sampled_params(overrides: list[str], space: Mapping[str, Any] | None) -> dict[str, Any]:
    """The trial's values of the searched keys (all overrides when the space is unknown)."""
    values = override_values(overrides)
    return values if space is None else {k: v for k, v in values.items() if k in space}


def sweep_group(task_name: str, sweep_dir: str | Path) -> str:
    """W&B group of all trials of one sweep (W&B allows 128 characters)."""
    return f"{task_name}-sweep-{Path(sweep_dir).name}"[:128]


def prepare_trial(cfg: DictConfig) -> None:
    """Per-trial setup: a usable start method for data-loader workers, and the W&B run joins
    the sweep (see :func:`join_wandb_group`)."""
    restore_start_method()
    join_wandb_group(cfg)


def restore_start_method() -> None:
    """In a joblib (loky) worker the default multiprocessing start method is ``loky``, whose
    processes torch's DataLoader cannot start (``'Process' object has no attribute 'env'``):
    go back to the platform default, which plain runs use."""
    if (multiprocessing.get_start_method(allow_none=True) or "").startswith("loky"):
        multiprocessing.set_start_method(multiprocessing.get_all_start_methods()[0], force=True)


def join_wandb_group(cfg: DictConfig) -> None:
    """Make the trial's W&B run part of its sweep: group, ``trial-<n>`` name, sampled values as
    run config (searchable and comparable in W&B's sweep/parallel-coordinates views)."""
    hydra_cfg = HydraConfig.get()
    wandb = (cfg.get("logger") or {}).get("wandb")
    if not wandb:
        return
    sweep_dir = hydra_cfg.sweep.dir
    overrides = list(hydra_cfg.overrides.task)
    params = sampled_params(overrides, read_space(sweep_dir))
    nested = OmegaConf.create()
    for key, value in params.items():
        OmegaConf.update(nested, key.lstrip("+"), value, force_add=True)
    number = trial_number(hydra_cfg.runtime.output_dir, hydra_cfg.job.num)
    with open_dict(cfg):
        wandb.group = sweep_group(cfg.task_name, sweep_dir)
        wandb.name = f"trial-{number}"
        wandb.config = OmegaConf.to_container(nested)
        wandb._convert_ = "all"  # wandb.init wants a plain dict, not a DictConfig


def trial_value(metrics: Mapping[str, Any], name: str) -> float:
    """The trial's objective; raises :class:`NonFiniteMetricError` if it is missing or NaN."""
    try:
        value = float(metrics.get(name))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        known = ", ".join(sorted(k for k in metrics if k.startswith("val/"))[:8])
        raise NonFiniteMetricError(f"optimized metric {name!r} is {metrics.get(name)!r} "
                                   f"(val metrics: {known or 'none'})")
    return value
