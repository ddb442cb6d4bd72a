"""The sweep summary's wall time is wall time: first trial start to last trial end, so
trials run side by side by parallel workers are not added up."""

from __future__ import annotations

from datetime import datetime, timedelta

import optuna
from optuna.distributions import FloatDistribution
from sweepflow.tasks.sweep_report import wall_seconds

T0 = datetime(2026, 1, 1, 3, 0, 0)


def _trial(start: float, end: float) -> optuna.trial.FrozenTrial:
    return optuna.trial.FrozenTrial(
        number=0, trial_id=0, state=optuna.trial.TrialState.COMPLETE, value=0.5,
        values=None, datetime_start=T0 + timedelta(seconds=start),
        datetime_complete=T0 + timedelta(seconds=end), params={"lr": 1e-4},
        distributions={"lr": FloatDistribution(1e-5, 1e-3, log=True)}, user_attrs={},
        system_attrs={}, intermediate_values={})


def test_overlapping_trials_count_once(tmp_path):
    """Two workers: trials 0 and 1 overlap (0-100 s, 20-120 s), trial 2 runs 110-150 s;
    trial 3 belongs to another run of the study. Real Optuna storage (SQLite)."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}",
                                direction="maximize")
    for start, end in ((0, 100), (20, 120), (110, 150), (4000, 4100)):
        study.add_trial(_trial(start, end))
    assert wall_seconds(study.trials, {0, 1, 2}) == 150.0  # not 100 + 100 + 40 = 240
    assert wall_seconds(study.trials, {3}) == 100.0
    assert wall_seconds(study.trials, set()) == 0.0
