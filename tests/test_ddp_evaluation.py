"""Evaluation under DDP gathers every rank's predictions: 2 CPU processes (gloo) give the same
mAP as 1 process on the same checkpoint and data, with an odd number of images (the
distributed sampler pads one rank with a duplicate that must not be counted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_evaluate_entry import train_one_epoch

REPO = Path(__file__).resolve().parent.parent


def run_evaluate(root: Path, ckpt: Path, out: Path, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "em_lightning.evaluate", "task=vesicles", "experiment=tiny",
           f"data.root={root}", f"ckpt_path={ckpt}", f"hydra.run.dir={out}", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def odd_dataset(tmp_path_factory) -> Path:
    from em_lightning.data.demo_vesicles import generate_vesicles_dataset

    return generate_vesicles_dataset(tmp_path_factory.mktemp("odd") / "ves", n_train=2, n_val=3,
                                     image_size=128, n_big=4, n_small=12, n_holes=4, seed=5)


def test_two_process_evaluation_equals_one_process(odd_dataset, tmp_path):
    ckpt = train_one_epoch("vesicles", odd_dataset, tmp_path / "train")
    single = run_evaluate(odd_dataset, ckpt, tmp_path / "one")
    double = run_evaluate(odd_dataset, ckpt, tmp_path / "two", "trainer=ddp",
                          "trainer.accelerator=cpu", "trainer.devices=2")
    assert single["world_size"] == 1 and double["world_size"] == 2
    one, two = single["metrics"]["val"], double["metrics"]["val"]
    assert one.keys() == two.keys()
    for key in one:
        assert two[key] == pytest.approx(one[key], abs=1e-6), key


def _evaluate_shard(rank: int, world: int, root: str, port: int, queue) -> None:
    """One rank: predictions for its DistributedSampler shard (padded), gathered metric."""
    import torch.distributed as dist
    from hydra.utils import instantiate
    from torch.utils.data import DistributedSampler

    from em_lightning.evaluation import DetectionEvaluator
    from tests.conftest import compose_cfg
    from tests.helpers import samples_with_gt_as_predictions

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    cfg = compose_cfg(["task=vesicles", "experiment=tiny", f"data.root={root}"])
    dataset = instantiate(cfg.data).build_dataset("val", augment=False)
    samples = degrade(samples_with_gt_as_predictions(dataset))
    indices = list(DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False))
    evaluator = DetectionEvaluator(["bbox", "segm"], list(cfg.data.classes))
    evaluator.process([samples[i] for i in indices])
    metrics = evaluator.compute(len(dataset))
    if rank == 0:
        queue.put(metrics)
    dist.destroy_process_group()


def degrade(samples: list) -> list:
    """Deterministically imperfect predictions: shuffled scores, some dropped."""
    import torch

    gen = torch.Generator().manual_seed(0)
    for s in samples:
        n = len(s.pred_instances)
        s.pred_instances.scores = torch.rand(n, generator=gen)
        s.pred_instances = s.pred_instances[torch.rand(n, generator=gen) > 0.3]
    return samples


def test_metric_gathers_all_shards_with_padding(odd_dataset):
    """Imperfect predictions evaluated on 1 process and as 2 gloo ranks give equal mAP."""
    import socket

    import torch.multiprocessing as mp

    results = {}
    for world in (1, 2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        procs = [ctx.Process(target=_evaluate_shard, args=(r, world, str(odd_dataset), port,
                                                           queue)) for r in range(world)]
        for p in procs:
            p.start()
        results[world] = queue.get(timeout=300)
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
    assert 0.2 < results[1]["segm_mAP"] < 0.95
    for key, value in results[1].items():
        assert results[2][key] == pytest.approx(value, abs=1e-9), key
