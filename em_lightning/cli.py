"""What every Hydra entry point does around its work: short errors and override suggestions.

Why: the project's own errors (bad data, image, annotation, checkpoint or setting) already say
what is wrong, which file or key, and what to do; printed below a 50-line traceback through
Lightning and mmengine they are hard to find. :func:`user_errors` prints them alone and exits
1 (``HYDRA_FULL_ERROR=1`` shows the traceback); any other exception keeps its traceback.
:func:`launch` adds "did you mean ...?" to Hydra's error for a misspelt override.
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from em_lightning.errors import UserError

log = logging.getLogger(__name__)
CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"
FULL_ERROR = "HYDRA_FULL_ERROR"
# entry points that build the model of a checkpoint: its recorded settings by default
FROM_CHECKPOINT = ("predict", "evaluate", "export")
# lines for the run's log, found by launch before Hydra set up logging (logged by user_errors)
_launch_notes: list[str] = []


class ReportedError(SystemExit):
    """Exit after a :class:`UserError` was printed (no override suggestions needed)."""


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _to_log_files(message: str) -> None:
    """Write ``message`` to the run's log file only (the console gets the short form)."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def error_message(err: UserError, entry: str) -> str:
    return (f"error: {err}\n"
            f"(python -m em_lightning.{entry} stopped before finishing; for the full traceback "
            f"run again with {FULL_ERROR}=1)")


def user_error_in(exc: BaseException | None) -> UserError | None:
    """``exc`` if it is a :class:`UserError`, else the one it wraps (Hydra's ``instantiate``
    wraps what a target raises: a bad checkpoint setting fails inside the model's build)."""
    while exc is not None and not isinstance(exc, UserError):
        exc = exc.__cause__
    return exc


def user_errors(entry: str) -> Callable[[Callable[[DictConfig], Any]], Callable]:
    """Decorate a Hydra task function: a :class:`UserError` becomes one message and exit 1.

    In a multirun (a sweep) the error is logged in one line and re-raised, so the sweeper
    records the failed trial and goes on.
    """
    def decorate(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
        @functools.wraps(task)
        def run(cfg: DictConfig) -> Any:
            while _launch_notes:
                log.info("%s", _launch_notes.pop(0))
            try:
                return task(cfg)
            except Exception as exc:
                err = user_error_in(exc)
                if err is None or os.environ.get(FULL_ERROR) == "1":
                    raise
                if in_multirun():
                    log.error("%s", err)
                    raise
                _to_log_files(f"stopped: {err}")
                print(error_message(err, entry), file=sys.stderr, flush=True)
                raise ReportedError(1) from None
        return run
    return decorate


def _flat_keys(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            yield path
            yield from _flat_keys(value, path)


def _config_groups() -> set[str]:
    return {p.name for p in CONFIG_DIR.iterdir() if p.is_dir()}


def suggest_overrides(config_name: str, overrides: list[str]) -> list[str]:
    """"did you mean ...?" lines for overrides whose key is not in the composed config."""
    from hydra import compose, initialize_config_dir

    groups = _config_groups()
    plain = [o for o in overrides if "=" in o and not o.startswith(("+", "~", "-"))]
    chosen = [o for o in plain if o.split("=", 1)[0] in groups]
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name, overrides=chosen)
    except Exception:  # noqa: BLE001 - a suggestion is a courtesy; Hydra's error stands
        return []
    keys = list(_flat_keys(OmegaConf.to_container(cfg, resolve=False)))
    existing = set(keys)  # also the required (???) ones, which a select() reports as absent
    known = keys + sorted(groups)
    lines = []
    for override in plain:
        key = override.split("=", 1)[0]
        if "/" in key or key in groups or key.startswith("hydra.") or key in existing:
            continue
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
        if close:
            lines.append(f"did you mean {close[0]}? ({key} is not a setting of "
                         f"em_lightning.{config_name}; `--help` lists the main ones)")
        else:
            lines.append(f"{key} is not a setting of em_lightning.{config_name}; `--cfg job` "
                         f"prints them all (prefix + to add a new key)")
    return lines


def _checkpoint_arg(overrides: list[str]) -> str | None:
    """The ``ckpt_path=`` of a command line (the last one), unquoted; None if absent."""
    values = [o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("ckpt_path=")]
    return values[-1].strip("'\"") if values and values[-1] not in ("", "null") else None


def with_checkpoint_settings(entry: str, overrides: list[str]) -> list[str]:
    """``overrides`` with the model settings the checkpoint records in front (the user's come
    last and win), when the command names ``ckpt_path=`` and no ``task=``.

    Raises :class:`UserError` for an unreadable checkpoint and for one without a record (a
    plain mmdet/mmrotate file: its task and model must be given)."""
    from em_lightning.errors import CheckpointError
    from em_lightning.models.builder import read_checkpoint
    from em_lightning.models.trained_config import (
        checkpoint_overrides,
        override_key,
        run_dir_overrides,
    )

    _launch_notes.clear()
    ckpt_path = _checkpoint_arg(overrides)
    if ckpt_path is None or "${" in ckpt_path or not Path(ckpt_path).expanduser().is_file() \
            or any(override_key(o) == "task" for o in overrides if "=" in o):
        return overrides  # (a missing file: the entry point's own checks say so in order)
    ckpt = read_checkpoint(ckpt_path)
    record = ckpt.get("em_lightning_record") if isinstance(ckpt, dict) else None
    if not (record or {}).get("config"):
        raise CheckpointError(f"{ckpt_path} records no training config: pass "
                              "task=vesicles|nanorods and the model overrides")
    older = ""
    if "overrides" not in record:
        found = run_dir_overrides(ckpt_path)
        if found is not None:
            record = {**record, "overrides": found}
            older = " (an older checkpoint: the training command from its run's .hydra/)"
        else:
            older = " (an older checkpoint: it records no training command, only its task)"
    replayed = checkpoint_overrides(record, entry, overrides)
    _launch_notes.append(f"model settings from {ckpt_path}: {' '.join(replayed)}{older}")
    return [*replayed, *overrides]


def launch(hydra_main: Callable[[], Any], config_name: str) -> None:
    """Run a ``@hydra.main`` function; on a failed start, suggest fixes for unknown keys.

    predict and evaluate first put the model settings a checkpoint records in front of the
    command line (:func:`with_checkpoint_settings`)."""
    if config_name in FROM_CHECKPOINT:
        try:
            sys.argv[1:] = with_checkpoint_settings(config_name, sys.argv[1:])
        except UserError as err:
            if os.environ.get(FULL_ERROR) == "1":
                raise
            print(error_message(err, config_name), file=sys.stderr, flush=True)
            raise ReportedError(1) from None
    try:
        hydra_main()
    except SystemExit as exc:
        if exc.code not in (0, None) and not isinstance(exc, ReportedError):
            for line in suggest_overrides(config_name, sys.argv[1:]):
                print(line, file=sys.stderr)
        raise
