"""predict writes each image as it finishes and continues where a killed run stopped.

A real ``python -m em_lightning.predict`` process (untrained tiny Mask R-CNN, 8 images of
128 px) is SIGKILLed after a few images, one finished part is damaged on top, and the same
command is run again: its tables must equal an uninterrupted run's byte for byte (timings
aside), and the images finished before the kill must not be predicted again. ``batch_size=1``:
with larger batches a resumed run groups images into other batches, which moves scores in
their last float32 bit (~3e-8; measured), and this test asserts exact equality.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from em_lightning.errors import ConfigError
from tests.conftest import compose_cfg
from tests.test_predict import untrained_ckpt  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parent.parent
N_IMAGES = 8
TABLES = ("objects.csv", "summary_per_image.csv", "summary_dataset.csv", "images.csv",
          "coco_results.json", "coco_images.json")
TIMING = ("seconds", "seconds_per_image", "device")


@pytest.fixture(scope="module")
def images(tiny_vesicles: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 different 128 px images: the demo set's 6 and two transformed copies."""
    sources = sorted((tiny_vesicles / "images").rglob("*.png"))
    folder = tmp_path_factory.mktemp("inputs")
    for k in range(N_IMAGES):
        img = cv2.imread(str(sources[k % len(sources)]), cv2.IMREAD_UNCHANGED)
        if k >= len(sources):
            img = img[:, ::-1] if k % 2 else img.T
        cv2.imwrite(str(folder / f"img_{k:02d}.png"), np.ascontiguousarray(img))
    return folder


def overrides(ckpt: Path, inp: Path, out: Path, *extra: str) -> list[str]:
    return ["task=vesicles", "experiment=tiny", f"ckpt_path={ckpt}", f"input={inp}",
            f"output={out}", "score_thr=0.255", "batch_size=1", "device=cpu",
            f"paths.root_dir={out.parent}", *extra]


def run_inline(args: list[str]) -> dict:
    from em_lightning.predict import predict

    out = Path(next(a for a in args if a.startswith("output="))[len("output="):])
    return predict(compose_cfg(args, config="predict", output_dir=out))


def records(out: Path) -> dict[str, int]:
    """Manifest record -> its mtime (ns): which images a run (re)wrote."""
    return {p.name: p.stat().st_mtime_ns for p in (out / "manifest").glob("*.json")
            if p.name != "settings.json"}


def assert_same_tables(a: Path, b: Path) -> None:
    for name in TABLES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    pd.testing.assert_frame_equal(pd.read_parquet(a / "objects.parquet"),
                                  pd.read_parquet(b / "objects.parquet"))
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    for key in TIMING:
        sa.pop(key), sb.pop(key)
    assert sa == sb


@pytest.fixture(scope="module")
def reference(images: Path, untrained_ckpt: Path,  # noqa: F811
              tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "out"
    summary = run_inline(overrides(untrained_ckpt, images, out))
    assert summary["n_images"] == N_IMAGES and summary["n_objects"] > 5 * N_IMAGES
    return out


def test_killed_run_resumes_to_the_same_tables(reference, images, untrained_ckpt,  # noqa: F811
                                               tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "em_lightning.predict",
           *overrides(untrained_ckpt, images, out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while len(records(out)) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = records(out)
    assert 3 <= len(before) < N_IMAGES, "the kill came too late to test anything"
    assert not (out / "objects.csv").exists()  # tables are built only at the end
    # a damaged part (as a crash mid-write on a file system without atomic rename would leave)
    damaged = sorted((out / "parts").glob("*.parquet"))[0]
    damaged.write_bytes(damaged.read_bytes()[:100])

    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    # all finished images but the damaged one are kept
    assert f"{len(before) - 1} of {N_IMAGES} images already done" in again.stdout + again.stderr
    after = records(out)
    assert len(after) == N_IMAGES
    kept = [k for k in before if before[k] == after[k]]  # not predicted again
    assert len(kept) == len(before) - 1
    assert_same_tables(reference, out)

    # report_only rebuilds the same tables from the parts alone
    for name in TABLES:
        (out / name).unlink()
    summary = run_inline(overrides(untrained_ckpt, images, out, "report_only=true"))
    assert summary["n_images"] == N_IMAGES
    assert records(out) == after
    assert_same_tables(reference, out)


def test_changed_file_is_redone_and_other_settings_refused(reference, images,
                                                           untrained_ckpt,  # noqa: F811
                                                           tmp_path):
    inp, out = tmp_path / "inputs", tmp_path / "out"
    shutil.copytree(images, inp)  # copy2: times kept, so the copies are the same files
    shutil.copytree(reference, out)
    before = records(out)
    changed = inp / "img_03.png"
    shutil.copyfile(inp / "img_05.png", changed)  # now the same picture as img_05
    summary = run_inline(overrides(untrained_ckpt, inp, out))
    after = records(out)
    assert [k for k in after if after[k] != before[k]] == [
        k for k in after if k.startswith("img_03.png")]
    assert summary["n_images"] == N_IMAGES
    objects = pd.read_csv(out / "objects.csv")
    measured = [c for c in objects.columns if c not in ("id", "image_id", "image")]
    redone = objects[objects["image"] == "img_03.png"][measured].reset_index(drop=True)
    twin = objects[objects["image"] == "img_05.png"][measured].reset_index(drop=True)
    assert len(redone) > 5
    pd.testing.assert_frame_equal(redone, twin)

    refused = r"output: .*other settings \(score_thr: 0\.255 -> 0\.3\)"
    with pytest.raises(ConfigError, match=refused):
        run_inline(overrides(untrained_ckpt, inp, out, "score_thr=0.3"))
    assert records(out) == after


def test_shards_then_merge_equal_one_run(reference, images, untrained_ckpt,  # noqa: F811
                                         tmp_path):
    out = tmp_path / "out"
    first = run_inline(overrides(untrained_ckpt, images, out, "shard=0/2"))
    assert first == {"shard": "0/2", "n_files": 4, "n_done": 4, "n_predicted": 4}
    assert not (out / "objects.csv").exists()
    partial = run_inline(overrides(untrained_ckpt, images, out, "report_only=true"))
    assert partial["n_images"] == 4 and partial["n_pending"] == 4
    assert any("4 of 8 images have no results yet" in p for p in partial["problems"])
    run_inline(overrides(untrained_ckpt, images, out, "shard=1/2"))
    summary = run_inline(overrides(untrained_ckpt, images, out, "report_only=true"))
    assert summary["n_pending"] == 0
    assert_same_tables(reference, out)


def assert_same_objects(a: Path, b: Path) -> None:
    """The same objects, measurements and summaries; floats to 1e-5 relative (a run with
    another number of threads per process moves scores by a float32 step)."""
    for name in ("objects.csv", "summary_per_image.csv", "summary_dataset.csv", "images.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(a / name), pd.read_csv(b / name),
                                      check_exact=False, rtol=1e-5, obj=name)
    ra, rb = (json.loads((d / "coco_results.json").read_text()) for d in (a, b))
    assert [(r["image_id"], r["category_id"]) for r in ra] == \
        [(r["image_id"], r["category_id"]) for r in rb]
    assert [r["score"] for r in rb] == pytest.approx([r["score"] for r in ra], rel=1e-5)


def test_two_processes_predict_the_same_objects_as_one(reference, images,
                                                       untrained_ckpt,  # noqa: F811
                                                       tmp_path):
    """``trainer=ddp trainer.devices=2`` on CPU (gloo): two ranks, one set of tables."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "em_lightning.predict",
           *overrides(untrained_ckpt, images, out, "trainer=ddp", "trainer.accelerator=cpu",
                      "trainer.devices=2")]
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "predicting on 2 processes (DDPStrategy)" in proc.stdout + proc.stderr
    devices = {json.loads(p.read_text()).get("device") for p in (out / "manifest").glob("*.json")
               if p.name != "settings.json"}
    assert devices == {"cpu"}
    assert len(records(out)) == N_IMAGES
    assert_same_objects(reference, out)


def test_shards_through_hydra_parallel_launcher(reference, images, untrained_ckpt,  # noqa: F811
                                                tmp_path):
    """``-m shard=0/2,1/2 hydra/launcher=parallel`` (two joblib processes, one folder), then
    the merge with ``report_only=true``: the tables of one run."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "em_lightning.predict", "-m",
           *overrides(untrained_ckpt, images, out, "shard=0/2,1/2",
                      "hydra/launcher=parallel", f"hydra.sweep.dir={tmp_path / 'sweep'}")]
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(records(out)) == N_IMAGES
    assert not (out / "objects.csv").exists()  # shards leave the tables to the merge
    summary = run_inline(overrides(untrained_ckpt, images, out, "report_only=true"))
    assert summary["n_images"] == N_IMAGES and summary["n_pending"] == 0
    assert_same_objects(reference, out)
