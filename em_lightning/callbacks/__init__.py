"""Lightning callbacks: run record (provenance) and prediction overlays."""

from em_lightning.callbacks.overlays import PredictionOverlays
from em_lightning.callbacks.run_record import RunRecord

__all__ = ["PredictionOverlays", "RunRecord"]
