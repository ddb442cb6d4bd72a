"""Sweep report: the study's best trial, trial counts, and optuna.visualization plots
(interactive HTML and PNG) logged to the sweep's parent run for comparison."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from prefect import get_run_logger, task  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from sweepflow import tracking  # noqa: E402
from sweepflow.config import SweepflowConfig  # noqa: E402
from sweepflow.paths import best_model_dir  # noqa: E402
from tasks.sweep import SIGNAL_ATTR  # noqa: E402

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
    steps: int  # optimizer steps spent by this run's trials
    wall_seconds: float


class NoCompleteTrial(RuntimeError):
    pass


def count_states(states: list[str]) -> dict[str, int]:
    return {s: states.count(s) for s in ("complete", "pruned", "failed")}


def _state_name(state: TrialState) -> str:
    return {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}.get(state, "failed")


def write_plots(study: optuna.Study, out: Path) -> list[Path]:
    """Each plot as HTML (plotly) and PNG (matplotlib backend); a plot that does not apply
    (importances need two complete trials) is skipped."""
    written = []
    for name, fn in PLOTS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fig = getattr(optuna.visualization, fn)(study)
                ax = getattr(optuna.visualization.matplotlib, fn)(study)
                if name == "intermediate_values" and SIGNAL_ATTR in study.user_attrs:
                    fig.update_layout(yaxis_title=study.user_attrs[SIGNAL_ATTR])
                    ax.set_ylabel(study.user_attrs[SIGNAL_ATTR])
                fig.write_html(out / f"{name}.html", include_plotlyjs="cdn")
                ax.figure.set_size_inches(8, 5)
                ax.figure.tight_layout()
                ax.figure.savefig(out / f"{name}.png", dpi=100)
                plt.close("all")
            written += [out / f"{name}.html", out / f"{name}.png"]
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            log.info("skipped %s: %s", name, err)
            plt.close("all")
    return written


def trials_table(study: optuna.Study) -> Any:
    cols = ("number", "state", "value", "params", "duration", "datetime_start")
    return study.trials_dataframe(attrs=cols)


def summarize_sweep(config: SweepflowConfig, study_name: str, storage: str,
                    trials: list[Any], parent_run_id: str | None,
                    started: float | None = None) -> SweepResult:
    study = optuna.load_study(study_name=study_name, storage=storage)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    if not complete:
        errors = [t.error for t in trials if getattr(t, "error", None)]
        raise NoCompleteTrial(f"study '{study_name}' has no complete trial"
                              + (f"; first error: {errors[0]}" if errors else ""))
    best = study.best_trial
    wall = sum(t.seconds for t in trials) if started is None else time.time() - started
    result = SweepResult(
        study=study_name, best_number=best.number, best_value=best.value,
        best_params=best.params, model_dir=str(best_model_dir(study_name)),
        counts=count_states([t.state for t in trials]),
        study_counts=count_states([_state_name(t.state) for t in study.trials]),
        steps=sum(t.steps for t in trials), wall_seconds=wall,
    )
    if parent_run_id:
        log_sweep(config, study, result, parent_run_id)
    return result


def log_sweep(config: SweepflowConfig, study: optuna.Study, result: SweepResult,
              run_id: str) -> None:
    client = tracking.MlflowClient(tracking.tracking_uri(config))
    now = tracking.now_ms()
    metrics = {
        config.sweep.metric: result.best_value, "sweep/best_value": result.best_value,
        "sweep/best_trial": result.best_number, "sweep/wall_seconds": result.wall_seconds,
        "sweep/optimizer_steps": result.steps,
        **{f"sweep/n_{k}": v for k, v in result.counts.items()},
        **{f"sweep/study_n_{k}": v for k, v in result.study_counts.items()},
    }
    client.log_batch(run_id, metrics=[tracking.Metric(k, float(v), now, 0)
                                      for k, v in metrics.items()])
    client.log_batch(run_id, tags=[tracking.RunTag("optuna.best_trial", str(result.best_number)),
                                   tracking.RunTag("optuna.best_params", str(result.best_params))])
    out = tracking.artifact_dir(f"sweep-{run_id}")
    trials_table(study).to_csv(out / "trials.csv", index=False)
    written = {p.stem for p in write_plots(study, out)}
    skipped = [name for name in PLOTS if name not in written]
    if skipped:  # e.g. importances before two complete trials: say so on the run
        client.set_tag(run_id, "sweep.skipped_plots", ",".join(skipped))
    client.log_artifacts(run_id, str(out), "sweep")


@task(name="summarize-sweep")
def summarize_sweep_task(config: SweepflowConfig, study: Any, trials: list[Any],
                         parent_run_id: str | None) -> SweepResult:
    result = summarize_sweep(config, study.name, study.storage, trials, parent_run_id)
    get_run_logger().info("best trial %d: %s=%.4f %s", result.best_number, study.metric,
                          result.best_value, result.best_params)
    return result
