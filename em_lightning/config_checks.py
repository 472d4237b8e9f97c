"""Check the settings of a run before anything is built, naming the key that is wrong.

Why: a bad value (``data.batch_size=0``, ``model.optimizer.lr=-1``, a probability of 2) otherwise
fails minutes later deep inside torch, mmdet or Lightning, in words that do not name the
setting. Each rule here is a dotted key and a test of its value; keys a config lacks are
skipped, so one table serves train, evaluate, predict and analyze.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from em_lightning.errors import ConfigError

Check = Callable[[Any], str | None]
_ABSENT = object()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def positive_int(value: Any) -> str | None:
    return None if _is_int(value) and value >= 1 else "must be a whole number >= 1"


def non_negative_int(value: Any) -> str | None:
    return None if _is_int(value) and value >= 0 else "must be a whole number >= 0"


def positive(value: Any) -> str | None:
    return None if _is_number(value) and value > 0 else "must be a number > 0"


def non_negative(value: Any) -> str | None:
    return None if _is_number(value) and value >= 0 else "must be a number >= 0"


def unit_interval(value: Any) -> str | None:
    return None if _is_number(value) and 0 <= value <= 1 else "must be a number in [0, 1]"


def optional(check: Check) -> Check:
    """``check``, with null allowed."""
    return lambda value: None if value is None else check(value)


def max_epochs(value: Any) -> str | None:
    if _is_int(value) and (value >= 1 or value == -1):
        return None
    return "must be a whole number >= 1 (or -1: no limit, stop by trainer.max_time)"


def scale_range(value: Any) -> str | None:
    if (isinstance(value, list | tuple) and len(value) == 2 and all(map(_is_number, value))
            and 0 < value[0] <= value[1]):
        return None
    return "must be [low, high] with 0 < low <= high (e.g. [0.8, 1.25])"


def tile_size(value: Any) -> str | None:
    if value is None or value == 0 or (_is_int(value) and value >= 32):
        return None
    return "must be a whole number of pixels >= 32, or null / 0 (never tile)"


def flag(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def shard(value: Any) -> str | None:
    """``i/K`` with 0 <= i < K (predict's share of the images: j % K == i)."""
    parts = str(value).split("/")
    if len(parts) == 2 and all(p.isdigit() for p in parts) and int(parts[0]) < int(parts[1]):
        return None
    return "must be i/K with 0 <= i < K, e.g. shard=0/4 (or null: all images)"


def one_of(*allowed: str) -> Check:
    return lambda value: None if value in allowed else f"must be one of {list(allowed)}"


def splits(value: Any) -> str | None:
    allowed = ("val", "train", "test")
    if isinstance(value, list | tuple) and value and all(v in allowed for v in value):
        return None
    return f"must be a non-empty list of {list(allowed)}, e.g. 'splits=[val,train]'"


COMMON: dict[str, Check] = {
    "data.batch_size": positive_int,
    "data.val_batch_size": optional(positive_int),
    "data.num_workers": non_negative_int,
    "data.image_size": positive_int,
    "data.crop_size": positive_int,
    "data.augment.flip_prob": unit_interval,
    "data.augment.transpose_prob": unit_interval,
    "data.augment.rotate_prob": unit_interval,
    "data.augment.scale_range": scale_range,
    "data.augment.brightness": non_negative,
    "data.augment.contrast": non_negative,
    "data.augment.gamma": non_negative,
    "data.augment.noise_std": non_negative,
    "model.test_time_aug": one_of("none", "flip", "d4"),
    "model.test_time_aug_iou": unit_interval,
}
TRAIN: dict[str, Check] = {
    "model.optimizer.lr": positive,
    "model.optimizer.weight_decay": non_negative,
    "model.optimizer.momentum": unit_interval,
    "model.scheduler.policy": one_of("step", "cosine", "constant"),
    "model.scheduler.warmup_steps": non_negative,
    "model.scheduler.warmup_ratio": unit_interval,
    "model.scheduler.gamma": positive,
    "trainer.max_epochs": max_epochs,
    "trainer.check_val_every_n_epoch": optional(positive_int),
    "trainer.log_every_n_steps": positive_int,
    "trainer.gradient_clip_val": optional(non_negative),
    "trainer.accumulate_grad_batches": positive_int,
}
PREDICT: dict[str, Check] = {
    "pixel_size_nm": optional(positive),
    "score_thr": unit_interval,
    "scale": positive,
    "tile.size": tile_size,
    "tile.overlap": non_negative_int,
    "tile.margin": non_negative_int,
    "tile.merge_iou": unit_interval,
    "batch_size": positive_int,
    "report_overlays": optional(non_negative_int),
    "report_only": flag,
    "shard": optional(shard),
}
EVALUATE: dict[str, Check] = {"splits": splits, "score_thr": unit_interval}
ANALYZE: dict[str, Check] = {"pixel_size_nm": optional(positive),
                             "score_thr": optional(unit_interval)}
RULES = {"train": {**COMMON, **TRAIN}, "evaluate": {**COMMON, **EVALUATE},
         "predict": {**COMMON, **PREDICT}, "analyze": {**COMMON, **ANALYZE},
         "export": COMMON}
REQUIRED = {
    "evaluate": {"ckpt_path": "the checkpoint to evaluate, e.g. "
                              "ckpt_path=outputs/vesicles/runs/<time>/checkpoints/last.ckpt"},
    "predict": {"ckpt_path": "the trained checkpoint, e.g. "
                             "ckpt_path=outputs/vesicles/runs/<time>/checkpoints/last.ckpt",
                "input": "the images: a folder, a quoted glob ('imgs/*.tif') or one file"},
    "export": {"ckpt_path": "the checkpoint to export, e.g. "
                            "ckpt_path=outputs/vesicles/runs/<time>/checkpoints/last.ckpt",
               "output": "the model file to write, e.g. output=vesicles.pt"},
}
#: detector thresholds (anywhere under model.detector) that are fractions or IoUs
DETECTOR_FRACTIONS = frozenset({"score_thr", "iou_threshold", "pos_iou_thr", "neg_iou_thr",
                                "min_pos_iou", "pos_fraction", "mask_thr_binary"})
DETECTOR_COUNTS = frozenset({"max_per_img", "nms_pre", "num"})


def _select(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _leaves(node: Any, prefix: str) -> Iterator[tuple[str, str, Any]]:
    """(dotted key, last key, value) of every leaf of a plain nested dict/list."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}.{key}") if isinstance(value, dict | list) \
                else [(f"{prefix}.{key}", str(key), value)]
    elif isinstance(node, list):
        for i, value in enumerate(node):
            if isinstance(value, dict):
                yield from _leaves(value, f"{prefix}[{i}]")


def _check_detector(cfg: DictConfig) -> None:
    detector = _select(cfg, "model.detector")
    if not isinstance(detector, dict):
        return
    for key, name, value in _leaves(detector, "model.detector"):
        if name in DETECTOR_FRACTIONS and value is not None:
            values = value if isinstance(value, list | tuple) else [value]
            if not all(_is_number(v) and 0 <= v <= 1 for v in values):
                raise ConfigError(key, f"must be a number in [0, 1], got {value!r}")
        if name in DETECTOR_COUNTS and value is not None and not (
                _is_int(value) and (value >= 1 or value == -1)):
            raise ConfigError(key, f"must be a whole number >= 1, got {value!r}")


def _check_format(cfg: DictConfig) -> None:
    """``data.format`` first: every dataset path interpolates it (a bad one fails resolving)."""
    formats = OmegaConf.select(cfg, "data.formats", default=None)
    fmt = OmegaConf.select(cfg, "data.format", default=None)
    if formats is not None and fmt not in formats:
        raise ConfigError("data.format", f"must be one of {list(formats)}, got {fmt!r}")


def check_config(cfg: DictConfig, entry: str) -> None:
    """Raise :class:`ConfigError` naming the first setting of ``entry``'s run that is wrong."""
    for key, what in REQUIRED.get(entry, {}).items():
        if OmegaConf.is_missing(cfg, key):
            raise ConfigError(key, f"is required: {what}")
    _check_format(cfg)
    for key, check in RULES[entry].items():
        value = _select(cfg, key)
        if value is _ABSENT:
            continue
        problem = check(value)
        if problem:
            raise ConfigError(key, f"{problem}, got {value!r}")
    _check_detector(cfg)
