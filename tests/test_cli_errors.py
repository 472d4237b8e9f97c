"""Bad input stops an entry point with one clear message (no traceback), exit code 1.

Most cases run the real Hydra entry points in this process (``launch(main, ...)`` with
``sys.argv`` set, as ``python -m`` does); two run as subprocesses, end to end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import helpers

ROOT = Path(__file__).resolve().parent.parent


def run_entry(entry: str, argv: list[str], tmp_path: Path, capsys) -> tuple[int, str]:
    """(exit code, stdout + stderr) of ``python -m em_lightning.<entry> argv``, in-process,
    with data and outputs under ``tmp_path``."""
    return helpers.run_entry(entry, [f"paths.root_dir={tmp_path}",
                                     f"hydra.run.dir={tmp_path / 'run'}", *argv], capsys)


TINY = ["task=vesicles", "experiment=tiny"]
SETTINGS = [
    (["data.batch_size=0"], "data.batch_size: must be a whole number >= 1, got 0"),
    (["model.optimizer.lr=-1"], "model.optimizer.lr: must be a number > 0, got -1"),
    (["trainer.max_epochs=0"], "trainer.max_epochs: must be a whole number >= 1"),
    (["data.augment.flip_prob=2"], "data.augment.flip_prob: must be a number in [0, 1], got 2"),
    (["data.image_size=-128"], "data.image_size: must be a whole number >= 1, got -128"),
    (["data.crop_size=0"], "data.crop_size: must be a whole number >= 1, got 0"),
    (["data.augment.scale_range=[1.5,0.5]"], "data.augment.scale_range: must be [low, high]"),
    (["model.detector.test_cfg.rcnn.score_thr=1.5"],
     "model.detector.test_cfg.rcnn.score_thr: must be a number in [0, 1], got 1.5"),
    (["model.scheduler.policy=linear"], "model.scheduler.policy: must be one of"),
]


@pytest.mark.parametrize(("overrides", "expected"), SETTINGS,
                         ids=[o[0].split("=")[0] for o, _ in SETTINGS])
def test_a_bad_training_setting_names_its_key(overrides, expected, tmp_path, capsys):
    code, out = run_entry("train", TINY + overrides, tmp_path, capsys)
    assert code == 1
    assert expected in out
    assert "Traceback" not in out and "HYDRA_FULL_ERROR=1" in out
    assert not (tmp_path / "data").exists()  # stopped before anything was built or generated


def test_a_bad_data_format_names_the_choices(tmp_path, capsys):
    code, out = run_entry("train", ["task=nanorods", "experiment=tiny", "data.format=yolo"],
                          tmp_path, capsys)
    assert code == 1
    assert "data.format: must be one of ['coco', 'dota', 'kitti'], got 'yolo'" in out
    assert "Traceback" not in out


def test_a_missing_data_root_is_one_message(tmp_path, capsys):
    code, out = run_entry("train", TINY + [f"data.root={tmp_path / 'nowhere'}"], tmp_path,
                          capsys)
    assert code == 1
    assert f"error: {tmp_path / 'nowhere'}: data.root: folder not found" in out
    assert "Traceback" not in out
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize(("entry", "argv", "expected"), [
    ("predict", ["input=x.png"], "ckpt_path: is required: the trained checkpoint"),
    ("predict", ["ckpt_path=x.ckpt"], "input: is required: the images"),
    ("predict", ["ckpt_path=x.ckpt", "input=x.png", "score_thr=2"],
     "score_thr: must be a number in [0, 1], got 2"),
    ("predict", ["ckpt_path=x.ckpt", "input=x.png", "tile.size=8"],
     "tile.size: must be a whole number of pixels >= 32"),
    ("predict", ["ckpt_path=x.ckpt", "input=x.png", "pixel_size_nm=-1"],
     "pixel_size_nm: must be a number > 0, got -1"),
    ("evaluate", [], "ckpt_path: is required"),
    ("evaluate", ["ckpt_path=x.ckpt", "splits=[vla]"], "splits: must be a non-empty list"),
    ("analyze", ["score_thr=-0.5"], "score_thr: must be a number in [0, 1], got -0.5"),
    ("export", ["output=m.pt"], "ckpt_path: is required: the checkpoint to export"),
    ("export", ["ckpt_path=x.ckpt"], "output: is required: the model file to write"),
])
def test_entry_point_settings(entry, argv, expected, tmp_path, capsys):
    code, out = run_entry(entry, ["task=vesicles", *argv], tmp_path, capsys)
    assert code == 1
    assert expected in out
    assert "Traceback" not in out


def test_a_missing_checkpoint_file_is_one_message(tiny_vesicles, tmp_path, capsys):
    images = tiny_vesicles / "images" / "val"
    code, out = run_entry("predict", TINY + [f"ckpt_path={tmp_path / 'no.ckpt'}",
                                             f"input={images}", f"output={tmp_path / 'out'}"],
                          tmp_path, capsys)
    assert code == 1
    assert f"{tmp_path / 'no.ckpt'}: checkpoint file not found" in out
    assert "Traceback" not in out


def test_predict_refuses_an_output_inside_the_input_folder(tiny_vesicles, tmp_path, capsys):
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "a.png").write_bytes((tiny_vesicles / "images" / "val").glob("*.png")
                                   .__next__().read_bytes())
    code, out = run_entry("predict", TINY + ["ckpt_path=x.ckpt", f"input={images}",
                                             f"output={images / 'results'}"], tmp_path, capsys)
    assert code == 1
    assert "output: " in out and "never writes into your data" in out
    assert [p.name for p in images.iterdir()] == ["a.png"]


def test_a_misspelt_override_keeps_hydras_error_and_suggests(tmp_path, capsys):
    code, out = run_entry("train", TINY + ["trainer.max_epoch=1"], tmp_path, capsys)
    assert code == 1
    assert "Could not override 'trainer.max_epoch'" in out  # Hydra's own words stay
    assert "did you mean trainer.max_epochs?" in out


def test_only_the_misspelt_key_gets_a_suggestion(tmp_path, capsys):
    """Keys that exist, required (???) ones included, are not flagged beside the typo."""
    code, out = run_entry("predict", TINY + ["ckpt_path=x.ckpt", "input=y", "scor_thr=0.3"],
                          tmp_path, capsys)
    assert code == 1
    assert "did you mean score_thr?" in out
    assert "ckpt_path is not a setting" not in out and "did you mean ckpt_path" not in out
    assert "did you mean input" not in out


def _python_m(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args, f"paths.root_dir={tmp_path}",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=300)


def test_end_to_end_a_bad_setting_and_the_full_traceback_switch(tmp_path):
    done = _python_m(["em_lightning.train", *TINY, "data.batch_size=0"], tmp_path)
    assert done.returncode == 1
    assert "error: data.batch_size: must be a whole number >= 1, got 0" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert len((done.stdout + done.stderr).strip().splitlines()) <= 4
    full = _python_m(["em_lightning.train", *TINY, "data.batch_size=0"], tmp_path,
                     HYDRA_FULL_ERROR="1")
    assert full.returncode == 1 and "Traceback" in full.stderr
    assert "ConfigError: data.batch_size" in full.stderr


def test_end_to_end_a_misspelt_override(tmp_path):
    done = _python_m(["em_lightning.predict", "task=vesicles", "ckpt_path=x", "input=y",
                      "scor_thr=0.3"], tmp_path)
    assert done.returncode == 1
    assert "did you mean score_thr?" in done.stderr
