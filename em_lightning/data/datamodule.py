"""One LightningDataModule for every detection task: OpenMMLab datasets + pipelines inside
plain torch DataLoaders (``pseudo_collate``, as MMEngine's Runner batches them)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from mmengine.dataset import pseudo_collate
from torch.utils.data import DataLoader, Dataset

from em_lightning.data.demo import ensure_demo
from em_lightning.data.layout import check_layout
from em_lightning.registry import scope

log = logging.getLogger(__name__)


def _format_split(value: Any, split: str) -> Any:
    """Fill ``{split}`` in every string of a (nested) dataset config."""
    if isinstance(value, str):
        return value.format(split=split)
    if isinstance(value, dict):
        return {k: _format_split(v, split) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_format_split(v, split) for v in value)
    return value


#: pipeline arguments that OpenMMLab transforms require as tuples (YAML only has lists)
TUPLE_KEYS = frozenset({"scale", "crop_size", "ratio_range", "min_gt_bbox_wh", "pad_val"})


#: probability arguments that OpenMMLab transforms check to be floats (``flip_prob=0`` is an int)
PROB_KEYS = frozenset({"prob"})


def _from_yaml(key: str, value):
    if key in TUPLE_KEYS and isinstance(value, list):
        return tuple(value)
    if key in PROB_KEYS and isinstance(value, list):
        return [float(v) for v in value]
    if key in PROB_KEYS and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def pipeline_from_yaml(pipeline: list) -> list:
    """Copy of a YAML pipeline with the size-like arguments turned into tuples and the
    probabilities into floats."""
    return [{k: _from_yaml(k, v) for k, v in step.items()} for step in copy.deepcopy(pipeline)]


class DetectionDataModule(pl.LightningDataModule):
    """Train/val/test datasets of one task.

    Args:
        root: dataset folder (``data.root=``); paths in ``dataset`` are relative to it.
        classes: class names to train on, in label order (a subset selects a class group).
        dataset: OpenMMLab dataset config; ``{split}`` in any string is replaced by the split.
        train_pipeline / test_pipeline: OpenMMLab transform configs (augmentation only in train).
        splits: split names on disk for ``train``, ``val`` and ``test``.
        demo: writes the demo dataset into the folder it is given; called only when ``root``
            is ``demo_root`` and holds no complete dataset yet (:mod:`em_lightning.data.demo`).
        demo_root: the task's own demo folder; any other ``root`` is the user's data, which is
            checked (:mod:`em_lightning.data.layout`) and never written to.
        strict: raise on bad data (True) or skip it with a counted, logged warning (False).
        scope: OpenMMLab library whose registries resolve the pipeline (mmdet or mmrotate).
        settings: further config keys that the pipelines interpolate (``image_size``,
            ``augment``, ``format``...); kept for the run record, not used here.
    """

    def __init__(self, root: str, classes: Sequence[str], dataset: dict,
                 train_pipeline: list, test_pipeline: list, batch_size: int = 2,
                 val_batch_size: int | None = None, num_workers: int = 2,
                 splits: dict | None = None, demo: Callable[[str], Any] | None = None,
                 demo_root: str | None = None,
                 strict: bool = True, pin_memory: bool = False, scope: str = "mmdet",
                 **settings: Any) -> None:
        super().__init__()
        for key in ("image_size", "crop_size"):  # mmdet's own checks are bare assertions
            value = settings.get(key)
            if value is not None and not (isinstance(value, int) and value > 0):
                raise ValueError(f"data.{key} must be a positive number of pixels, got {value!r}")
        self.root = str(Path(root).expanduser())
        self.classes = list(classes)
        self.dataset_cfg = dict(dataset)
        self.train_pipeline = pipeline_from_yaml(train_pipeline)
        self.test_pipeline = pipeline_from_yaml(test_pipeline)
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.splits = {"train": "train", "val": "val", "test": "val", **(splits or {})}
        self.demo = demo
        self.demo_root = demo_root
        self.strict = strict
        self.pin_memory = pin_memory
        self.scope = scope
        self.settings = settings
        self.datasets: dict[str, Dataset] = {}

    def prepare_data(self) -> None:
        ensure_demo(self.root, self.demo_root, self.demo)

    def build_dataset(self, split: str, augment: bool) -> Dataset:
        """The dataset of on-disk ``split`` with the train (augmenting) or test pipeline."""
        cfg = _format_split(copy.deepcopy(self.dataset_cfg), split)
        check_layout(self.root, cfg, split)
        cfg.update(data_root=self.root, metainfo={"classes": tuple(self.classes)},
                   pipeline=copy.deepcopy(self.train_pipeline if augment else self.test_pipeline),
                   strict=self.strict, test_mode=not augment, filter_cfg=None)
        with scope(self.scope):
            from mmengine.registry import DATASETS

            return DATASETS.build(cfg)

    def setup(self, stage: str | None = None) -> None:
        if not self.datasets:  # no-op when present; covers setup() without prepare_data()
            ensure_demo(self.root, self.demo_root, self.demo)
        wanted = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"],
                  "predict": ["test"]}.get(stage or "fit", ["train", "val"])
        for name in wanted:
            if name not in self.datasets:
                self.datasets[name] = self.build_dataset(self.splits[name], name == "train")

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, collate_fn=pseudo_collate,
                          persistent_workers=self.num_workers > 0,
                          pin_memory=self.pin_memory)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["train"], self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["val"], self.val_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        self.setup("test")
        return self._loader(self.datasets["test"], self.val_batch_size, shuffle=False)

    def train_eval_dataloader(self) -> DataLoader:
        """The training images with the test pipeline (no augmentation), for train-set mAP."""
        if "train_eval" not in self.datasets:
            self.datasets["train_eval"] = self.build_dataset(self.splits["train"], augment=False)
        return self._loader(self.datasets["train_eval"], self.val_batch_size, shuffle=False)
