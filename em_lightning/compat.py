"""Every OpenMMLab / torch compatibility fix, in one place, applied once by :func:`apply`.

Each fix is small, idempotent and has a test in ``tests/test_compat.py``:

* mmrotate 1.0.0rc1 does ``from collections import Sequence`` (removed in Python 3.10).
* mmengine 0.10.7 calls ``torch.load`` without ``weights_only=False``; torch >= 2.6 defaults to
  ``weights_only=True`` and refuses ordinary OpenMMLab checkpoints (they pickle numpy/metadata).
  We re-register mmengine's local/http checkpoint loaders through its own scheme registry.
* mmengine's ``BaseDataPreprocessor`` caches its device and only updates it in its own ``.to()``;
  Lightning moves modules through ``nn.Module._apply``, so batches would stay on the CPU while the
  model sits on the GPU. We make ``_apply`` update the cached device.
"""

from __future__ import annotations

import collections
import collections.abc
from typing import Any

import torch

_APPLIED = False


def fix_collections_sequence() -> None:
    """Give ``collections`` its pre-3.10 ``Sequence`` alias so mmrotate's models import."""
    if not hasattr(collections, "Sequence"):
        collections.Sequence = collections.abc.Sequence  # type: ignore[attr-defined]


def load_trusted_checkpoint(filename: str, map_location: Any = None, **_: Any) -> Any:
    """``torch.load`` for checkpoint files the user named explicitly (trusted, full pickle)."""
    return torch.load(filename, map_location=map_location, weights_only=False)


def fix_checkpoint_loading() -> None:
    """Route mmengine's local and http(s) checkpoint schemes through ``weights_only=False``."""
    from mmengine.runner.checkpoint import CheckpointLoader

    CheckpointLoader.register_scheme(prefixes="", force=True)(load_trusted_checkpoint)

    def load_from_url(filename: str, map_location: Any = None, model_dir: str | None = None,
                      **_: Any) -> Any:
        return torch.hub.load_state_dict_from_url(
            filename, model_dir=model_dir, map_location=map_location, weights_only=False)

    CheckpointLoader.register_scheme(prefixes=("http://", "https://"), force=True)(load_from_url)


def fix_preprocessor_device() -> None:
    """Keep ``BaseDataPreprocessor._device`` in sync when a parent module is moved."""
    from mmengine.model import BaseDataPreprocessor

    if getattr(BaseDataPreprocessor._apply, "_em_lightning_patched", False):
        return
    original_apply = BaseDataPreprocessor._apply

    def _apply(self: BaseDataPreprocessor, fn: Any, *args: Any, **kwargs: Any) -> Any:
        result = original_apply(self, fn, *args, **kwargs)
        # ``fn`` is the conversion nn.Module.to()/cuda()/cpu() applies to every tensor; applying
        # it to an empty probe tells the target device without knowing how it was called.
        probe = fn(torch.empty(0))
        if isinstance(probe, torch.Tensor):
            self._device = probe.device
        return result

    _apply._em_lightning_patched = True  # type: ignore[attr-defined]
    BaseDataPreprocessor._apply = _apply


def apply() -> None:
    """Apply every fix once; safe to call from every entry point and test."""
    global _APPLIED
    if _APPLIED:
        return
    fix_collections_sequence()
    fix_checkpoint_loading()
    fix_preprocessor_device()
    _APPLIED = True
