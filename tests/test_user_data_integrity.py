"""The user's data is never written to: the demo generator only fills the task's own demo
folder, and every entry point leaves a user dataset byte-identical, also when it fails."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from hydra.utils import instantiate

from em_lightning.data.demo import MARKER, ensure_demo
from em_lightning.data.errors import DataError
from tests.conftest import compose_cfg


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file below ``root`` (and the empty folders), by relative path."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return out


def datamodule(tmp_path: Path, *overrides: str, task: str = "vesicles"):
    cfg = compose_cfg([f"task={task}", "experiment=tiny", f"paths.root_dir={tmp_path}",
                       *overrides], tmp_path)
    return instantiate(cfg.data)


@pytest.fixture
def kitti_user_set(tiny_nanorods: Path, tmp_path: Path) -> Path:
    """A LabelImg-KITTI dataset laid out as the README says (no COCO files in it)."""
    root = tmp_path / "my_rods"
    shutil.copytree(tiny_nanorods / "kitti", root / "kitti")
    shutil.copytree(tiny_nanorods / "images", root / "images")
    return root


@pytest.fixture
def cvat_export(tiny_vesicles: Path, tmp_path: Path) -> Path:
    """A COCO export with CVAT's file names (annotations/instances_<split>.json)."""
    root = tmp_path / "cvat"
    shutil.copytree(tiny_vesicles / "images", root / "images")
    (root / "annotations").mkdir()
    for split in ("train", "val"):
        shutil.copy(tiny_vesicles / "annotations" / f"{split}.json",
                    root / "annotations" / f"instances_{split}.json")
    return root


def test_a_kitti_user_dataset_loads_and_gets_no_demo_files(kitti_user_set, tmp_path):
    before = snapshot(kitti_user_set)
    dm = datamodule(tmp_path, f"data.root={kitti_user_set}", "data.format=kitti",
                    task="nanorods")
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 4 and len(dm.datasets["val"]) == 2
    assert snapshot(kitti_user_set) == before
    assert not (tmp_path / "data").exists()  # nor was a demo set made anywhere else


def test_a_cvat_coco_export_is_an_error_that_names_the_setting(cvat_export, tmp_path):
    before = snapshot(cvat_export)
    dm = datamodule(tmp_path, f"data.root={cvat_export}")
    with pytest.raises(DataError) as err:
        dm.prepare_data()
        dm.setup("fit")
    message = str(err.value)
    assert "annotations/train.json not found" in message
    assert "found annotations/instances_train.json: pass " \
           "\"data.dataset.ann_file='annotations/instances_{split}.json'\"" in message
    assert "it contains annotations/, images/" in message
    assert snapshot(cvat_export) == before
    # and the hint works
    dm = datamodule(tmp_path, f"data.root={cvat_export}",
                    "data.dataset.ann_file='annotations/instances_{split}.json'")
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 4
    assert snapshot(cvat_export) == before


def test_a_typo_in_data_root_creates_nothing_and_suggests_the_folder(tiny_vesicles, tmp_path):
    typo = tiny_vesicles.parent / (tiny_vesicles.name + "s")
    dm = datamodule(tmp_path, f"data.root={typo}")
    with pytest.raises(DataError, match=r"data.root: folder not found; did you mean "
                                        rf"data.root={tiny_vesicles}\?"):
        dm.prepare_data()
        dm.setup("fit")
    assert not typo.exists()


def test_kitti_without_classes_txt_is_not_repaired(kitti_user_set, tmp_path):
    for txt in kitti_user_set.rglob("classes.txt"):
        txt.unlink()
    before = snapshot(kitti_user_set)
    dm = datamodule(tmp_path, f"data.root={kitti_user_set}", "data.format=kitti",
                    task="nanorods")
    with pytest.raises(DataError, match=r"kitti/train/classes.txt not found"):
        dm.prepare_data()
        dm.setup("fit")
    assert snapshot(kitti_user_set) == before


def test_kitti_classes_txt_at_the_root_is_accepted(kitti_user_set, tmp_path):
    names = (kitti_user_set / "kitti" / "train" / "classes.txt").read_text()
    for txt in kitti_user_set.rglob("classes.txt"):
        txt.unlink()
    (kitti_user_set / "classes.txt").write_text(names)
    dm = datamodule(tmp_path, f"data.root={kitti_user_set}", "data.format=kitti",
                    task="nanorods")
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 4


def test_a_dota_folder_read_as_coco_points_at_data_format(tiny_nanorods, tmp_path):
    root = tmp_path / "dota_only"
    shutil.copytree(tiny_nanorods / "dota", root / "dota")
    shutil.copytree(tiny_nanorods / "images", root / "images")
    dm = datamodule(tmp_path, f"data.root={root}", task="nanorods")
    with pytest.raises(DataError, match=r"found dota/: pass data.format=dota"):
        dm.setup("fit")


def test_the_demo_set_is_generated_once_in_the_demo_folder_only(tmp_path):
    dm = datamodule(tmp_path)
    demo = Path(dm.root)
    assert demo == tmp_path / "data" / "vesicles_tiny" and not demo.exists()
    dm.prepare_data()
    assert (demo / "annotations" / "train.json").is_file() and (demo / MARKER).is_file()
    before = snapshot(demo)
    dm.setup("fit")
    datamodule(tmp_path).prepare_data()
    assert snapshot(demo) == before
    assert [p.name for p in demo.parent.iterdir()] == ["vesicles_tiny"]  # no partial folders


def test_a_foreign_folder_at_the_demo_root_is_left_alone(tmp_path):
    demo = tmp_path / "data" / "vesicles_tiny"
    demo.mkdir(parents=True)
    (demo / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="was not made by the demo generator"):
        datamodule(tmp_path).prepare_data()
    assert snapshot(demo) == {"notes.txt": hashlib.sha256(b"mine").hexdigest()}


def test_an_interrupted_demo_generation_leaves_no_half_dataset(tmp_path):
    demo = tmp_path / "demo"

    def dies_halfway(folder: Path) -> None:
        (folder / "annotations").mkdir()
        (folder / "annotations" / "val.json").write_text("{}")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ensure_demo(demo, demo, dies_halfway)
    assert not demo.exists() and list(tmp_path.iterdir()) == []
    assert ensure_demo(demo, demo, lambda f: (f / "annotations").mkdir() or
                       (f / "annotations" / "train.json").write_text("{}"))
    assert (demo / "annotations" / "train.json").is_file()
    assert not ensure_demo(tmp_path / "elsewhere", demo, dies_halfway)  # not the demo root


def test_every_entry_point_leaves_a_user_dataset_untouched(kitti_user_set, tmp_path):
    """train, evaluate, predict, analyze and convert on a KITTI user dataset; then the broken
    cases through train: the dataset's files are byte-identical and nothing new is in it."""
    from em_lightning.analyze import analyze
    from em_lightning.data.convert import main as convert
    from em_lightning.evaluate import evaluate
    from em_lightning.predict import predict
    from em_lightning.train import train

    before = snapshot(kitti_user_set)
    data = [f"data.root={kitti_user_set}", "data.format=kitti", f"paths.root_dir={tmp_path}"]
    common = ["task=nanorods", "experiment=tiny", *data]
    train(compose_cfg([*common, "logger=csv", "eval_train=false", "trainer.max_epochs=1"],
                      output_dir=tmp_path / "train"))
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and snapshot(kitti_user_set) == before
    evaluate(compose_cfg([*common, f"ckpt_path={ckpt}"], config="evaluate",
                         output_dir=tmp_path / "eval"))
    predict(compose_cfg([*common, f"ckpt_path={ckpt}", f"input={kitti_user_set / 'images'}",
                         "score_thr=0.0"], config="predict", output_dir=tmp_path / "pred"))
    analyze(compose_cfg([*common, "split=val"], config="analyze", output_dir=tmp_path / "an"))
    assert convert(["--from", "kitti", "--to", "dota", "--input",
                    str(kitti_user_set / "kitti" / "val"), "--images",
                    str(kitti_user_set / "images" / "val"), "--output",
                    str(tmp_path / "dota")]) == 0
    assert snapshot(kitti_user_set) == before
    assert not (tmp_path / "data").exists()  # no demo set was made for these runs

    (kitti_user_set / "kitti" / "train" / "classes.txt").unlink()
    (kitti_user_set / "kitti" / "val" / "classes.txt").unlink()
    broken = snapshot(kitti_user_set)
    for overrides in ([], ["data.format=coco"], ["data.format=dota"]):
        with pytest.raises(DataError):
            train(compose_cfg([*common, *overrides, "logger=csv"],
                              output_dir=tmp_path / "broken"))
        assert snapshot(kitti_user_set) == broken
