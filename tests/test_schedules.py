"""The LR schedule: warm-up proportionate to the run, then the step/cosine decay."""

import pytest

from em_lightning.models.schedules import lr_factor, warmup_length


def test_fractional_warmup_leaves_the_run_at_full_lr_before_the_first_milestone():
    total = 112  # 16 epochs of 14 images at batch 2: the demo vesicles budget
    assert warmup_length(0.1, total) == 11
    factors = [lr_factor(s, total, "step", 0.1) for s in range(total)]
    assert factors[0] == pytest.approx(0.001)
    assert factors[5] < 1.0 and factors[11] == 1.0
    assert sum(f == 1.0 for f in factors) == 76 - 11  # full LR from warm-up to 0.67 x 112
    assert factors[80] == pytest.approx(0.1) and factors[-1] == pytest.approx(0.01)


def test_integer_warmup_is_steps_and_negative_is_an_error():
    assert warmup_length(100, 10_000) == 100
    assert warmup_length(0, 100) == 0
    assert lr_factor(50, 10_000, "step", 100) == pytest.approx(0.001 + 0.999 * 0.5)
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_length(-1, 100)
