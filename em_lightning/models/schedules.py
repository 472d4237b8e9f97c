"""Learning-rate schedules: linear warm-up followed by step or cosine decay, per iteration."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def warmup_length(warmup_steps: float, total_steps: int) -> int:
    """Warm-up steps: ``warmup_steps`` itself when >= 1, else that fraction of the run.

    A fraction keeps the warm-up proportionate on small data sets: mmdet's fixed 500 (or our
    former 100) steps were 60 % of a 24-epoch run on 14 images, which then ended before the LR
    had been at its full value at all.
    """
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    return int(warmup_steps) if warmup_steps >= 1 else round(warmup_steps * total_steps)


def lr_factor(step: int, total_steps: int, policy: str = "step", warmup_steps: float = 0,
              warmup_ratio: float = 0.001, milestones: Sequence[float] = (0.67, 0.89),
              gamma: float = 0.1, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the base LR at ``step``; milestones are fractions of ``total_steps``;
    ``warmup_steps`` < 1 is a fraction of ``total_steps`` (see :func:`warmup_length`)."""
    warmup_steps = warmup_length(warmup_steps, total_steps)
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_ratio + (1.0 - warmup_ratio) * step / warmup_steps
    if policy == "step":
        passed = sum(step >= m * total_steps for m in milestones)
        return gamma**passed
    if policy == "cosine":
        span = max(total_steps - warmup_steps, 1)
        progress = min(max(step - warmup_steps, 0) / span, 1.0)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if policy == "constant":
        return 1.0
    raise ValueError(f"unknown LR policy {policy!r}; expected step, cosine or constant")


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, **cfg: object
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` (state-dict resumable) applying :func:`lr_factor` every optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, **cfg))  # type: ignore[arg-type]
