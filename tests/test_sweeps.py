"""Random hyperparameter search: a real 3-trial sweep (one trial crashes, one returns NaN) runs to
the end and writes its summary; a resumed sweep skips finished trials; sampling is reproducible
and stays inside the search space of both tasks."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
from omegaconf import DictConfig, OmegaConf, open_dict

from em_lightning.sweeps.records import (
    COMPLETE,
    FAIL,
    INTERRUPTED,
    TRIAL_FILE,
    TrialRecord,
    read_records,
    write_record,
)
from em_lightning.sweeps.sampler import TrialSeededRandomSampler
from em_lightning.sweeps.space import override_values, read_space, write_space
from em_lightning.sweeps.summary import BEST_FILE, best_experiment_yaml, best_trial
from em_lightning.sweeps.trial import (
    NonFiniteMetricError,
    prepare_trial,
    restore_start_method,
    trial_value,
)
from tests.conftest import compose_cfg

REPO = Path(__file__).resolve().parent.parent
SEED = 1  # trials 0-2 of this seed: one crash, one complete, one NaN (asserted below)
SWEEP = [
    "task=vesicles", "hparams_search=vesicles_random", "experiment=tiny", "debug=fdr", "logger=csv",
    f"hydra.sweeper.sampler.seed={SEED}",
    # an invalid option: RandomFlip needs 3 x flip_prob <= 1, so 0.5 crashes the trial
    "data.augment.flip_prob=choice(0.2,0.5)",
    # a metric the model does not report: the trial's objective is NaN
    "optimized_metric=choice(val/segm_mAP,val/missing)",
    # speed only: fewer detections of the untrained model to evaluate, no overlay pictures
    "model.detector.test_cfg.rcnn.max_per_img=20", "callbacks.overlays=null",
]
optuna.logging.set_verbosity(optuna.logging.WARNING)


def run_sweep(sweep_dir: Path, root: Path, n_trials: int) -> None:
    cmd = [sys.executable, "-m", "em_lightning.train", "-m", *SWEEP, f"paths.root_dir={root}",
           f"hydra.sweep.dir={sweep_dir}", f"hydra.sweeper.n_trials={n_trials}"]
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def load_study(sweep_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name="vesicles_random",
                             storage=f"sqlite:///{sweep_dir}/optuna.db")


def expected_params(sweep_dir: Path, numbers: list[int], seed: int = SEED) -> dict[int, dict]:
    """What the sampler draws for these trial numbers, typed as the trials received them."""
    space = read_space(sweep_dir)
    assert space is not None
    distributions, _ = create_params_from_overrides([f"{k}={v}" for k, v in space.items()])
    sampler = TrialSeededRandomSampler(seed)
    study = optuna.create_study(sampler=sampler)
    out = {}
    for number in range(max(numbers) + 1):
        trial = study.ask()
        raw = {name: trial._suggest(name, dist) for name, dist in distributions.items()}
        out[number] = override_values(f"{k}={v}" for k, v in raw.items())
    return {n: out[n] for n in numbers}


def outcome(params: dict) -> str:
    if params["data.augment.flip_prob"] == 0.5:
        return "crash"
    return "nan" if params["optimized_metric"] == "val/missing" else "ok"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    run_sweep(root / "sweep", root, n_trials=3)
    return root / "sweep"


def test_sweep_runs_every_trial_and_records_failures(sweep: Path):
    records = read_records(sweep)
    assert [r.trial for r in records] == [0, 1, 2]
    kinds = {}
    for record in records:
        kinds[record.trial] = kind = outcome(record.params)
        assert record.run_dir == str(sweep / str(record.trial))
        if kind == "ok":
            assert record.status == COMPLETE and math.isfinite(record.value)
        else:
            assert record.status == FAIL and record.value is None
            assert record.error.startswith("AssertionError" if kind == "crash"
                                           else "NonFiniteMetricError")
    assert sorted(kinds.values()) == ["crash", "nan", "ok"], "pick a SEED covering all three"
    states = {t.number: t.state.name for t in load_study(sweep).trials}
    assert states == {r.trial: r.status for r in records}


def test_sampled_values_are_reproducible_and_in_range(sweep: Path):
    records = read_records(sweep)
    expected = expected_params(sweep, [r.trial for r in records])
    for record in records:
        assert record.params == expected[record.trial]
        assert 0.002 <= record.params["model.optimizer.lr"] <= 0.05
        assert record.params["data.batch_size"] in (1, 2, 4)


def test_summary_tables_plot_and_best_experiment(sweep: Path):
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [row["trial"] for row in rows] == ["0", "1", "2"]
    assert {"status", "val/segm_mAP", "model.optimizer.lr", "run_dir", "error"} <= set(rows[0])
    markdown = (sweep / "summary.md").read_text()
    assert markdown.count("\n| ") == 4 and "1 complete, 2 failed" in markdown
    assert (sweep / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    best = best_trial(read_records(sweep), "maximize")
    text = (sweep / BEST_FILE).read_text()
    assert text.startswith("# @package _global_") and f"trial {best.trial}," in text
    experiments = sweep.parent / "conf" / "experiment"
    experiments.mkdir(parents=True)
    (experiments / "best.yaml").write_text(text)
    cfg = compose_cfg(["experiment=best", f"hydra.searchpath=[file://{sweep.parent / 'conf'}]"])
    assert cfg.model.optimizer.lr == best.params["model.optimizer.lr"]
    assert list(cfg.data.augment.scale_range) == best.params["data.augment.scale_range"]
    assert cfg.model.detector.backbone.depth == 18  # experiment=tiny, which the sweep ran
    assert "hparams_search" not in text and "root_dir" not in text


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_resume_skips_finished_trials_and_reruns_interrupted(sweep: Path, tmp_path: Path):
    resumed = tmp_path / "sweep"
    shutil.copytree(sweep, resumed)
    before = {n: (resumed / str(n) / TRIAL_FILE).read_bytes() for n in range(3)}
    # a sweep killed during trials 3 and 4 leaves them RUNNING in the study; trial 3's job
    # still finished (as SLURM jobs do), trial 4 was cut off
    study = load_study(resumed)
    by_kind = {outcome(read_records(resumed)[t.number].params): t for t in study.trials}
    for number, kind in ((3, "ok"), (4, "crash")):
        study.enqueue_trial(by_kind[kind].params)
        assert study.ask(fixed_distributions=by_kind[kind].distributions).number == number
        (resumed / str(number)).mkdir()
    done = json.loads((resumed / str(by_kind["ok"].number) / TRIAL_FILE).read_text())
    write_record(resumed / "3", TrialRecord(**{**done, "trial": 3, "value": 0.5}))

    run_sweep(resumed, sweep.parent, n_trials=6)  # 4 finished: the cut-off one again + 1 new

    assert {n: (resumed / str(n) / TRIAL_FILE).read_bytes() for n in range(3)} == before
    records = {r.trial: r for r in read_records(resumed)}
    assert sorted(records) == [0, 1, 2, 3, 4, 5, 6]
    assert records[4].status == INTERRUPTED
    assert records[5].params == records[by_kind["crash"].number].params
    assert records[5].status == FAIL
    assert records[6].params == expected_params(resumed, [6])[6]  # as if never interrupted
    trials = load_study(resumed).trials
    assert [t.state.name for t in trials] == [r.status if r.status != INTERRUPTED else FAIL
                                              for r in records.values()]
    assert trials[3].value == 0.5 and trials[4].user_attrs["interrupted"]
    assert len(list(csv.DictReader((resumed / "summary.csv").open()))) == 7
    assert "trial 3," in (resumed / BEST_FILE).read_text()


@pytest.mark.parametrize("task", ["vesicles", "nanorods"])
def test_search_space_of_each_task_samples_inside_its_bounds(task: str):
    cfg = compose_cfg([f"task={task}", f"hparams_search={task}_random"])
    sweeper = cfg.hydra.sweeper
    assert sweeper.direction == "maximize" and sweeper.max_failure_rate == 1.0
    assert sweeper.storage.startswith("sqlite:///") and sweeper.n_trials > 0
    lines = [f"{k}={v}" for k, v in sweeper.params.items()]
    distributions, fixed = create_params_from_overrides(lines)
    assert not fixed and len(distributions) >= 15
    for key in distributions:  # every searched key exists in the task's config
        assert OmegaConf.select(cfg, key, throw_on_missing=False) is not None, key
    draws = []
    for seed in (sweeper.sampler.seed, sweeper.sampler.seed, 7):
        study = optuna.create_study(sampler=TrialSeededRandomSampler(seed))
        draws.append([study.ask(fixed_distributions=distributions).params for _ in range(16)])
        for params in draws[-1]:
            for name, value in params.items():
                dist = distributions[name]
                assert dist._contains(dist.to_internal_repr(value)), (name, value)
            assert 3 * params["data.augment.flip_prob"] <= 1.0
    assert draws[0] == draws[1] and draws[0] != draws[2]


def test_trial_joins_its_wandb_sweep_group(tmp_path: Path):
    cfg = compose_cfg(["task=vesicles", "hparams_search=vesicles_random"])
    sweep_dir = tmp_path / "2026-01-01_00-00-00"
    overrides = ["model.optimizer.lr=0.01", "data.augment.scale_range=[0.8,1.25]", "task=vesicles"]
    write_space(sweep_dir, {"model.optimizer.lr": "tag(log, interval(0.002, 0.05))",
                            "data.augment.scale_range": "choice([0.9,1.1], [0.8,1.25])"})
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.sweep.dir = str(sweep_dir)
        cfg.hydra.runtime.output_dir = str(sweep_dir / "7")
        cfg.hydra.job.num = 0
        cfg.hydra.overrides.task = overrides
    task_cfg = DictConfig({k: v for k, v in cfg.items() if k != "hydra"})
    previous = HydraConfig.instance().cfg
    try:
        HydraConfig.instance().set_config(cfg)
        prepare_trial(task_cfg)
    finally:
        HydraConfig.instance().cfg = previous
    wandb = task_cfg.logger.wandb
    assert wandb.group == "vesicles-sweep-2026-01-01_00-00-00" and wandb.name == "trial-7"
    assert OmegaConf.to_container(wandb.config) == {
        "model": {"optimizer": {"lr": 0.01}}, "data": {"augment": {"scale_range": [0.8, 1.25]}}}


def test_nan_or_missing_metric_fails_the_trial():
    assert trial_value({"val/segm_mAP": 0.25}, "val/segm_mAP") == 0.25
    for metrics in ({"val/segm_mAP": math.nan}, {"val/bbox_mAP": 0.1}):
        with pytest.raises(NonFiniteMetricError, match="val/segm_mAP"):
            trial_value(metrics, "val/segm_mAP")


def test_best_trial_follows_direction():
    records = [TrialRecord(0, COMPLETE, "val/loss", 0.5, {"x": 1}),
               TrialRecord(1, FAIL, "val/loss", None, {"x": 2}),
               TrialRecord(2, COMPLETE, "val/loss", 0.2, {"x": 3}, groups={"task": "nanorods"})]
    assert best_trial(records, "maximize").trial == 0
    best = best_trial(records, "minimize")
    assert best.trial == 2
    text = best_experiment_yaml(best, 3, Path("s"))
    assert "override /task: nanorods" in text and "x: 3" in text


def test_trial_in_a_joblib_worker_can_start_dataloader_workers():
    import multiprocessing

    import joblib.externals.loky  # noqa: F401  (registers the "loky" start method)

    before = multiprocessing.get_start_method(allow_none=True)
    try:
        multiprocessing.set_start_method("loky", force=True)  # what a loky worker inherits
        restore_start_method()
        assert multiprocessing.get_start_method() == multiprocessing.get_all_start_methods()[0]
    finally:
        multiprocessing.set_start_method(before, force=True)
