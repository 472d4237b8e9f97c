"""Continue an interrupted sweep from its persistent Optuna study, skipping finished trials."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from em_lightning.sweeps.records import (
    COMPLETE,
    FAIL,
    INTERRUPTED,
    TRIAL_FILE,
    TrialRecord,
    read_record,
    write_record,
)
from em_lightning.sweeps.space import override_values

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)
# alembic 1.19 (optuna's RDB storage) logs each of its plugins at INFO when first imported:
# quiet it before anything imports optuna (hence the function-level optuna imports here)
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
DEFAULT_SUBDIR = "${hydra.job.num}"
# trial dirs of a resumed sweep continue the numbering: ${em.add:${hydra.job.num},<offset>}
OmegaConf.register_new_resolver("em.add", lambda *xs: sum(int(x) for x in xs), replace=True)


@dataclass
class ResumePlan:
    finished: int = 0  # complete, pruned or failed trials: never run again
    existing: int = 0  # all trials in the study, i.e. the next trial number
    adopted: int = 0  # finished after the sweeper died (e.g. SLURM jobs): results taken over
    requeued: list[tuple[int, dict[str, Any]]] = field(default_factory=list)


def requeue_interrupted(study: optuna.Study, sweep_dir: Path) -> ResumePlan:
    """Settle the trials a dead sweep left RUNNING/WAITING.

    A trial whose directory holds a final ``trial.json`` (its job outlived the sweeper, as SLURM
    jobs do) is told to the study with that result. Any other one is marked failed (user attr
    ``interrupted``) and its parameters are enqueued again, so it runs first, with the same
    values.
    """
    from optuna.exceptions import ExperimentalWarning
    from optuna.trial import TrialState

    plan = ResumePlan()
    storage = study._storage
    trials = study.get_trials(deepcopy=False)
    plan.existing = len(trials)
    for trial in trials:
        if trial.state not in (TrialState.RUNNING, TrialState.WAITING):
            plan.finished += 0 if trial.user_attrs.get("interrupted") else 1
            continue
        record = read_record(sweep_dir / str(trial.number))
        if trial.state == TrialState.RUNNING and record and record.status in (COMPLETE, FAIL):
            if record.status == COMPLETE:
                storage.set_trial_values(trial._trial_id, [float(record.value)])  # type: ignore
            storage.set_trial_state(trial._trial_id, TrialState[record.status])
            plan.finished += 1
            plan.adopted += 1
            continue
        params = dict(trial.params or trial.system_attrs.get("fixed_params", {}))
        storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
        storage.set_trial_state(trial._trial_id, TrialState.FAIL)
        plan.requeued.append((trial.number, params))
    with warnings.catch_warnings():  # "experimental" since optuna 1.2; pinned 2.10 here
        warnings.simplefilter("ignore", ExperimentalWarning)
        for _, params in plan.requeued:
            study.enqueue_trial(params)
    return plan


def sqlite_path(storage: str) -> Path | None:
    prefix = "sqlite:///"
    return Path(storage[len(prefix):]) if storage.startswith(prefix) else None


class SweepResume(Callback):
    """Re-running a sweep command with the same ``hydra.sweep.dir`` (hence the same
    ``hydra.sweeper.storage`` and ``study_name``) continues the study instead of starting over.

    Before the sweeper starts it: runs only the missing ``n_trials - finished`` trials; takes
    over results of trials that finished after the sweeper died; re-runs trials that were cut
    off (same values, first); names the new trial directories by their Optuna trial number, so
    they continue after the existing ones instead of overwriting ``0/``, ``1/``... Resume only
    when no process or job of the sweep is running any more.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        storage, name = config.hydra.sweeper.get("storage"), config.hydra.sweeper.get("study_name")
        if not isinstance(storage, str) or not name:
            return
        db = sqlite_path(storage)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
            if not db.exists():
                return
        import optuna

        try:
            study = optuna.load_study(study_name=name, storage=storage,
                                      sampler=optuna.samplers.RandomSampler())
        except KeyError:
            return  # a new study
        plan = requeue_interrupted(study, sweep_dir)
        for number, params in plan.requeued:
            mark_interrupted(sweep_dir / str(number), number, params)
        n_trials = int(config.hydra.sweeper.n_trials)
        remaining = max(n_trials - plan.finished, 0)
        log.info("resuming study %r in %s: %d of n_trials=%d finished (%d of them after the "
                 "last sweeper exited), %d interrupted trials re-queued, running %d more from "
                 "trial %d", name, storage, plan.finished, plan.adopted, n_trials,
                 len(plan.requeued), remaining, plan.existing)
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.sweeper.n_trials = remaining
            subdir = OmegaConf.to_container(config.hydra.sweep, resolve=False)["subdir"]
            if plan.existing and subdir == DEFAULT_SUBDIR:
                subdir = "${em.add:${hydra.job.num}," + str(plan.existing) + "}"
                config.hydra.sweep.subdir = subdir
                # trial configs are composed again from the hydra overrides: carry it there
                config.hydra.overrides.hydra.append(f"hydra.sweep.subdir='{subdir}'")


def mark_interrupted(run_dir: Path, number: int, params: dict[str, Any]) -> None:
    """Give a cut-off trial's directory a record, so the summary lists it."""
    if run_dir.is_dir() and not (run_dir / TRIAL_FILE).exists():
        typed = override_values(f"{key}={value}" for key, value in params.items())
        write_record(run_dir, TrialRecord(trial=number, status=INTERRUPTED, metric="", value=None,
                                          params=typed, run_dir=str(run_dir.resolve()),
                                          error="interrupted; re-queued on resume"))
