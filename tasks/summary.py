"""The end-of-run summary: best params, validation score, test scores next to the baseline,
the registry decision, the MLflow run id and the command that opens the MLflow UI."""

from __future__ import annotations

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table
from sweepflow.tasks.drift import DriftReport
from sweepflow.tasks.evaluate import EvalResult
from sweepflow.tasks.register import RegistryResult
from sweepflow.tasks.sweep_report import SweepResult
from sweepflow.tasks.versions import DataVersion

from sweepflow import tracking
from sweepflow.config import SweepflowConfig


class PipelineSummary(BaseModel):
    run_id: str
    experiment: str
    tracking_uri: str
    metric: str
    sweep: SweepResult | None = None  # None: skipped
    evaluation: EvalResult | None = None
    ui_command: str
    registry: RegistryResult | None = None  # None: registry.enabled=false (or skipped)
    data_version: DataVersion | None = None
    drift: DriftReport | None = None
    skipped: str | None = None  # why nothing was trained (sweep.on_unchanged=skip)


def _ui(uri: str) -> str:
    return uri if uri.startswith(("http://", "https://")) else \
        f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1"


def summarize(config: SweepflowConfig, sweep: SweepResult, evaluation: EvalResult,
              run: tracking.Tracker, registry: RegistryResult | None = None,
              version: DataVersion | None = None, drift: DriftReport | None = None
              ) -> PipelineSummary:
    return PipelineSummary(run_id=run.run_id, experiment=run.experiment, tracking_uri=run.uri,
                           metric=config.sweep.metric, sweep=sweep, evaluation=evaluation,
                           registry=registry, ui_command=_ui(run.uri), data_version=version,
                           drift=drift)


def skipped_summary(config: SweepflowConfig, run: tracking.Tracker, version: DataVersion,
                    reason: str) -> PipelineSummary:
    return PipelineSummary(run_id=run.run_id, experiment=run.experiment, tracking_uri=run.uri,
                           metric=config.sweep.metric, ui_command=_ui(run.uri),
                           data_version=version, skipped=reason)


def print_summary(summary: PipelineSummary, console: Console | None = None) -> None:
    console = console or Console()
    if summary.sweep is None or summary.evaluation is None:
        console.print(f"skipped: {summary.skipped}; MLflow run {summary.run_id} records the "
                      "check", soft_wrap=True, highlight=False)
        return
    s, e = summary.sweep, summary.evaluation
    console.rule(f"[bold]sweep {s.study}")
    counts = ", ".join(f"{n} {k}" for k, n in s.counts.items() if n)
    console.print(f"trials this run: {counts}; optimizer steps: {s.steps}; "
                  f"wall time {s.wall_seconds:.0f} s")
    console.print(f"best trial #{s.best_number}: {summary.metric} = {s.best_value:.4f}")
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in s.best_params.items())
    console.print(f"best params: {params}")
    table = Table(title="test split")
    table.add_column("metric")
    table.add_column("model", justify="right")
    table.add_column("baseline (TF-IDF + LR)", justify="right")
    for key, value in e.model.model_dump().items():
        table.add_row(key, f"{value:.4f}", f"{getattr(e.baseline, key):.4f}")
    console.print(table)
    if e.warning:
        console.print(f"[yellow]{e.warning}[/yellow]", soft_wrap=True, highlight=False)
    console.print(f"MLflow run: {summary.run_id} (experiment '{summary.experiment}')")
    console.print(f"model: {e.model_uri}")
    if summary.registry is not None:
        print_registry(summary.registry, console)
    console.print(f"open the UI: [bold]{summary.ui_command}[/bold]  (or: sweepflow ui)")


def print_registry(r: RegistryResult, console: Console) -> None:
    color = {"promoted": "green", "kept_champion": "yellow"}.get(r.decision, "red")
    champion = ("no champion yet" if r.champion_version is None else
                f"champion is v{r.champion_version} (models:/{r.model_name}@champion)")
    console.print(f"registry: {r.model_name} v{r.version} ({r.metric} {r.score:.4f}) "
                  f"[{color}]{r.decision}[/{color}]: {r.reason}; {champion}")
