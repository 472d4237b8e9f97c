"""Populate OpenMMLab's registries once: mmdet, mmrotate and em_lightning's own modules.

OpenMMLab resolves unprefixed ``type=`` names in the current default scope, and mmrotate's
registries do NOT fall back to mmdet's: mmdet code builds defaults like ``BboxOverlaps2D``
unprefixed. So every build happens inside :func:`scope` of its own library (``mmdet`` for Mask
R-CNN, ``mmrotate`` for rotated detectors), and em_lightning's modules are registered in both.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from em_lightning import compat

_DONE = False


def register_all_modules() -> None:
    """Idempotent: apply compat fixes, register mmdet + mmrotate + em_lightning modules."""
    global _DONE
    if _DONE:
        return
    compat.apply()
    from mmdet.utils import register_all_modules as register_mmdet
    from mmrotate.utils import register_all_modules as register_mmrotate

    register_mmdet(init_default_scope=False)
    register_mmrotate(init_default_scope=False)

    from em_lightning.data.datasets import register_datasets
    from em_lightning.data.transforms import register_transforms

    register_datasets()
    register_transforms()
    _DONE = True


@contextmanager
def scope(name: str) -> Iterator[None]:
    """Build OpenMMLab objects with ``name`` (``mmdet`` or ``mmrotate``) as default scope."""
    register_all_modules()
    from mmengine.registry import DefaultScope

    if name not in ("mmdet", "mmrotate"):
        raise ValueError(f"unknown OpenMMLab scope {name!r}; expected mmdet or mmrotate")
    with DefaultScope.overwrite_default_scope(name):
        yield
