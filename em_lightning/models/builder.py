"""Build an mmdet/mmrotate detector from a plain config dict and load local weights into it."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from em_lightning.registry import scope as openmmlab_scope

log = logging.getLogger(__name__)


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


def load_checkpoint_file(path: str | Path) -> dict:
    """Read a local checkpoint (torchvision, mmcls, mmdet or Lightning) as a state dict."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(ckpt, dict):
        for key in ("state_dict", "model", "model_state"):
            if key in ckpt and isinstance(ckpt[key], dict):
                return ckpt[key]
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: not a state dict or checkpoint (got {type(ckpt).__name__})")
    return ckpt


def load_backbone_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Load ImageNet backbone weights (torchvision ``conv1.weight``/``fc`` or mmcls
    ``backbone.conv1.weight`` naming) into ``model.backbone``; returns missing keys."""
    state = load_checkpoint_file(path)
    if any(k.startswith("backbone.") for k in state):
        state = _strip_prefix(state, "backbone.")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    result = model.backbone.load_state_dict(state, strict=False)
    loaded = len(state) - len(result.unexpected_keys)
    if loaded == 0:
        raise ValueError(f"{path}: no tensor matched the backbone; is it a ResNet checkpoint?")
    log.info("Loaded %d backbone tensors from %s (%d missing, %d unexpected)", loaded, path,
             len(result.missing_keys), len(result.unexpected_keys))
    return list(result.missing_keys)


def load_detector_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Load a full mmdet/mmrotate (or em_lightning) checkpoint; heads whose shape differs
    (another number of classes) are skipped with a log line, as fine-tuning needs."""
    state = load_checkpoint_file(path)
    if any(k.startswith("detector.") for k in state):
        state = _strip_prefix(state, "detector.")
    own = model.state_dict()
    shape_mismatch = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    state = {k: v for k, v in state.items() if k not in shape_mismatch}
    result = model.load_state_dict(state, strict=False)
    if not set(state) - set(result.unexpected_keys):
        raise ValueError(f"{path}: no tensor matched the detector")
    log.info("Loaded detector weights from %s; skipped (shape differs): %s; missing: %d",
             path, shape_mismatch or "none", len(result.missing_keys))
    return list(result.missing_keys)
