"""Optuna's random sampler with draws that depend only on (seed, trial number, parameter)."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import RandomSampler
from optuna.study import Study
from optuna.trial import FrozenTrial


class TrialSeededRandomSampler(RandomSampler):
    """``optuna.samplers.RandomSampler`` re-seeded for every (trial, parameter).

    The stock sampler draws from one stream, so a resumed sweep (a new process, same seed) would
    repeat the values of trials 0, 1, ... and a batch of parallel trials would depend on the
    batch size. Seeding each draw by ``(seed, trial.number, crc32(name))`` makes trial ``k``
    sample the same values whether the sweep ran straight through, was resumed, or ran trials in
    parallel; the distribution of each draw is the stock sampler's.
    """

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(seed=seed)
        self._base_seed = int(np.random.SeedSequence().entropy % 2**32) if seed is None \
            else int(seed) % 2**32

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        key = [self._base_seed, trial.number, zlib.crc32(param_name.encode())]
        self._rng = np.random.RandomState(key)
        return super().sample_independent(study, trial, param_name, param_distribution)
