"""A detector data preprocessor that turns the 3 copies of a gray EM image into a scale stack.

EM images are gray: ``EMLoadImage`` repeats the one channel three times, so the backbone's three
input channels carry the same noisy picture. In shot-noise-limited micrographs some objects
are plain to the eye only after smoothing (the demo's big vesicles: a faint light disc a few
grey levels above the film, under noise several times larger). Replacing the copies with
Gaussian-smoothed versions of the image hands a network trained from scratch on a dozen images
a denoised view it would otherwise have to learn, at no cost in backbone compute.

It runs inside the detector (after mmdet's normalisation and padding), so training,
validation, tiled prediction and test-time augmentation all see the same input, and the
setting travels with the checkpoint's config.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from mmdet.models.data_preprocessors import DetDataPreprocessor


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian taps out to 3 sigma (odd length)."""
    radius = max(1, math.ceil(3.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    taps = torch.exp(-0.5 * (x / sigma) ** 2)
    return taps / taps.sum()


def gaussian_smooth(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, 1, H, W)`` images; edges replicated, so a flat image
    stays flat up to its border. ``sigma`` 0 returns the input."""
    if sigma <= 0:
        return images
    taps = gaussian_kernel1d(sigma).to(images)
    r = taps.numel() // 2
    out = F.conv2d(F.pad(images, (r, r, 0, 0), mode="replicate"), taps.view(1, 1, 1, -1))
    return F.conv2d(F.pad(out, (0, 0, r, r), mode="replicate"), taps.view(1, 1, -1, 1))


class DenoisedChannelsPreprocessor(DetDataPreprocessor):
    """``DetDataPreprocessor`` whose output channel ``i`` is channel 0 smoothed by
    ``channel_sigmas[i]`` (pixels of the network input; 0 keeps it raw).

    E.g. ``channel_sigmas=[0, 1.5, 4]``: raw, fine-denoised (keeps 2-3 px membranes and small
    particles), coarse-denoised (large faint discs). Padding added for ``pad_size_divisor``
    (the mean grey level after normalisation) bleeds up to 3 sigma into a padded image's
    right and bottom edge in the smoothed channels.
    """

    def __init__(self, *args: object, channel_sigmas: Sequence[float] = (0.0, 1.5, 4.0),
                 **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.channel_sigmas = [float(s) for s in channel_sigmas]
        if any(s < 0 or not math.isfinite(s) for s in self.channel_sigmas):
            raise ValueError(f"channel_sigmas must be finite and >= 0, got {channel_sigmas}")

    def forward(self, data: dict, training: bool = False) -> dict:
        data = super().forward(data=data, training=training)
        inputs = data["inputs"]
        if inputs.shape[1] != len(self.channel_sigmas):
            raise ValueError(f"channel_sigmas has {len(self.channel_sigmas)} entries for "
                             f"{inputs.shape[1]}-channel inputs")
        gray = inputs[:, :1]
        data["inputs"] = torch.cat([gaussian_smooth(gray, s) for s in self.channel_sigmas], 1)
        return data


def register_models() -> None:
    """Register the preprocessor in mmdet's and mmrotate's model registries (idempotent)."""
    from mmdet.registry import MODELS as MMDET_MODELS
    from mmrotate.registry import MODELS as MMROTATE_MODELS

    for registry in (MMDET_MODELS, MMROTATE_MODELS):
        registry.register_module(module=DenoisedChannelsPreprocessor, force=True)
