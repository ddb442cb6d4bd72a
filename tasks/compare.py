"""Compare sweeps: the last N parent runs (`sweep-<study>`, no parent) side by side, and one
figure overlaying their best-so-far curves from the Optuna studies.

A study continued over several runs is cut per run: each sweep's curve holds only the trials
whose child runs (tag optuna.trial_number) belong to that parent run, renumbered from 0.
"""

from __future__ import annotations

import ast
import logging
import os
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from mlflow.entities import Run
from pydantic import BaseModel, ConfigDict
from rich.table import Table

from sweepflow import tracking
from sweepflow.usererrors import UserError

log = logging.getLogger(__name__)

SWEEP_PREFIX = "sweep-"


class SweepRow(BaseModel):
    """One sweep as the comparison table shows it (None: not logged on that run)."""

    model_config = ConfigDict(frozen=True)
    run_id: str
    name: str
    study: str | None
    started: datetime
    status: str
    counts: dict[str, int | None]
    metric: str
    best_value: float | None
    best_trial: int | None
    test_f1: float | None
    baseline_f1: float | None
    registry: str | None
    best_params: str | None
    wall_seconds: float | None
    digest: str | None
    cost: dict[str, float] = {}
    data_change: str | None = None  # tasks/versions.py: rows added/removed since the last run
    champion_f1: float | None = None  # the champion on this sweep's test rows
    drift: str | None = None
    skipped: str | None = None  # the run's cost/* metrics (sweepflow/cost.py)


def last_sweeps(client: tracking.MlflowClient, experiment_id: str, n: int) -> list[Run]:
    """The newest n parent runs named sweep-*, oldest first."""
    runs: list[Run] = []
    token = None
    while len(runs) < n:
        page = client.search_runs([experiment_id], f"attributes.run_name LIKE '{SWEEP_PREFIX}%'",
                                  order_by=["attributes.start_time DESC"],
                                  max_results=max(n, 100), page_token=token)
        runs += [r for r in page if tracking.PARENT_TAG not in r.data.tags]
        token = page.token
        if not token:
            break
    return runs[:n][::-1]


def sweep_row(run: Run) -> SweepRow:
    m, tags = run.data.metrics, run.data.tags
    count = {s: None if f"sweep/n_{s}" not in m else int(m[f"sweep/n_{s}"])
             for s in ("complete", "pruned", "failed")}
    registry = (f"v{tags['registry.version']} {tags.get('registry.decision', '')}"
                if "registry.version" in tags else None)
    if registry and "registry.p_value" in tags:
        registry += (f"\nMcNemar p={float(tags['registry.p_value']):.3g} vs "
                     f"v{tags.get('registry.vs_version', '?')}")
    best_trial = m.get("sweep/best_trial")
    return SweepRow(
        run_id=run.info.run_id, name=run.info.run_name, study=tags.get("optuna.study"),
        started=datetime.fromtimestamp(run.info.start_time / 1000), status=run.info.status,
        counts=count, metric=run.data.params.get("sweep.metric", "best value"),
        best_value=m.get("sweep/best_value"),
        best_trial=None if best_trial is None else int(best_trial),
        test_f1=m.get("test/f1_macro"), baseline_f1=m.get("test/baseline_f1_macro"),
        registry=registry, best_params=format_params(tags.get("optuna.best_params")),
        wall_seconds=m.get("sweep/wall_seconds"), digest=tags.get("data.digest"),
        cost={k.removeprefix("cost/"): v for k, v in m.items() if k.startswith("cost/")},
        data_change=_change(m, tags), champion_f1=m.get("test/champion_f1_macro"),
        drift=_drift(m, tags), skipped=tags.get("sweepflow.skipped") or None,
    )


def _change(m: dict[str, float], tags: dict[str, str]) -> str | None:
    """Rows added / removed per split since the previous run (data.* of tasks/versions.py)."""
    if "data/rows_added" not in m:
        return None
    if not tags.get("data.previous_run"):
        return "first version"
    parts = [f"{s} +{m.get(f'data/{s}_added', 0):.0f}"
             + (f" -{m[f'data/{s}_removed']:.0f}" if m.get(f"data/{s}_removed") else "")
             for s in ("train", "validation", "test")]
    return f"+{m['data/rows_added']:.0f} -{m['data/rows_removed']:.0f}\n" + "\n".join(parts)


def _drift(m: dict[str, float], tags: dict[str, str]) -> str | None:
    if "drift.flagged" not in tags:
        return None
    flagged = tags["drift.flagged"]
    tvd = f"labels TVD {m['drift/label_tvd']:.3f}" if "drift/label_tvd" in m else ""
    return (f"FLAGGED: {flagged}" if flagged else "no drift") + (f"\n{tvd}" if tvd else "")


def format_params(raw: str | None) -> str | None:
    """The optuna.best_params tag (a dict's repr) as one `name=value` per line."""
    try:
        params = ast.literal_eval(raw) if raw else None
    except (ValueError, SyntaxError):
        return raw
    if not isinstance(params, dict):
        return raw
    return "\n".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in params.items())


def _num(value: float | None, fmt: str = ".4f") -> str:
    return "-" if value is None else format(value, fmt)


def _pair(cost: dict[str, float], cpu: str, wall: str) -> str:
    """CPU and wall seconds, and their ratio: the cores used on average."""
    if cpu not in cost or wall not in cost:
        return "-"
    cores = cost[cpu] / cost[wall] if cost[wall] > 0 else 0.0
    return f"{cost[cpu]:.0f} s / {cost[wall]:.0f} s ({cores:.1f} cores)"


def comparison_table(rows: list[SweepRow]) -> Table:
    """Sweeps as columns (oldest left), fields as rows, like MLflow's run comparison."""
    table = Table(title=f"last {len(rows)} sweeps", show_lines=True)
    table.add_column("")
    for row in rows:
        table.add_column(f"{row.name}\n{row.run_id[:8]}")
    fields: dict[str, Any] = {
        "started": lambda r: f"{r.started:%Y-%m-%d %H:%M}",
        "status": lambda r: r.status,
        "trials complete/pruned/failed": lambda r: " / ".join(
            "-" if v is None else str(v) for v in r.counts.values()),
        "best validation score (study)": lambda r: f"{_num(r.best_value)} {r.metric}"
        + ("" if r.best_trial is None else f" (trial #{r.best_trial})"),
        "test f1_macro: model": lambda r: _num(r.test_f1),
        "test f1_macro: baseline": lambda r: _num(r.baseline_f1),
        "test f1_macro: champion (same rows)": lambda r: _num(r.champion_f1),
        "data change since previous run": lambda r: r.data_change or "-",
        "drift (drift.threshold)": lambda r: r.drift or "-",
        "skipped (unchanged)": lambda r: "yes" if r.skipped else "-",
        "registry": lambda r: r.registry or "-",
        "best params": lambda r: r.best_params or "-",
        "wall time": lambda r: "-" if r.wall_seconds is None else f"{r.wall_seconds:.0f} s",
        "cost: CPU / wall (whole run)": lambda r: _pair(r.cost, "cpu_seconds",
                                                        "wall_seconds"),
        "cost: CPU / wall (trials)": lambda r: _pair(r.cost, "trials_cpu_seconds",
                                                     "trials_wall_seconds"),
        "peak memory (run / trials)": lambda r: " / ".join(
            "-" if k not in r.cost else f"{r.cost[k]:.0f} MB"
            for k in ("peak_rss_mb", "trials_peak_rss_mb")),
        "data digest": lambda r: r.digest or "-",
    }
    for label, cell in fields.items():
        table.add_row(label, *(cell(r) for r in rows))
    return table


def run_study(client: tracking.MlflowClient, run: Run, storage: str) -> optuna.Study | None:
    """An in-memory study named after the run, holding only that run's trials."""
    name = run.data.tags.get("optuna.study")
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        log.warning("run %s: study '%s' is not in %s", run.info.run_id, name, storage)
        return None
    children = client.search_runs(
        [run.info.experiment_id], f"tags.{tracking.PARENT_TAG} = '{run.info.run_id}'",
        max_results=10_000)
    numbers = {int(c.data.tags["optuna.trial_number"]) for c in children
               if "optuna.trial_number" in c.data.tags}
    trials = [t for t in study.get_trials(deepcopy=False) if not numbers or t.number in numbers]
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line
    try:
        view = optuna.create_study(study_name=f"{run.info.run_name} {run.info.run_id[:8]}",
                                   direction=study.direction)
    finally:
        optuna.logging.set_verbosity(verbosity)
    view.add_trials(trials)
    return view


def write_history(studies: list[optuna.Study], target_name: str, html: Path | None = None,
                  png: Path | None = None) -> list[Path]:
    """optuna's optimization-history plot of several studies, written atomically."""
    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the matplotlib backend is "experimental"
        if html is not None:
            fig = optuna.visualization.plot_optimization_history(studies,
                                                                 target_name=target_name)
            fig.update_layout(title="best so far per sweep")
            written.append(_atomic(html, lambda tmp: fig.write_html(
                tmp, include_plotlyjs="cdn")))
        if png is not None:
            import matplotlib.pyplot as plt  # the CLI picks a backend (MPLBACKEND)

            ax = optuna.visualization.matplotlib.plot_optimization_history(
                studies, target_name=target_name)
            ax.set_title("best so far per sweep")
            ax.figure.set_size_inches(11, 5.5)
            ax.figure.tight_layout()
            written.append(_atomic(png, lambda tmp: ax.figure.savefig(tmp, format="png",
                                                                      dpi=100)))
            plt.close("all")
    return written


def _atomic(path: Path, write: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class NoFigure(UserError):
    """No sweep to draw: none has a complete trial in the study storage."""

    kind = "no figure"


def write_comparison(client: tracking.MlflowClient, runs: list[Run], storage: str,
                     html: Path | None, png: Path | None) -> list[Path]:
    """The best-so-far overlay of the runs' own trials (sweeps with no complete trial or no
    study in `storage` are left out)."""
    studies = [s for r in runs if (s := run_study(client, r, storage)) is not None
               and any(t.state == optuna.trial.TrialState.COMPLETE for t in s.trials)]
    if not studies:
        raise NoFigure(f"none of these sweeps has a complete trial in {storage}")
    metrics = {r.data.params.get("sweep.metric", "objective value") for r in runs}
    target = metrics.pop() if len(metrics) == 1 else "objective value"
    return write_history(studies, target, html, png)
