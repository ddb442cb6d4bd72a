"""The `sweepflow` command. Every command takes the same --config FILE and key=value options,
so each finds the same tracking store."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Annotated

os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "tasks,sweepflow")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import typer  # noqa: E402
from rich.console import Console  # noqa: E402

from sweepflow.config import ConfigError, SweepflowConfig, load_config  # noqa: E402

app = typer.Typer(help="Fine-tune transformer text classifiers in Optuna sweeps, "
                       "run as Prefect flows, tracked in MLflow.", no_args_is_help=True)
console = Console()

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Experiment YAML that "
                                                "overlays conf/base.yaml.")]
Overrides = Annotated[list[str] | None, typer.Argument(help="key=value overrides, e.g. "
                                                        "sweep.n_trials=2")]


def _config(config: Path | None, overrides: list[str] | None) -> SweepflowConfig:
    try:
        return load_config(config, overrides or [])
    except ConfigError as err:
        console.print(f"[red]config error:[/red] {err}")
        raise typer.Exit(2) from None


def _sigterm_as_interrupt() -> None:
    """SIGTERM unwinds like Ctrl-C, so open MLflow runs are closed as KILLED."""
    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


@app.command()
def run(config: ConfigOpt = None, overrides: Overrides = None) -> None:
    """Run the pipeline: ingest -> tokenize -> sweep -> evaluate."""
    cfg = _config(config, overrides)
    _sigterm_as_interrupt()
    from flows.pipeline import pipeline_flow
    from tasks.ingest import DataError
    from tasks.summary import print_summary

    try:
        summary = pipeline_flow(cfg)
    except DataError as err:
        console.print(f"[red]data error:[/red] {err}")
        raise typer.Exit(1) from None
    print_summary(summary, console)


@app.command()
def ui(config: ConfigOpt = None, overrides: Overrides = None,
       port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000) -> None:
    """Start the MLflow UI on the project's tracking store, bound to 127.0.0.1."""
    from sweepflow import tracking

    cfg = _config(config, overrides)
    uri = tracking.tracking_uri(cfg)
    tracking.setup(cfg)
    console.print(f"MLflow UI on [bold]http://127.0.0.1:{port}[/bold] (store {uri}); Ctrl-C stops")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--host", "127.0.0.1", "--port", str(port)]
    os.execv(sys.executable, cmd)


def main() -> None:  # pragma: no cover - console script entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
