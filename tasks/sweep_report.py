"""Sweep report: the study's best trial, trial counts, and optuna.visualization plots
(interactive HTML and PNG) logged to the sweep's parent run for comparison."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import matplotlib.pyplot as plt
import optuna
from optuna.trial import FrozenTrial, TrialState
from prefect import task
from pydantic import BaseModel
from sweepflow.tasks.pruning import SIGNAL_ATTR
from sweepflow.tasks.sweep import BASIS_ATTR, StudyRef, basis, best_on_basis, trial_model_dir
from sweepflow.tasks.tokenize import TokenizedData

from sweepflow import cache, tracking
from sweepflow.config import SweepflowConfig
from sweepflow.console import report
from sweepflow.storage import open_storage
from sweepflow.usererrors import UserError

log = logging.getLogger(__name__)

PLOTS = {
    "optimization_history": "plot_optimization_history",
    "param_importances": "plot_param_importances",
    "parallel_coordinate": "plot_parallel_coordinate",
    "intermediate_values": "plot_intermediate_values",
}


class SweepResult(BaseModel):
    study: str
    best_number: int
    best_value: float
    best_params: dict[str, Any]
    model_dir: str
    counts: dict[str, int]  # this run's trials by state
    study_counts: dict[str, int]  # all trials of the study by state
    other_data_trials: int = 0  # trials of the study on another training basis
    steps: int  # optimizer steps spent by this run's trials
    wall_seconds: float


class NoCompleteTrial(UserError):
    """No trial of the sweep completed, so there is no model to evaluate."""

    kind = "sweep error"


def count_states(states: list[str]) -> dict[str, int]:
    return {s: states.count(s) for s in ("complete", "pruned", "failed")}


def _state_name(state: TrialState) -> str:
    return {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}.get(state, "failed")


def log_plots(tracker: tracking.Tracker, study: optuna.Study) -> list[str]:
    """Each plot as HTML (plotly) and PNG (matplotlib backend) under sweep/ on the run; a plot
    that does not apply (importances need two complete trials) is skipped. Returns the names
    of the plots written."""
    written = []
    for name, fn in PLOTS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the matplotlib backend is "experimental"
                fig = getattr(optuna.visualization, fn)(study)
                ax = getattr(optuna.visualization.matplotlib, fn)(study)
                if name == "intermediate_values" and SIGNAL_ATTR in study.user_attrs:
                    fig.update_layout(yaxis_title=study.user_attrs[SIGNAL_ATTR])
                    ax.set_ylabel(study.user_attrs[SIGNAL_ATTR])
                tracker.log_figure(fig, f"sweep/{name}.html")
                ax.figure.set_size_inches(8, 5)
                ax.figure.tight_layout()
                tracker.log_figure(ax.figure, f"sweep/{name}.png")
            written.append(name)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            log.info("skipped %s: %s", name, err)
        finally:
            plt.close("all")
    return written


def trials_table(study: optuna.Study) -> Any:
    cols = ("number", "state", "value", "params", "duration", "datetime_start")
    return study.trials_dataframe(attrs=cols)


def wall_seconds(study_trials: list[FrozenTrial], numbers: set[int]) -> float:
    """Wall time of the trials `numbers`: first start to last end. Workers run trials side
    by side, so this is not the sum of their durations."""
    mine = [t for t in study_trials if t.number in numbers and t.datetime_start is not None]
    ends = [t.datetime_complete for t in mine if t.datetime_complete is not None]
    if not mine or not ends:
        return 0.0
    return (max(ends) - min(t.datetime_start for t in mine)).total_seconds()


def summarize_sweep(config: SweepflowConfig, ref: StudyRef, tokens: TokenizedData,
                    trials: list[Any], tracker: tracking.Tracker) -> SweepResult:
    """The study's best trial on this run's training basis and the folder of its model."""
    study_name = ref.name
    study = optuna.load_study(study_name=study_name,
                              storage=open_storage(ref.storage, config.sweep))
    key = basis(tokens)
    best = best_on_basis(study, key)
    if best is None:
        errors = [t.error for t in trials if getattr(t, "error", None)]
        raise NoCompleteTrial(f"study '{study_name}' has no complete trial on this data"
                              + (f"; first error: {errors[0]}" if errors else ""))
    model_dir = trial_model_dir(ref.models, key, best.number)
    problem = cache.check(model_dir) if model_dir.exists() else "it is missing"
    if problem:
        raise NoCompleteTrial(
            f"the model of trial {best.number}, the best of study '{study_name}' on this data, "
            f"cannot be used ({model_dir}: {problem}); start a fresh study with "
            "sweep.continue_study=false or another sweep.study_name")
    wall = wall_seconds(study.trials, {t.number for t in trials})
    result = SweepResult(
        study=study_name, best_number=best.number, best_value=best.value,
        best_params=best.params, model_dir=str(model_dir),
        counts=count_states([t.state for t in trials]),
        study_counts=count_states([_state_name(t.state) for t in study.trials]),
        other_data_trials=sum(t.user_attrs.get(BASIS_ATTR) != key for t in study.trials),
        steps=sum(t.steps for t in trials), wall_seconds=wall,
    )
    if tracker.run_id:
        log_sweep(tracker, config.sweep.metric, study, result)
    return result


def log_sweep(tracker: tracking.Tracker, metric: str, study: optuna.Study,
              result: SweepResult) -> None:
    metrics = {
        metric: result.best_value, "sweep/best_value": result.best_value,
        "sweep/best_trial": result.best_number, "sweep/wall_seconds": result.wall_seconds,
        "sweep/optimizer_steps": result.steps,
        **{f"sweep/n_{k}": v for k, v in result.counts.items()},
        **{f"sweep/study_n_{k}": v for k, v in result.study_counts.items()},
    }
    tracker.log(metrics=metrics, tags={"optuna.best_trial": str(result.best_number),
                                       "optuna.best_params": str(result.best_params)})
    tracker.log_text(trials_table(study).to_csv(index=False), "sweep/trials.csv")
    written = log_plots(tracker, study)
    skipped = [name for name in PLOTS if name not in written]
    if skipped:  # e.g. importances before two complete trials: say so on the run
        tracker.log(tags={"sweep.skipped_plots": ",".join(skipped)})


@task(name="summarize-sweep")
def summarize_sweep_task(config: SweepflowConfig, study: StudyRef, tokens: TokenizedData,
                         trials: list[Any], tracker: tracking.Tracker) -> SweepResult:
    result = summarize_sweep(config, study, tokens, trials, tracker)
    if result.other_data_trials:
        report.info(f"study '{result.study}' also holds {result.other_data_trials} trials "
                    "trained on other data, model or tokenization: the best is chosen among "
                    "the trials on this run's data only")
    return result
