"""Build an mmdet/mmrotate detector from a plain config dict and load local weights into it."""

from __future__ import annotations

import copy
import logging
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from em_lightning.errors import CheckpointError, InputNotFoundError
from em_lightning.models.weights import resolve
from em_lightning.registry import scope as openmmlab_scope

log = logging.getLogger(__name__)

# class-dependent output layers of mmdet/mmrotate RoI heads (softmax classifier with the
# background last, per-class box regression, mask logits): their rows are class blocks, so they
# are remapped by class name, also when only the order of the classes differs
CLASS_HEAD_LAYERS = ("fc_cls", "fc_reg", "conv_logits")


def set_num_classes(cfg: Any, num_classes: int) -> Any:
    """Return a copy of a detector config with every ``num_classes`` field set (all heads)."""
    if isinstance(cfg, dict):
        return {k: (num_classes if k == "num_classes" else set_num_classes(v, num_classes))
                for k, v in cfg.items()}
    if isinstance(cfg, list | tuple):
        return type(cfg)(set_num_classes(v, num_classes) for v in cfg)
    return cfg


@contextmanager
def quiet_mmengine_logger(level: int = logging.WARNING) -> Iterator[None]:
    """Silence MMEngine's per-parameter init report (hundreds of INFO lines)."""
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    old = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)


def build_detector(cfg: dict, num_classes: int, scope: str = "mmdet") -> nn.Module:
    """Build the detector and run ``init_weights`` as MMEngine's Runner would.

    The config uses OpenMMLab's own model language (``type=...``); unprefixed types resolve in
    ``scope`` (mmdet or mmrotate), ``mmdet.`` / ``mmrotate.`` prefixes pick a library.
    """
    from mmengine.config import ConfigDict

    # ConfigDict: OpenMMLab heads read their train/test cfgs by attribute
    cfg = ConfigDict(set_num_classes(copy.deepcopy(cfg), num_classes))
    with openmmlab_scope(scope):
        from mmengine.registry import MODELS

        model = MODELS.build(cfg)
        with quiet_mmengine_logger():
            model.init_weights()
    return model


def _strip_prefix(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def read_checkpoint(path: str | Path) -> Any:
    """The whole checkpoint object (state dict plus whatever metadata it carries)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputNotFoundError(f"{path}: checkpoint file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError) as exc:  # truncated or not torch
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or another format: "
                         f"{exc})") from None


def state_dict_of(ckpt: Any, path: str | Path) -> dict:
    """The weights of a checkpoint object read from ``path`` (named in errors)."""
    if isinstance(ckpt, dict):
        for key in ("state_dict", "model", "model_state"):
            if key in ckpt and isinstance(ckpt[key], dict):
                return ckpt[key]
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a state dict or checkpoint (got {type(ckpt).__name__})")
    return ckpt


def load_checkpoint_file(path: str | Path) -> dict:
    """Read a local checkpoint (torchvision, mmcls, mmdet or Lightning) as a state dict."""
    return state_dict_of(read_checkpoint(path), path)


def recorded_config(ckpt: Any) -> dict | None:
    """The resolved training config an em_lightning checkpoint records (None for others)."""
    if not isinstance(ckpt, dict):
        return None
    return (ckpt.get("em_lightning_record") or {}).get("config")


def checkpoint_classes(ckpt: Any) -> list[str] | None:
    """Class names a checkpoint was trained on, in label order, where it records them:
    em_lightning (run record), MMEngine (``meta.dataset_meta.classes``), mmdet 2.x
    (``meta.CLASSES``); None otherwise."""
    if not isinstance(ckpt, dict):
        return None
    candidates = [((recorded_config(ckpt) or {}).get("model") or {}).get("classes")]
    meta = ckpt.get("meta") or {}
    candidates += [(meta.get("dataset_meta") or {}).get("classes"), meta.get("CLASSES")]
    for names in candidates:
        if isinstance(names, list | tuple) and names and all(isinstance(n, str) for n in names):
            return list(names)
    return None


def _class_rows(old_rows: int, new_rows: int, n_old: int, n_new: int) -> tuple[int, int] | None:
    """Layout of a class-dependent tensor's first axis: ``rows = block * n_classes + extra``
    (extra: 1 for the background score of a softmax classifier, else 0); None unless exactly
    one layout fits both shapes."""
    fits = [((old_rows - extra) // n_old, extra) for extra in (0, 1)
            if (old_rows - extra) % n_old == 0 and (new_rows - extra) % n_new == 0
            and (old_rows - extra) // n_old == (new_rows - extra) // n_new >= 1]
    return fits[0] if len(fits) == 1 else None


def _remap_classes(own: torch.Tensor, old: torch.Tensor, old_classes: list[str],
                   new_classes: list[str]) -> torch.Tensor | None:
    """Copy the rows of the classes both lists share (and the background row) from ``old``
    into a copy of ``own``; classes new to the model keep their fresh initialisation."""
    if own.shape[1:] != old.shape[1:]:
        return None
    layout = _class_rows(old.shape[0], own.shape[0], len(old_classes), len(new_classes))
    if layout is None:
        return None
    block, extra = layout
    out = own.clone()
    for j, name in enumerate(new_classes):
        if name in old_classes:
            i = old_classes.index(name)
            out[j * block:(j + 1) * block] = old[i * block:(i + 1) * block]
    if extra:
        out[-1] = old[-1]
    return out


def load_backbone_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Load ResNet backbone weights (torchvision ``conv1.weight``/``fc`` naming, also with
    DataParallel's ``module.``, mmcls or detector ``backbone.conv1.weight`` naming) into
    ``model.backbone``; returns missing keys."""
    state = load_checkpoint_file(path)
    if state and all(k.startswith("module.") for k in state):  # saved from nn.DataParallel
        state = _strip_prefix(state, "module.")
    if any(k.startswith("backbone.") for k in state):
        state = _strip_prefix(state, "backbone.")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    result = model.backbone.load_state_dict(state, strict=False)
    loaded = len(state) - len(result.unexpected_keys)
    if loaded == 0:
        raise CheckpointError(f"{path}: no tensor matched the backbone; is it a ResNet checkpoint?")
    log.info("Loaded %d backbone tensors from %s (%d missing, %d unexpected)", loaded, path,
             len(result.missing_keys), len(result.unexpected_keys))
    return list(result.missing_keys)


def load_detector_weights(model: nn.Module, path: str | Path,
                          classes: list[str] | None = None) -> list[str]:
    """Load a full mmdet/mmrotate (or em_lightning) checkpoint; returns the missing keys.

    With ``classes`` (the model's class names) and a checkpoint that records its own, the
    RoI head rows (``CLASS_HEAD_LAYERS``) of the classes both share are kept, so a model for a
    class group (``data.classes=[small_vesicle,hole]``) starts from what a model of all
    classes learnt about them. Other heads whose shape differs (unknown or unrelated classes)
    are skipped with a log line, as fine-tuning needs.
    """
    ckpt = read_checkpoint(path)
    state = state_dict_of(ckpt, path)
    if any(k.startswith("detector.") for k in state):
        state = _strip_prefix(state, "detector.")
    own = model.state_dict()
    old_classes = checkpoint_classes(ckpt)
    new_classes = list(classes or [])
    shared = [c for c in new_classes if c in (old_classes or [])]
    reorder = bool(shared) and old_classes != new_classes
    remapped: list[str] = []
    skipped: list[str] = []
    for key, value in list(state.items()):
        if key not in own:
            continue
        parts = key.split(".")
        is_head = len(parts) >= 2 and parts[-2] in CLASS_HEAD_LAYERS
        if own[key].shape == value.shape and not (reorder and is_head):
            continue
        mapped = None
        if shared and is_head and old_classes:
            mapped = _remap_classes(own[key], value, old_classes, new_classes)
        if mapped is None:
            skipped.append(key)
            del state[key]
        else:
            remapped.append(key)
            state[key] = mapped
    result = model.load_state_dict(state, strict=False)
    if not set(state) - set(result.unexpected_keys):
        raise CheckpointError(f"{path}: no tensor matched the detector")
    if remapped:
        log.info("Class heads of %s mapped from the checkpoint's classes %s: %s",
                 shared, old_classes, remapped)
    log.info("Loaded detector weights from %s; skipped (shape differs): %s; missing: %d",
             path, skipped or "none", len(result.missing_keys))
    return list(result.missing_keys)


def load_pretrained(model: nn.Module, detector_cfg: dict, scope: str,
                    backbone_checkpoint: str | None, load_from: str | None,
                    classes: list[str] | None = None) -> dict[str, dict]:
    """Resolve both settings (path, URL, scheme or preset, see :mod:`.weights`) to local files
    and load them; returns what was loaded, for the run record and metrics.json."""
    loaded = {}
    for setting, spec in (("backbone_checkpoint", backbone_checkpoint),
                          ("load_from", load_from)):
        weights = resolve(spec, f"model.{setting}", detector_cfg, scope)
        if weights.path is not None:
            if setting == "backbone_checkpoint":
                load_backbone_weights(model, weights.path)
            else:
                load_detector_weights(model, weights.path, classes)
        loaded[setting] = weights.record()
    return loaded
