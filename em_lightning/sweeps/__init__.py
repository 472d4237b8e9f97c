"""Random hyperparameter search with Hydra's Optuna sweeper.

``python -m em_lightning.train -m task=vesicles hparams_search=vesicles_random`` samples the
space of ``conf/hparams_search/<task>_random.yaml`` (``sampler.TrialSeededRandomSampler``),
keeps the study in ``<sweep dir>/optuna.db`` so an interrupted sweep continues where it stopped
(``resume.SweepResume``), and keeps ``summary.{csv,md,png}`` and ``best_experiment.yaml`` of
the sweep directory current as trials finish (``callbacks.SweepSummary``).

Nothing is imported here: ``train.main`` imports ``sweeps.trial`` on every run, and plain runs
should not pay for importing optuna.
"""
