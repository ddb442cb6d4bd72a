"""Scheduled runs: serve the pipeline as a Prefect deployment on the config's schedule.

Each scheduled run is a full pipeline run (its own MLflow parent run); whether it continues the
study or starts a fresh one is `sweep.continue_study`, as for `sweepflow run`.
"""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from prefect import serve
from prefect.schedules import Cron, Interval, Schedule
from prefect.types.entrypoint import EntrypointType

from sweepflow.config import ConfigError, SweepflowConfig
from sweepflow.usererrors import UserError

START_SERVER = ("start one with `make prefect-server` and "
                "`export PREFECT_API_URL=http://127.0.0.1:4200/api`")


class ServeError(UserError):
    """There is no Prefect server to serve on; the message says how to start one."""

    kind = "serve error"


def pipeline_schedule(config: SweepflowConfig) -> Schedule:
    """The Prefect schedule of `schedule.cron` or `schedule.interval` (seconds)."""
    sched = config.schedule
    try:
        ZoneInfo(sched.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"bad value for 'schedule.timezone': unknown time zone "
                          f"{sched.timezone!r} (e.g. UTC, Europe/Berlin)") from None
    if sched.cron:
        try:
            return Cron(sched.cron, timezone=sched.timezone)
        except ValueError as err:
            raise ConfigError(f"bad value for 'schedule.cron': {err}") from None
    if sched.interval:
        return Interval(timedelta(seconds=sched.interval), timezone=sched.timezone)
    raise ConfigError("serving needs a schedule: set schedule.cron (e.g. "
                      "schedule.cron='0 3 * * *') or schedule.interval in seconds "
                      "(e.g. schedule.interval=86400)")


def prefect_api() -> str:
    """The URL of the Prefect server to serve on. A temporary server (no PREFECT_API_URL)
    does not run the scheduler, so the deployment would never get a run."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise ServeError(f"serving needs a Prefect server: {START_SERVER}")
    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=10)
    except httpx.TransportError as err:
        raise ServeError(f"no Prefect server answers at PREFECT_API_URL={url} ({err}); "
                         f"{START_SERVER}") from None
    return url


def serve_pipeline(config: SweepflowConfig, name: str | None = None) -> None:
    """Register the deployment `pipeline/<name>` and run its scheduled runs until stopped.

    The resolved config is the deployment's parameter, so a run sees the YAML as it was when
    serving started. One run at a time: a sweep that overruns its slot delays the next one.
    Each run starts in a fresh `python -m prefect.engine` that imports the flow by module
    path (flow.serve would pickle the flow by value and lose its annotations' names).
    """
    schedule = pipeline_schedule(config)
    from sweepflow.flows.pipeline import (
        pipeline_flow,  # torch & co. load only once the config is good
    )

    deployment = pipeline_flow.to_deployment(
        name=name or config.tracking.experiment,
        schedules=[schedule],
        parameters={"config": config.model_dump(mode="json")},
        description=f"sweepflow pipeline, experiment {config.tracking.experiment!r}",
        tags=["sweepflow", config.tracking.experiment],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    serve(deployment, limit=1)
