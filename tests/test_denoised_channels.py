"""The denoised-channels preprocessor: Gaussian stack of the gray image, built from configs."""

import pytest
import torch

from em_lightning.models.denoised_channels import (
    DenoisedChannelsPreprocessor,
    gaussian_kernel1d,
    gaussian_smooth,
)
from em_lightning.registry import register_all_modules


def test_kernel_is_normalised_and_symmetric():
    taps = gaussian_kernel1d(1.5)
    assert taps.numel() == 11  # 3 sigma each side
    assert torch.isclose(taps.sum(), torch.tensor(1.0))
    assert torch.equal(taps, taps.flip(0))


def test_smoothing_divides_white_noise_variance_as_theory_says():
    torch.manual_seed(0)
    noise = torch.randn(1, 1, 256, 256)
    sigma = 2.0
    smoothed = gaussian_smooth(noise, sigma)
    # variance of white noise after a 2-D Gaussian: sum of squared taps, squared (separable)
    expected = float((gaussian_kernel1d(sigma) ** 2).sum()) ** 2
    assert smoothed[..., 8:-8, 8:-8].var().item() == pytest.approx(expected, rel=0.1)
    assert gaussian_smooth(noise, 0.0) is noise


def test_flat_image_stays_flat_to_the_border():
    flat = torch.full((2, 1, 40, 50), 3.25)
    assert torch.allclose(gaussian_smooth(flat, 4.0), flat)


def _batch(h: int = 64, w: int = 64) -> dict:
    torch.manual_seed(1)
    gray = torch.randint(0, 256, (1, h, w)).float()
    return {"inputs": [gray.repeat(3, 1, 1)], "data_samples": None}


def test_channels_are_the_raw_and_smoothed_normalised_image():
    kwargs = dict(mean=[128.0] * 3, std=[64.0] * 3, bgr_to_rgb=False, pad_size_divisor=32)
    plain = DenoisedChannelsPreprocessor(channel_sigmas=[0, 0, 0], **kwargs)
    stack = DenoisedChannelsPreprocessor(channel_sigmas=[0, 1.5, 4], **kwargs)
    raw = plain(_batch())["inputs"]
    out = stack(_batch())["inputs"]
    assert out.shape == raw.shape == (1, 3, 64, 64)
    assert torch.equal(out[:, 0], raw[:, 0])
    assert torch.allclose(out[:, 2:3], gaussian_smooth(raw[:, :1], 4.0))
    assert out[:, 0].std() > out[:, 1].std() > out[:, 2].std()  # noise averaged away


def test_bad_sigmas_are_clear_errors():
    with pytest.raises(ValueError, match="finite and >= 0"):
        DenoisedChannelsPreprocessor(channel_sigmas=[0, -1, 2])
    with pytest.raises(ValueError, match="2 entries for 3-channel"):
        DenoisedChannelsPreprocessor(channel_sigmas=[0, 2])(_batch())


@pytest.mark.parametrize("scope", ["mmdet", "mmrotate"])
def test_registered_for_both_scopes(scope):
    register_all_modules()
    from mmengine.registry import MODELS

    from em_lightning.registry import scope as openmmlab_scope

    with openmmlab_scope(scope):
        built = MODELS.build({"type": f"{scope}.DenoisedChannelsPreprocessor",
                              "channel_sigmas": [0, 1, 2]})
    assert isinstance(built, DenoisedChannelsPreprocessor)
