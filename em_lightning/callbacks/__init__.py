"""Lightning callbacks: run record (provenance), prediction overlays, short-epoch logging."""

from em_lightning.callbacks.log_interval import ShortEpochLogging
from em_lightning.callbacks.overlays import PredictionOverlays
from em_lightning.callbacks.run_record import RunRecord

__all__ = ["PredictionOverlays", "RunRecord", "ShortEpochLogging"]
