"""LightningModules around OpenMMLab detectors."""

from em_lightning.models.detector_module import DetectorModule

__all__ = ["DetectorModule"]
