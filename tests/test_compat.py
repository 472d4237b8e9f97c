"""Each compatibility fix in em_lightning.compat does what it says."""

import collections
import pickle

import pytest
import torch
from torch import nn

from em_lightning import compat


def test_mmrotate_models_import_on_modern_python():
    compat.apply()
    assert collections.Sequence is collections.abc.Sequence
    from mmrotate.models.detectors import refine_single_stage  # noqa: F401


def test_checkpoint_with_numpy_payload_loads(tmp_path):
    import numpy as np
    from mmengine.runner.checkpoint import CheckpointLoader

    compat.apply()
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "meta": {"arr": np.arange(3)}}, path)
    with pytest.raises(pickle.UnpicklingError):  # what torch >= 2.6 does by default
        torch.load(path)
    ckpt = CheckpointLoader.load_checkpoint(str(path), map_location="cpu")
    assert ckpt["meta"]["arr"].tolist() == [0, 1, 2]


def test_preprocessor_device_follows_parent_module_moves():
    from mmdet.models.data_preprocessors import DetDataPreprocessor

    compat.apply()
    pre = DetDataPreprocessor(mean=[0, 0, 0], std=[1, 1, 1])
    parent = nn.Sequential(pre)
    parent.to("meta")  # how Lightning moves modules: nn.Module._apply on the children
    assert pre.device == torch.device("meta")
    parent.to_empty(device="cpu")
    assert pre.device == torch.device("cpu")
