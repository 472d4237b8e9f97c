"""Load a run's checkpoint under the config of predict/evaluate, checked against the config it
was trained with.

Every em_lightning checkpoint records its resolved training config. A checkpoint loaded with
other model overrides fails in ``load_state_dict`` with hundreds of tensor names; with the
record the error names the overrides to pass instead. Data settings that load fine but change
what the model sees (image scale, class list) only warn: evaluating at another scale is a
legitimate experiment, but by accident it quietly costs accuracy.

:func:`checkpoint_overrides` picks, from the training command a checkpoint records, the
overrides that rebuild its model: predict and evaluate put them in front of the user's own
when no ``task=`` is given, so ``ckpt_path=`` alone is enough.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from em_lightning.errors import CheckpointError
from em_lightning.models.builder import read_checkpoint, recorded_config, state_dict_of

log = logging.getLogger(__name__)

# detector settings free to change after training (test-time thresholds, losses, init)
_FREE_DETECTOR_KEYS = ("test_cfg", "train_cfg", "init_cfg")
_DATA_KEYS = ("classes", "image_size")
_MAX_LISTED = 12
# training overrides that decide the model or what it sees: config groups, the model's keys
# (less where its initial weights came from: the checkpoint replaces them) and these data keys
_REPLAYED_GROUPS = ("task", "experiment", "model", "data")
_REPLAYED_DATA = ("data.classes", "data.image_size", "data.crop_size", "data.test_pipeline")
_NOT_REPLAYED = ("model.backbone_checkpoint", "model.load_from")
# evaluate also scores on the dataset the model was trained on, unless given another
_EVALUATE_DATA = ("data.root", "data.format")


def override_key(override: str) -> str:
    """The dotted key of a Hydra override (``+a.b=1`` -> ``a.b``; ``model@x=y`` -> ``model``)."""
    return override.split("=", 1)[0].lstrip("+~").split("@", 1)[0]


def _replayed(key: str, entry: str) -> bool:
    if key in _NOT_REPLAYED or any(key.startswith(k + ".") for k in _NOT_REPLAYED):
        return False
    data_keys = _REPLAYED_DATA + (_EVALUATE_DATA if entry == "evaluate" else ())
    return key in _REPLAYED_GROUPS or key.startswith("model.") or \
        any(key == k or key.startswith(k + ".") for k in data_keys)


def run_overrides_file(ckpt_path: str | Path) -> Path:
    """Where Hydra kept the training command's overrides for a checkpoint in its run
    directory: ``<run>/checkpoints/x.ckpt`` -> ``<run>/.hydra/overrides.yaml``."""
    return Path(str(ckpt_path)).expanduser().parent.parent / ".hydra" / "overrides.yaml"


def run_dir_overrides(ckpt_path: str | Path) -> list[str] | None:
    """The training command's overrides kept by Hydra beside a checkpoint in its run
    directory (:func:`run_overrides_file`), for records older than their ``overrides``."""
    path = run_overrides_file(ckpt_path)
    if not path.is_file():
        return None
    loaded = OmegaConf.to_container(OmegaConf.load(path))
    return [str(o) for o in loaded] if isinstance(loaded, list) else None


def checkpoint_overrides(record: dict, entry: str, user_overrides: list[str]) -> list[str]:
    """The recorded training overrides that shape the model (for ``entry`` predict, evaluate
    or export), less those the user sets too (the user's win). A record without the training
    command (older checkpoints, outside their run directory) gives its task alone."""
    config = record.get("config") or {}
    recorded = record.get("overrides")
    if recorded is None:
        recorded = [f"task={config['task_name']}"] if config.get("task_name") else []
    recorded = [str(o) for o in recorded]
    mine = {override_key(o) for o in user_overrides if "=" in o and not o.startswith("-")}
    if "data.root" in mine:  # another dataset: its format is the user's to give
        mine.add("data.format")
    return [o for o in recorded if "=" in o and _replayed(override_key(o), entry)
            and override_key(o) not in mine]


def _flatten(node: Any, prefix: str) -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}.{key}"))
        return out
    return {prefix: node}


def _relevant(cfg: dict) -> dict[str, Any]:
    """The settings that decide whether, and how, trained weights fit: model architecture,
    class list, input scale (dotted keys, as Hydra overrides name them)."""
    model = cfg.get("model") or {}
    detector = {k: v for k, v in (model.get("detector") or {}).items()
                if k not in _FREE_DETECTOR_KEYS}
    out = {"model._target_": model.get("_target_"), "model.scope": model.get("scope")}
    out.update(_flatten(detector, "model.detector"))
    data = cfg.get("data") or {}
    out.update({f"data.{key}": data.get(key) for key in _DATA_KEYS})
    return out


def config_differences(trained: dict, current: dict) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (trained value, current value)}`` for the settings that differ."""
    old, new = _relevant(trained), _relevant(current)
    return {key: (old.get(key), new.get(key)) for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key)}


def as_override(key: str, value: Any) -> str:
    """``key=value`` in Hydra's override syntax (lists as ``[a,b]``, None as ``null``)."""
    if isinstance(value, list | tuple):
        text = "[" + ",".join(json.dumps(v) if not isinstance(v, str) else v for v in value) + "]"
    elif value is None:
        text = "null"
    elif isinstance(value, bool | int | float):
        text = json.dumps(value)
    else:
        text = str(value)
    return f"{key}={text}"


def _listing(diffs: dict[str, tuple[Any, Any]]) -> str:
    items = [as_override(key, old) for key, (old, _) in diffs.items()]
    more = len(items) - _MAX_LISTED
    return " ".join(items[:_MAX_LISTED]) + (f" (and {more} more)" if more > 0 else "")


def load_trained_weights(module: nn.Module, cfg: DictConfig) -> None:
    """Load ``cfg.ckpt_path`` into ``module`` (built from ``cfg.model``); a mismatch with the
    recorded training config is an error naming the overrides the checkpoint needs."""
    path = cfg.ckpt_path
    ckpt = read_checkpoint(path)
    trained = recorded_config(ckpt)
    diffs = {}
    if trained:
        current = {key: OmegaConf.to_container(cfg[key], resolve=True)
                   for key in ("model", "data")}
        diffs = config_differences(trained, current)
    try:
        module.load_state_dict(state_dict_of(ckpt, path))
    except RuntimeError as exc:
        if trained:
            hint = f"it was trained with task={trained.get('task_name')} " + _listing(diffs)
            now = [as_override(key, new) for key, (_, new) in diffs.items()
                   if key.startswith("model.")][:_MAX_LISTED]
            if now:
                hint += (f", this command has {' '.join(now)}: leave such model overrides out "
                         "(without task=, predict and evaluate take them from the checkpoint)")
            run_overrides = run_overrides_file(path)
            if run_overrides.is_file():
                hint += f"; the training command's overrides: {run_overrides}"
        else:
            hint = "pass the task/experiment/model overrides used for training"
        raise CheckpointError(
            f"{path}: checkpoint does not fit the model of task={cfg.get('task_name')} with "
            f"these overrides; {hint} ({str(exc).splitlines()[0]})") from None
    data_diffs = {k: v for k, v in diffs.items() if k.startswith("data.")}  # the rest fit
    if data_diffs:
        now = " ".join(as_override(key, new) for key, (_, new) in data_diffs.items())
        log.warning("%s was trained with %s but runs with %s: a model sees objects at the "
                    "scale it was trained on; pass the training values unless this is meant",
                    Path(str(path)).name, _listing(data_diffs), now)
