"""Training and sweep pieces on the tiny BERT: real Lightning, real Optuna, real MLflow."""

from __future__ import annotations

import json
import math
from typing import Any

import optuna
import pytest
from sweepflow.tasks.ingest import ingest
from sweepflow.tasks.pruning import make_pruner, trial_steps
from sweepflow.tasks.sweep import (
    SEED_TAG,
    PrunedAwareGPSampler,
    create_study,
    grid_space,
    make_sampler,
    run_trial,
    suggest,
    trial_seed,
)
from sweepflow.tasks.tokenize import tokenize
from sweepflow.tasks.train import fit, resolve_precision

from sweepflow.config import ConfigError, load_config
from sweepflow.tracking import Tracker


def test_precision_auto_follows_the_hardware():
    import torch

    assert resolve_precision("32-true") == "32-true"
    cpu_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    expected = "bf16-mixed" if cpu_bf16 and not torch.cuda.is_available() else None
    if expected:
        assert resolve_precision("auto") == expected
    else:
        assert resolve_precision("auto") in {"16-mixed", "32-true", "bf16-mixed"}


def test_fit_is_reproducible_with_a_seed(tiny_config):
    tokens = tokenize(tiny_config, ingest(tiny_config))
    cfg = tiny_config.train.model_copy(update={"max_epochs": 1})
    _, a = fit(tokens, cfg, 7, "val/f1_macro", "max", progress=False)
    _, b = fit(tokens, cfg, 7, "val/f1_macro", "max", progress=False)
    assert a.best_value == pytest.approx(b.best_value) and a.steps == b.steps > 0


def test_samplers_and_pruners_from_config(tiny_overrides):
    grid = load_config(overrides=[*tiny_overrides, "sweep.sampler=grid",
                                  "sweep.space={warmup_ratio: {type: categorical, "
                                  "choices: [0.0, 0.1]}, max_epochs: {type: int, low: 1, "
                                  "high: 2}}"])
    assert grid_space(grid.sweep) == {"warmup_ratio": [0.0, 0.1], "max_epochs": [1, 2]}
    assert isinstance(make_sampler(grid.sweep, 0), optuna.samplers.GridSampler)
    rnd = load_config(overrides=[*tiny_overrides, "sweep.sampler=random",
                                 "sweep.pruner=hyperband"])
    assert isinstance(make_sampler(rnd.sweep, 0), optuna.samplers.RandomSampler)
    assert isinstance(make_pruner(rnd.sweep), optuna.pruners.HyperbandPruner)
    with pytest.raises(ValueError, match="sweep.space.learning_rate: the grid sampler"):
        grid_space(load_config(overrides=["sweep.sampler=grid"]).sweep)


def test_gp_sampler_searches_the_default_space():
    """sweep.sampler=gp on the default space (log float, float, categorical): past its start-up
    trials, Optuna's GP proposes every parameter itself."""
    cfg = load_config(overrides=["sweep.sampler=gp", "sweep.n_trials=6"]).sweep
    study = optuna.create_study(direction="maximize", sampler=make_sampler(cfg, 3))
    study.optimize(lambda t: -abs(suggest(t, cfg)["learning_rate"] - 2e-4), n_trials=5)
    assert isinstance(study.sampler, optuna.samplers.GPSampler)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 5
    relative = [any(k.startswith("gp:") or "relative" in k for k in t.system_attrs)
                for t in study.trials]
    assert relative == [False, False, True, True, True]


def test_gp_sampler_learns_from_pruned_trials():
    """Optuna's own GPSampler fits complete trials only: where the complete trials point to a
    region the pruner stops, it asks there again and again. sweep.sampler=gp shows it each
    pruned trial as a poor result, so it turns away after a few."""
    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        trial.report(0.1, 1)
        if x > 0.7:  # the complete trials rise towards here; every trial here is pruned
            raise optuna.TrialPruned()
        return x

    def pruned(sampler: optuna.samplers.BaseSampler) -> int:
        study = optuna.create_study(direction="maximize", sampler=sampler)
        study.optimize(objective, n_trials=12)
        return sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)

    for seed in (0, 1):
        assert pruned(optuna.samplers.GPSampler(seed=seed, n_startup_trials=3)) >= 8
        assert pruned(PrunedAwareGPSampler(seed=seed, n_startup_trials=3)) <= 4


def test_pruners_scale_with_the_sweep_and_the_trial(tiny_overrides):
    def sweep(*extra: str):
        return load_config(overrides=[*tiny_overrides, *extra]).sweep

    assert [sweep(f"sweep.n_trials={n}").startup_trials for n in (1, 4, 12, 30)] == [2, 2, 4, 5]
    assert sweep("sweep.pruner_startup_trials=1").startup_trials == 1
    # the samplers' random start-up trials: a third of the run's, at least 2, or as set
    assert make_sampler(sweep("sweep.n_trials=12"), 0)._n_startup_trials == 4
    assert make_sampler(sweep("sweep.n_trials=12", "sweep.sampler=tpe"), 0)._n_startup_trials == 4
    assert make_sampler(sweep("sweep.sampler_startup_trials=1"), 0)._n_startup_trials == 1
    median = make_pruner(sweep("sweep.n_trials=12", "sweep.pruner=median"))
    assert isinstance(median, optuna.pruners.MedianPruner) and median._n_startup_trials == 4
    halving = make_pruner(sweep(), steps=50)  # the default: first rung at 25 % of a trial
    assert isinstance(halving, optuna.pruners.SuccessiveHalvingPruner)
    assert (halving._min_resource, halving._reduction_factor) == (13, 3)
    pct = make_pruner(sweep("sweep.pruner=percentile", "sweep.pruner_percentile=70"))
    assert isinstance(pct, optuna.pruners.PercentilePruner) and pct._percentile == 70
    with pytest.raises(ConfigError, match="sweep.pruner_percentile"):
        sweep("sweep.pruner_percentile=100")


def test_suggest_follows_space(tiny_config):
    study = optuna.create_study()
    params = suggest(study.ask(), tiny_config.sweep)
    assert set(params) == set(tiny_config.sweep.space)
    lr = tiny_config.sweep.space["learning_rate"]
    assert lr.low <= params["learning_rate"] <= lr.high


def test_run_trial_reports_and_continues_study(tiny_config):
    tokens = tokenize(tiny_config, ingest(tiny_config))
    ref = create_study(tiny_config)
    first = run_trial(tiny_config, tokens, ref, Tracker.open(tiny_config))
    second = run_trial(tiny_config, tokens, create_study(tiny_config), Tracker.open(tiny_config))
    assert first.state == "complete" and first.value is not None
    assert second.number == 1 and second.params != first.params
    study = optuna.load_study(study_name=ref.name, storage=ref.storage)
    assert len(study.trials[0].intermediate_values) >= 1  # reported at each validation


def test_a_trial_trains_with_the_seed_or_its_own(tiny_overrides):
    same = load_config(overrides=tiny_overrides)
    own = load_config(overrides=[*tiny_overrides, "sweep.seed_per_trial=true"])
    study = optuna.create_study()
    first, second = study.ask(), study.ask()
    assert trial_seed(same, study, first) == trial_seed(same, study, second) == same.seed
    assert (trial_seed(own, study, first), trial_seed(own, study, second)) == (own.seed,
                                                                             own.seed + 1)
    # A retry of a dead worker's trial (as Optuna's RetryFailedTrialCallback queues it) trains
    # with the seed of the trial it retries: same params, same draw.
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.WAITING, params={}, distributions={},
        system_attrs={"failed_trial": 1, "retry_history": [1]}))
    retry = study.ask()
    assert retry.number == 2 and trial_seed(own, study, retry) == own.seed + 1


def test_trials_log_the_seed_they_trained_with(tiny_overrides):
    config = load_config(overrides=[*tiny_overrides, "sweep.seed_per_trial=true"])
    tokens = tokenize(config, ingest(config))
    tracker = Tracker.open(config)
    results = [run_trial(config, tokens, create_study(config), tracker) for _ in range(2)]
    seeds = [tracker.client.get_run(r.run_id).data.tags[SEED_TAG] for r in results]
    assert seeds == [str(config.seed), str(config.seed + 1)]


def _prune(overrides: list[str], warmup: float, min_validations: int = 1
           ) -> tuple[Any, dict[int, float]]:
    """A trial against a study whose one complete trial reported 0.0 at every step: any real
    -val/loss is below it, so a median pruner prunes the trial at the first report it may."""
    config = load_config(overrides=[*overrides, "sweep.pruner=percentile",
                                    f"sweep.pruner_min_validations={min_validations}",
                                    "sweep.pruner_percentile=50", "sweep.pruner_startup_trials=1",
                                    "sweep.pruner_signal=loss", f"sweep.pruner_warmup={warmup}",
                                    "train.val_checks_per_epoch=2",
                                    f"sweep.study_name=warmup-{warmup}-{min_validations}"])
    tokens = tokenize(config, ingest(config))
    ref = create_study(config)
    study = optuna.load_study(study_name=ref.name, storage=ref.storage)
    from sweepflow.tasks.sweep import BASIS_ATTR, basis

    study.add_trial(optuna.trial.create_trial(  # on the same data: the pruner compares them
        value=0.0, intermediate_values=dict.fromkeys(range(1000), 0.0),
        user_attrs={BASIS_ATTR: basis(tokens)}))
    result = run_trial(config, tokens, ref, Tracker.open(config))
    return result, optuna.load_study(study_name=ref.name, storage=ref.storage
                                     ).trials[1].intermediate_values


def test_loss_signal_prunes_after_the_warmup_and_never_at_the_end(tiny_overrides):
    trial, reported = _prune(tiny_overrides, 0.0)
    assert trial.state == "pruned" and trial.steps == min(reported)  # at the first report
    assert all(v < 0 for v in reported.values())  # -val/loss: the study maximizes
    trial, reported = _prune(tiny_overrides, 0.7)
    total = trial_steps(load_config(overrides=tiny_overrides).train, trial_rows(tiny_overrides))
    assert trial.state == "pruned" and len(reported) > 1  # reported, not pruned, before 70 %
    assert trial.steps == min(s for s in reported if s >= math.ceil(0.7 * total)) < total
    trial, reported = _prune(tiny_overrides, 0.95)  # no validation is left after the warm-up
    # (the last one may fall a step before the end: 7 batches, a validation every 3; early
    # stopping on the untrained tiny model's flat loss may also end the trial there)
    assert trial.state == "complete" and max(reported) <= trial.steps <= total


def test_no_trial_is_pruned_at_its_first_validation_by_default(tiny_overrides):
    """The default holds every trial past its first validation, warm-up or not: at 1 epoch x
    3 checks the first one ranked lr 2.9e-4 low, and it was the best region (issue 25)."""
    assert load_config(overrides=tiny_overrides).sweep.pruner_min_validations == 2
    trial, reported = _prune(tiny_overrides, 0.0, min_validations=2)
    assert trial.state == "pruned" and trial.steps == sorted(reported)[1]  # the 2nd report


def test_the_last_validation_never_prunes_even_a_step_before_the_end(tiny_overrides):
    """7 batches, a validation every 3: reports at steps 3, 6, 10, 13 of 14. The one at 13
    is after the warm-up (90 %: 13) and would be pruned, but no validation follows it: the
    steps are spent, so the trial completes (issue 25: "pruned at step 249 of 250")."""
    trial, reported = _prune(tiny_overrides, 0.9)
    assert max(reported) < trial_steps(load_config(overrides=tiny_overrides).train,
                                       trial_rows(tiny_overrides))
    assert trial.state == "complete"


def trial_rows(overrides: list[str]) -> int:
    config = load_config(overrides=overrides)
    return ingest(config).sizes["train"]


def test_a_study_keeps_its_pruning_signal(tiny_config):
    tokens = tokenize(tiny_config, ingest(tiny_config))
    ref = create_study(tiny_config)
    run_trial(tiny_config, tokens, ref, Tracker.open(tiny_config))
    assert optuna.load_study(study_name=ref.name, storage=ref.storage
                             ).user_attrs["pruning_signal"] == "val/f1_macro"
    loss = tiny_config.model_copy(update={"sweep": tiny_config.sweep.model_copy(
        update={"pruner_signal": "loss"})})
    with pytest.raises(ConfigError, match="sweep.pruner_signal=loss: study 'tiny'"):
        create_study(loss)


def test_the_kept_model_is_the_best_trial_on_its_data(tiny_config):
    """A better trial replaces the kept model, a worse one does not, and trials on other data
    never count: the folder always belongs to Optuna's best trial on this basis."""
    from sweepflow.tasks.sweep import (
        BASIS_ATTR,
        TrialResult,
        basis,
        best_on_basis,
        drop_beaten_models,
        keep_if_best,
        load_study,
        trial_model_dir,
    )
    from sweepflow.tasks.train import TextClassifier

    tokens = tokenize(tiny_config, ingest(tiny_config))
    ref = create_study(tiny_config)
    study = load_study(ref, tiny_config)
    key = basis(tokens)
    module = TextClassifier(tokens.model_path, list(tokens.data.label_names), tiny_config.train)
    state = module.model.state_dict()
    # A trial on other data with a far better score must not shadow this data's trials.
    study.add_trial(optuna.trial.create_trial(value=0.99, user_attrs={BASIS_ATTR: "other"}))

    def finish(value: float) -> tuple[int, bool]:
        trial = study.ask()
        trial.set_user_attr(BASIS_ATTR, key)
        result = TrialResult(number=trial.number, state="complete", value=value, params={},
                             steps=1, seconds=0.0, run_id="r")
        kept = keep_if_best(study, key, result, module, state, tokens, ref.models)
        study.tell(trial, value)
        drop_beaten_models(study, key, ref.models)
        return trial.number, kept

    first, kept = finish(0.5)
    assert kept and trial_model_dir(ref.models, key, first).is_dir()
    worse, kept = finish(0.4)
    assert not kept and not trial_model_dir(ref.models, key, worse).exists()
    better, kept = finish(0.6)
    assert kept and best_on_basis(study, key).number == better
    folders = sorted(p.name for p in trial_model_dir(ref.models, key, better).parent.iterdir())
    assert folders == [f"trial-{better}"]  # the beaten model is gone
    saved = json.loads((trial_model_dir(ref.models, key, better) / "trial.json").read_text())
    assert (saved["number"], saved["value"]) == (better, 0.6)


def test_pruning_and_warm_start_are_per_data_version(tiny_config, tiny_overrides):
    """Trials on other data never judge tonight's trials (the pruner sees only this data's
    trials), and a new data version first re-tries the previous version's best params."""
    from sweepflow.tasks.sweep import BASIS_ATTR, basis, load_study, warm_start

    config = load_config(overrides=[*tiny_overrides, "sweep.pruner=percentile",
                                    "sweep.pruner_percentile=50",
                                    "sweep.pruner_startup_trials=1", "sweep.n_trials=3"])
    tokens = tokenize(config, ingest(config))
    ref = create_study(config)
    study = optuna.load_study(study_name=ref.name, storage=ref.storage)
    for number, lr in enumerate((1e-4, 2e-4, 3e-4)):  # yesterday's data: unbeatable scores
        study.add_trial(optuna.trial.create_trial(
            value=1.0 - number / 10, params={"learning_rate": lr, "weight_decay": 0.0,
                                             "warmup_ratio": 0.0},
            distributions={
                "learning_rate": optuna.distributions.FloatDistribution(5e-5, 3e-4, log=True),
                "weight_decay": optuna.distributions.FloatDistribution(0.0, 0.1),
                "warmup_ratio": optuna.distributions.CategoricalDistribution([0.0, 0.1])},
            intermediate_values=dict.fromkeys(range(1000), 1.0),
            user_attrs={BASIS_ATTR: "yesterday"}))
    best = warm_start(config, tokens, ref)
    assert [t.number for t in best] == [0, 1]  # sweep.warm_start=2, the best first
    assert warm_start(config, tokens, ref) == []  # once per data version
    result = run_trial(config, tokens, ref, Tracker.open(config))
    assert result.state == "complete" and result.params["learning_rate"] == 1e-4
    trial = load_study(ref, config).trials[3]
    assert trial.user_attrs[BASIS_ATTR] == basis(tokens) and trial.user_attrs[
        "warm_start_from"] == "yesterday#0"


def test_a_trial_failed_under_a_running_worker_ends_killed_with_the_reason(tiny_config):
    """A worker cut off past the grace period finds its trial failed (and retried) when it
    comes back: its result is refused, its MLflow run ends KILLED (not FAILED) with the
    reason, and no model is kept for it."""
    import threading

    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState
    from sweepflow.tasks.sweep import basis, load_study, run_asked, trial_model_dir

    from sweepflow import tracking

    tokens = tokenize(tiny_config, ingest(tiny_config))
    ref = create_study(tiny_config)
    study = load_study(ref, tiny_config)
    trial = study.ask()
    reaper = optuna.storages.RDBStorage(ref.storage)
    done = threading.Event()

    def fail_once_suggested() -> None:  # what fail_stale_trials does to a silent worker
        while not done.is_set():
            frozen = reaper.get_trial(trial._trial_id)  # noqa: SLF001
            if frozen.params:
                reaper.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # noqa: SLF001
                return
            done.wait(0.05)

    watcher = threading.Thread(target=fail_once_suggested)
    watcher.start()
    try:
        result = run_asked(tiny_config, tokens, ref, study, trial,
                           Tracker.open(tiny_config))
    finally:
        done.set()
        watcher.join()
    assert result.state == "failed" and "late result refused" in result.error
    run = MlflowClient(tracking.tracking_uri(tiny_config)).get_run(result.run_id)
    assert run.info.status == "KILLED"
    assert "late result refused" in run.data.tags["error"]
    assert not trial_model_dir(ref.models, basis(tokens), trial.number).exists()
    assert reaper.get_trial(trial._trial_id).state == TrialState.FAIL  # noqa: SLF001
