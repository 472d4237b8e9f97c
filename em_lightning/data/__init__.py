"""Datasets, readers, converters and demo-data generators.

Heavy imports (Lightning, OpenMMLab) are deferred so the small CLIs here start fast.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "DetectionDataModule":
        from em_lightning.data.datamodule import DetectionDataModule

        return DetectionDataModule
    raise AttributeError(name)
