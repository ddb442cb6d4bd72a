"""The console: what a user reads, and the library noise kept off it.

A run prints its data and cleaning summary, one progress bar and one outcome line per trial,
and the final summary. Those lines go to the `sweepflow.report` logger: plain on the console,
and to the Prefect flow run's log like every other task log. Library banners, tips, progress
bars of loaders and warnings a user can do nothing about stay off the console unless
`sweepflow -v`. Nothing here runs at import: the CLI entry point calls `configure`.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

REPORT = "sweepflow.report"
report = logging.getLogger(REPORT)

# Loggers that print banners and tips at INFO (Lightning's "GPU available", its litlogger tip,
# MLflow's database migrations, Optuna's "A new study created", transformers' load report).
# Lightning and Optuna set their top loggers to INFO when imported, so the levels go on the
# loggers below them that do the talking.
QUIET_LEVELS = {
    "lightning.pytorch.utilities.rank_zero": logging.WARNING,
    "lightning.fabric.utilities.rank_zero": logging.WARNING,
    "optuna.storages._rdb.storage": logging.WARNING, "optuna.study.study": logging.WARNING,
    "optuna.storages._in_memory": logging.WARNING,
    "mlflow": logging.ERROR, "transformers": logging.ERROR,
    "datasets": logging.ERROR, "huggingface_hub": logging.ERROR, "alembic": logging.WARNING,
    "httpx": logging.WARNING,
}
# Warnings raised inside libraries about their own internals.
QUIET_WARNING_MODULES = r"(lightning|mlflow|transformers|torch|torchmetrics|optuna|datasets|" \
                        r"pydantic|prefect|sklearn|pandas|matplotlib)(\..*)?$"

QUIET_ENV = {
    # Flow/task run chatter, and the tracebacks Prefect logs for a failed task before the
    # CLI prints its one-line error: UI only.
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "CRITICAL",
    "MLFLOW_LOGGING_LEVEL": "ERROR",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # With a tracking server, MLflow writes "🏃 View run … / 🧪 View experiment …" to stdout
    # at the end of every run (parent, trials, evaluation): `sweepflow ui` shows them all.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
ENV = {
    "PREFECT_LOGGING_EXTRA_LOGGERS": "sweepflow",  # our logs reach the Prefect UI too
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    "TOKENIZERS_PARALLELISM": "false",
    # The temporary server's telemetry heartbeat fails offline ("database is locked").
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # A busy 2-core machine can take longer than Prefect's 20 s to start the temporary server.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "MPLBACKEND": "Agg",
}


def openmp_wait_policy(load: float, cores: int) -> str | None:
    """`OMP_WAIT_POLICY` for this process, read when torch loads (the CLI loads it later).

    On a machine already full of other work (1-minute load average >= its cores) OpenMP
    threads should sleep at a barrier: spinning ones fight the other load for the cores, and a
    step was 5x slower at load 8 on 2 cores. Otherwise OpenMP's own policy (spin a while,
    then sleep) is faster: PASSIVE cost 1.25x on an idle machine, and beside one niced busy
    process spinning lost nothing (docs/performance.md)."""
    return "PASSIVE" if load >= cores else None


def apply_openmp_wait_policy() -> None:
    """Set `OMP_WAIT_POLICY` for this process (before torch loads) unless the environment
    sets it."""
    if "OMP_WAIT_POLICY" not in os.environ and (policy := openmp_wait_policy(*machine_load())):
        os.environ["OMP_WAIT_POLICY"] = policy


def machine_load() -> tuple[float, int]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform
        load = 0.0
    return load, cores or 1


_verbose: list[bool] = []


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is when a line is logged (a test runner or a terminal
    multiplexer may swap it after the CLI configured the console)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout  # not setStream: it flushes the old stream, maybe closed
        super().emit(record)


def is_verbose() -> bool:
    """Whether the CLI was started with -v (tracebacks of user errors are shown)."""
    return bool(_verbose and _verbose[0])


def configure(verbose: bool = False) -> None:
    """Set up the console for one CLI command (a user's own environment settings win)."""
    _verbose[:] = [verbose]
    for key, value in (ENV | ({} if verbose else QUIET_ENV)).items():
        os.environ.setdefault(key, value)
    apply_openmp_wait_policy()
    if verbose:
        logging.getLogger("lightning.pytorch").propagate = False  # it has its own handler
        return
    for name, level in QUIET_LEVELS.items():
        logging.getLogger(name).setLevel(level)
    warnings.filterwarnings("ignore", module=QUIET_WARNING_MODULES)
    if not any(isinstance(h, _StdoutHandler) for h in report.handlers):  # once per process
        handler = _StdoutHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        report.addHandler(handler)
    report.setLevel(logging.INFO)
