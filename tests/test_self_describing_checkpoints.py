"""predict/evaluate with ``ckpt_path=`` alone: the model settings come from the checkpoint's
record; contradicting or missing settings are one-line errors; export writes one file that
predicts alone like the original checkpoint with the full command."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.helpers import run_entry

TRAIN = ["task=vesicles", "experiment=tiny", "logger=csv", "eval_train=false",
         "trainer.max_epochs=1", "model.detector.roi_head.bbox_head.fc_out_channels=96"]


@pytest.fixture(scope="module")
def trained(tiny_vesicles: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One tiny training through the entry point (``python -m em_lightning.train``), so that
    the record holds the command's overrides as a user's run does."""
    from em_lightning.cli import launch
    from em_lightning.train import main

    base = tmp_path_factory.mktemp("self_describing")
    run_dir = base / "train"
    old = sys.argv
    sys.argv = ["em_lightning.train", *TRAIN, f"data.root={tiny_vesicles}",
                f"paths.root_dir={base}", f"hydra.run.dir={run_dir}"]
    try:
        launch(main, "train")
    finally:
        sys.argv = old
    return {"ckpt": run_dir / "checkpoints" / "last.ckpt", "root": tiny_vesicles, "base": base}


def _predict(trained: dict, name: str, ckpt: Path, extra: list[str], capsys) -> pd.DataFrame:
    out = trained["base"] / name
    code, text = run_entry("predict", [f"ckpt_path={ckpt}", f"input={trained['root']}/images",
                                       f"output={out}", f"paths.root_dir={trained['base']}",
                                       "score_thr=0.05", "overlays=false", *extra], capsys)
    assert code == 0, text
    return pd.read_csv(out / "objects.csv"), text


FULL = ["task=vesicles", "experiment=tiny", "model.detector.roi_head.bbox_head.fc_out_channels=96"]


def _full_command_objects(trained: dict, capsys) -> pd.DataFrame:
    """The objects of predict with the full command (task, experiment, model override), once."""
    if "full" not in trained:
        trained["full"], _ = _predict(trained, "full", trained["ckpt"], FULL, capsys)
    return trained["full"]


def test_record_keeps_the_training_command(trained):
    record = torch.load(trained["ckpt"], map_location="cpu", weights_only=False)[
        "em_lightning_record"]
    assert record["overrides"][:len(TRAIN)] == TRAIN
    assert record["config"]["model"]["detector"]["roi_head"]["bbox_head"][
        "fc_out_channels"] == 96


def test_predict_with_ckpt_path_alone_equals_the_full_command(trained, capsys):
    full = _full_command_objects(trained, capsys)
    short, text = _predict(trained, "short", trained["ckpt"], [], capsys)
    assert len(full) > 0
    pd.testing.assert_frame_equal(short, full)
    assert "model settings from" in text and "experiment=tiny" in text
    # the training-only overrides are not replayed
    line = next(ln for ln in text.splitlines() if "model settings from" in ln)
    assert "trainer.max_epochs" not in line and "logger=" not in line and "data.root" not in line


def test_evaluate_with_ckpt_path_alone_scores_the_training_data(trained, capsys):
    metrics = {}
    for name, extra in (("short", []), ("full", [*FULL, f"data.root={trained['root']}"])):
        out = trained["base"] / f"eval_{name}"
        code, text = run_entry("evaluate", [f"ckpt_path={trained['ckpt']}",
                                            f"paths.root_dir={trained['base']}",
                                            f"hydra.run.dir={out}", *extra], capsys)
        assert code == 0, text
        metrics[name] = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics["short"] == metrics["full"]
    assert 0.0 <= metrics["short"]["val"]["segm_mAP"] <= 1.0


def test_contradicting_model_override_is_one_message(trained, capsys):
    code, text = run_entry("predict", [f"ckpt_path={trained['ckpt']}",
                                       f"input={trained['root']}/images",
                                       f"output={trained['base'] / 'bad'}",
                                       f"paths.root_dir={trained['base']}",
                                       "model.detector.backbone.depth=50"], capsys)
    assert code == 1
    assert "Traceback" not in text
    assert text.count("error:") == 1, text  # (the progress bar may share its line)
    errors = [ln.split("error:", 1)[1] for ln in text.splitlines() if "error:" in ln]
    assert "does not fit" in errors[0]
    assert "model.detector.backbone.depth=18" in errors[0]
    assert "this command has model.detector.backbone.depth=50" in errors[0]


def test_checkpoint_without_record_needs_task(trained, tmp_path, capsys):
    bare = tmp_path / "zoo.pth"
    state = torch.load(trained["ckpt"], map_location="cpu", weights_only=False)["state_dict"]
    torch.save({"state_dict": state, "meta": {}}, bare)
    code, text = run_entry("predict", [f"ckpt_path={bare}", f"input={trained['root']}/images",
                                       f"paths.root_dir={tmp_path}"], capsys)
    assert code == 1
    assert "Traceback" not in text
    assert (f"error: {bare} records no training config: pass task=vesicles|nanorods and the "
            "model overrides") in text


def test_exported_model_predicts_alone_like_the_checkpoint(trained, tmp_path, capsys):
    model = tmp_path / "elsewhere" / "model.pt"
    code, text = run_entry("export", [f"ckpt_path={trained['ckpt']}", f"output={model}",
                                      f"paths.root_dir={tmp_path}"], capsys)
    assert code == 0, text
    saved = torch.load(model, map_location="cpu", weights_only=False)
    assert set(saved) == {"state_dict", "em_lightning_record"}  # no optimizer or loop state
    original = torch.load(trained["ckpt"], map_location="cpu", weights_only=False)
    assert "optimizer_states" in original
    assert saved["state_dict"].keys() == original["state_dict"].keys()
    assert all(torch.equal(saved["state_dict"][k], v) for k, v in original["state_dict"].items())
    described = saved["em_lightning_record"]["export"]
    assert described["classes"] == ["big_vesicle", "small_vesicle", "hole"]
    assert described["image_size"] == 128 and described["normalisation"] == "auto"
    assert model.stat().st_size < trained["ckpt"].stat().st_size
    full = _full_command_objects(trained, capsys)
    alone, _ = _predict(trained, "exported", model, [], capsys)
    pd.testing.assert_frame_equal(alone, full)


def test_replayed_overrides_are_those_that_shape_the_model(tmp_path):
    from em_lightning.models.trained_config import checkpoint_overrides, run_dir_overrides

    record = {"config": {"task_name": "nanorods"}, "overrides": [
        "task=nanorods", "experiment=tiny", "model=oriented_rcnn", "+model.detector.x=1",
        "model.detector.backbone.depth=34", "model.load_from=coco", "data.classes=[nanorod]",
        "data.image_size=256", "data.root=/data/rods", "data.format=dota", "data.batch_size=4",
        "trainer.max_epochs=50", "logger=wandb", "seed=3", "paths.root_dir=/x"]}
    shaping = ["task=nanorods", "experiment=tiny", "model=oriented_rcnn", "+model.detector.x=1",
               "model.detector.backbone.depth=34", "data.classes=[nanorod]",
               "data.image_size=256"]
    assert checkpoint_overrides(record, "predict", ["input=a.tif"]) == shaping
    # evaluate scores the training data, unless given another dataset (its format then too)
    assert checkpoint_overrides(record, "evaluate", []) == \
        [*shaping, "data.root=/data/rods", "data.format=dota"]
    assert checkpoint_overrides(record, "evaluate", ["data.root=/other"]) == shaping
    # the user's own values win: theirs are not doubled
    assert checkpoint_overrides(record, "predict", ["experiment=vesicles_default_cpu",
                                                    "data.image_size=512"]) == \
        [o for o in shaping if not o.startswith(("experiment=", "data.image_size="))]
    # an older record: its task alone, or the run directory's .hydra/overrides.yaml
    older = {"config": {"task_name": "nanorods"}}
    assert checkpoint_overrides(older, "predict", []) == ["task=nanorods"]
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    (tmp_path / "run" / ".hydra" / "overrides.yaml").write_text(
        "- task=nanorods\n- experiment=tiny\n- trainer.max_epochs=1\n")
    found = run_dir_overrides(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert found == ["task=nanorods", "experiment=tiny", "trainer.max_epochs=1"]
    assert checkpoint_overrides({**older, "overrides": found}, "predict", []) == \
        ["task=nanorods", "experiment=tiny"]
    assert run_dir_overrides(tmp_path / "elsewhere" / "model.pt") is None


def test_older_checkpoint_uses_its_run_directorys_command(trained, capsys):
    ckpt = torch.load(trained["ckpt"], map_location="cpu", weights_only=False)
    del ckpt["em_lightning_record"]["overrides"]  # as written before the record kept them
    older = trained["ckpt"].parent / "older.ckpt"
    torch.save(ckpt, older)
    objects, text = _predict(trained, "older", older, [], capsys)
    pd.testing.assert_frame_equal(objects, _full_command_objects(trained, capsys))
    assert "the training command from its run's .hydra/" in text
