"""What a newcomer reads: each entry point's ``--help``, the console of a tiny training, and
metrics without -1/NaN sentinels.

The help runs the real Hydra entry points in this process (as ``python -m`` does); the console
test runs a real one-epoch tiny training as a subprocess and reads what it printed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from em_lightning.evaluation.tables import compact_table, json_ready
from em_lightning.quiet import output_to_debug, quiet_third_party
from tests.conftest import compose_cfg
from tests.helpers import run_entry

ROOT = Path(__file__).resolve().parent.parent

#: per entry point: the keys its help must name (each must exist in its composed config)
HELP_KEYS = {
    "train": ["task", "experiment", "data.root", "data.format", "data.classes",
              "trainer.max_epochs", "model.optimizer.lr", "model.backbone_checkpoint",
              "trainer=gpu", "ckpt_path", "debug=fdr"],
    "evaluate": ["ckpt_path", "splits", "score_thr", "data.root", "trainer=ddp"],
    "predict": ["ckpt_path", "input", "output", "pixel_size_nm", "score_thr", "tile.size",
                "tile.overlap", "scale", "device", "export"],
    "analyze": ["data.root", "split", "predictions", "score_thr", "pixel_size_nm", "output"],
}
#: keys that exist only with a task's data config (nanorods)
TASK_KEYS = {"data.format": "nanorods"}


@pytest.mark.parametrize("entry", sorted(HELP_KEYS))
def test_help_is_short_and_names_the_keys_that_matter(entry, capsys):
    code, text = run_entry(entry, ["--help"], capsys)
    assert code == 0
    lines = text.splitlines()
    assert 20 <= len(lines) < 60, text
    assert lines[0].startswith(f"em_lightning.{entry}: ")
    for key in HELP_KEYS[entry]:
        assert key in text, (entry, key)
        if "=" in key:  # a config group choice: the option exists
            group, option = key.split("=")
            assert (ROOT / "conf" / group / f"{option}.yaml").is_file()
            continue
        if (ROOT / "conf" / key).is_dir():  # task, experiment: config groups
            continue
        task = TASK_KEYS.get(key, "vesicles")
        cfg = compose_cfg([f"task={task}"], config=entry)
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        assert leaf in node.keys(), (entry, key)  # keys(): also a required (???) value
    assert "Examples:" in text and text.count(f"python -m em_lightning.{entry} ") >= 4
    assert "Outputs:" in text
    assert "--cfg job" in text
    # Hydra's $APP_CONFIG_GROUPS: every group with its options
    assert re.search(r"^experiment: .*\btiny\b", text, re.M)
    assert re.search(r"^task: nanorods, vesicles$", text, re.M)


def test_help_shows_the_values_of_the_command_line(capsys):
    code, text = run_entry("predict", ["task=nanorods", "score_thr=0.25", "tile.size=640",
                                       "--help"], capsys)
    assert code == 0
    assert "score_thr=0.25 " in text and "tile.size=640 " in text
    assert "task=nanorods" in text


def test_the_full_config_stays_one_flag_away(capsys):
    code, text = run_entry("predict", ["task=vesicles", "--cfg", "job"], capsys)
    assert code == 0
    cfg = OmegaConf.create(text)
    assert cfg.tile.size == 1024 and cfg.score_thr == 0.5
    assert len(text.splitlines()) > 200  # every key, pipelines included
    assert cfg.data.test_pipeline[0].type == "EMLoadImage"


def test_help_from_the_command_line():
    """The real ``python -m`` path, end to end (the others call the same main in-process)."""
    proc = subprocess.run([sys.executable, "-m", "em_lightning.analyze", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("em_lightning.analyze: ")
    assert len(proc.stdout.splitlines()) < 60
    assert proc.stderr == ""


# --------------------------------------------------------------------------- tables and JSON
METRICS = {
    "segm_mAP": 0.4, "segm_mAP_50": 0.7, "segm_mAP_75": 0.35, "segm_mAP_l": -1.0,
    "bbox_mAP": 0.5, "bbox_mAP_50": 0.8, "bbox_mAP_75": 0.45,
    "big_vesicle_segm_AP": 0.25, "hole_segm_AP": math.nan,
    "big_vesicle_bbox_AP": 0.3, "hole_bbox_AP": math.nan,
}


def test_compact_table_has_the_headline_and_one_row_per_class():
    text = compact_table(METRICS, ["big_vesicle", "hole"], ["bbox", "segm"], "segm_mAP",
                         "val after epoch 3 (step 21)")
    lines = text.splitlines()
    assert lines[0] == "val after epoch 3 (step 21): segm_mAP = 0.400"
    assert lines[1].split() == ["class", "bbox", "AP", "segm", "AP"]
    assert lines[2].split() == ["big_vesicle", "0.300", "0.250"]
    assert lines[3].split() == ["hole", "-", "-"]  # NaN: no ground truth of that class
    assert [ln.split()[-2:] for ln in lines[4:7]] == [["0.500", "0.400"], ["0.800", "0.700"],
                                                       ["0.450", "0.350"]]
    assert lines[-1].strip().startswith("-: not applicable")


def test_compact_table_of_a_rotated_task():
    metrics = {"rbox_mAP": 0.1, "rbox_mAP_50": 0.3, "rbox_mAP_75": 0.05, "dota_AP50": 0.32,
               "nanorod_rbox_AP": 0.1, "nanorod_dota_AP50": 0.32}
    lines = compact_table(metrics, ["nanorod"], ["rbox", "dota"], "rbox_mAP", "val").splitlines()
    assert lines[2].split() == ["nanorod", "0.100", "0.320"]
    assert lines[4].split() == ["(all)", "AP50", "0.300", "0.320"]
    assert lines[3].split() == ["(all)", "mAP", "0.100"]
    assert "not applicable" not in lines[-1]


def test_json_ready_writes_not_applicable_as_null():
    out = json_ready({"metrics": {"val": METRICS}, "n": 3})
    text = json.dumps(out, allow_nan=False)  # strict JSON: no NaN token
    back = json.loads(text)["metrics"]["val"]
    assert back["segm_mAP_l"] is None and back["hole_segm_AP"] is None
    assert back["segm_mAP"] == 0.4 and json.loads(text)["n"] == 3


# --------------------------------------------------------------------------- quiet output
def _coco_eval_summarize() -> np.ndarray:
    """pycocotools' own summarize() on two boxes, one matched exactly: it prints 12 lines."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO()
    gt.dataset = {"images": [{"id": 1, "width": 64, "height": 64}],
                  "categories": [{"id": 1, "name": "a"}],
                  "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                                   "bbox": [10, 10, 20, 20], "area": 400},
                                  {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 0,
                                   "bbox": [40, 40, 10, 10], "area": 100}]}
    gt.createIndex()
    dt = gt.loadRes([{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20],
                      "score": 0.9}])
    ev = COCOeval(gt, dt, "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats


def test_output_to_debug_moves_pycocotools_printouts_to_a_debug_record(capsys, caplog):
    logger = logging.getLogger("em_lightning.test_quiet")
    with caplog.at_level(logging.DEBUG, logger="em_lightning.test_quiet"), \
            output_to_debug(logger, "bbox evaluation"):
        stats = _coco_eval_summarize()
    assert capsys.readouterr().out == ""
    records = [r for r in caplog.records if r.name == "em_lightning.test_quiet"]
    assert len(records) == 1 and records[0].levelno == logging.DEBUG
    text = records[0].getMessage()
    assert text.startswith("bbox evaluation:")
    assert text.count("Average Precision  (AP) @[") == 6
    # the captured printout is pycocotools' own numbers: 1 of 2 objects found, large range empty
    assert stats[1] == pytest.approx(0.5, abs=0.01) and stats[5] == -1
    assert "area= large | maxDets=100 ] = -1.000" in text


def test_deprecations_go_to_the_log_file_and_user_warnings_stay(caplog):
    shown: list[str] = []
    with warnings.catch_warnings(), caplog.at_level(logging.DEBUG, logger="em_lightning.quiet"):
        warnings.showwarning = lambda message, *args, **kwargs: shown.append(str(message))
        quiet_third_party()
        warnings.simplefilter("always")
        warnings.warn("old_api is deprecated", DeprecationWarning, stacklevel=1)
        warnings.warn("`LeafSpec` is deprecated", FutureWarning, stacklevel=1)
        warnings.warn("You have overridden `transfer_batch_to_device` in `LightningModule`",
                      UserWarning, stacklevel=1)
        warnings.warn("image 3 is empty", UserWarning, stacklevel=1)
        quiet_third_party()  # idempotent: still one filter, not two
        warnings.warn("image 4 is empty", UserWarning, stacklevel=1)
    assert shown == ["image 3 is empty", "image 4 is empty"]
    quiet = [r.getMessage() for r in caplog.records if r.name == "em_lightning.quiet"]
    assert len(quiet) == 3
    assert quiet[0].endswith("DeprecationWarning: old_api is deprecated")
    assert quiet[1].endswith("FutureWarning: `LeafSpec` is deprecated")


# --------------------------------------------------------------------------- a real training
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    root = tmp_path_factory.mktemp("console")
    run_dir = root / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_SILENT", "PYTHONWARNINGS")}
    env["WANDB_MODE"] = "offline"
    proc = subprocess.run(
        [sys.executable, "-m", "em_lightning.train", "task=vesicles", "experiment=tiny",
         "trainer.max_epochs=1", "eval_train=false", f"paths.root_dir={root}",
         f"hydra.run.dir={run_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, run_dir


def test_tiny_training_console_tells_the_story(tiny_run):
    proc, run_dir = tiny_run
    console = proc.stdout + proc.stderr
    # data found, model, device, output dir: before the first progress bar
    first_screen = console.split("Epoch 0:")[0]
    assert re.search(r"train\.json: 4 images, \d+ annotations", first_screen)
    assert re.search(r"val\.json: 2 images, \d+ annotations", first_screen)
    assert re.search(rf"training MaskRCNN \(ResNet18, [\d.]+ M parameters.*\) for 1 epoch = "
                     rf"2 steps on cpu .*outputs in {re.escape(str(run_dir))}", first_screen)
    assert "GPU available: False" in first_screen
    # one compact table per validation: the one of the fit, then the best checkpoint's
    assert len(re.findall(r"val after epoch 1 \(step 2\): segm_mAP = ", console)) == 1
    assert len(re.findall(r"val split \(best-epoch000\.ckpt\): segm_mAP = ", console)) == 1
    assert len(re.findall(r"^\s+small_vesicle\s+[\d.-]+\s+[\d.-]+$", console, re.M)) == 2
    for noise in ("Average Precision  (AP) @[", "creating index", "DeprecationWarning",
                  "FutureWarning", "is deprecated", "💡 Tip", "litlogger", "TPU available",
                  "wandb: ", "mmengine - INFO", "PossibleUserWarning", "Total params",
                  "Restoring states"):
        assert noise not in console, noise


def test_tiny_training_log_file_keeps_the_detail(tiny_run):
    proc, run_dir = tiny_run
    log_text = (run_dir / "train.log").read_text()
    # bbox + segm of 2 validations, 6 AP lines each, all at DEBUG in the file
    assert log_text.count("Average Precision  (AP) @[") == 2 * 2 * 6
    assert "[DEBUG] - segm evaluation:" in log_text
    assert "GPU available: False" in log_text  # Lightning's lines reach the file too
    # what the console leaves out of Lightning's lines is in the file, at DEBUG
    assert re.search(r"\[pytorch_lightning\.callbacks\.model_summary\]\[DEBUG\].*\n.*Name",
                     log_text)
    assert re.search(r"\[DEBUG\] - .*Tip: ", log_text)
    assert re.search(r"\[DEBUG\] - Restoring states from the checkpoint path", log_text)


def test_tiny_training_metrics_json_has_null_not_minus_one(tiny_run):
    proc, run_dir = tiny_run
    text = (run_dir / "metrics.json").read_text()
    metrics = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in metrics.json"))
    metrics = metrics["metrics"]
    assert all(v is None or v >= 0 for v in metrics.values())
    # pycocotools printed -1 for a size range without ground truth exactly where JSON has null
    log_text = (run_dir / "train.log").read_text()
    last_segm = log_text.rsplit("segm evaluation:", 1)[1]
    for size, suffix in (("small", "s"), ("medium", "m"), ("large", "l")):
        match = re.search(rf"\(AP\) @\[ IoU=0\.50:0\.95 \| area=\s*{size} \| maxDets=\d+ \] = "
                          rf"(-?[\d.]+)", last_segm)
        printed = float(match.group(1))
        value = metrics[f"val/segm_mAP_{suffix}"]
        assert (value is None) == (printed == -1.0), (size, printed, value)
        if value is not None:
            assert value == pytest.approx(printed, abs=1e-3)
