"""Log every training step when an epoch has fewer steps than ``log_every_n_steps``.

Lightning logs a step only when the step count is a multiple of ``log_every_n_steps``: with
fewer batches per epoch than that (a small dataset, ``experiment=tiny``) a short training
records no loss at all, in any logger.
"""

from __future__ import annotations

import logging
import math
import warnings

import pytorch_lightning as pl

log = logging.getLogger(__name__)


class ShortEpochLogging(pl.Callback):
    def __init__(self) -> None:
        # Lightning's advice (lower log_every_n_steps) for exactly the case handled here
        warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is "
                                r"smaller than the logging interval")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        batches = trainer.num_training_batches
        interval = trainer.log_every_n_steps
        if interval > 1 and isinstance(batches, int | float) and not math.isinf(batches) \
                and 0 < batches < interval:
            log.info("an epoch has %d training steps, fewer than log_every_n_steps=%d: "
                     "logging every step", batches, interval)
            trainer.log_every_n_steps = 1
