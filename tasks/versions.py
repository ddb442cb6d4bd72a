"""Data versions: what changed since the experiment's previous run, and whether anything did.

Every parent run logs its rows (`data/rows.json`: a short id of each row's normalised text
and its label, per split). The next run of the experiment diffs its rows against them: rows
added and removed per split, the label distribution before and after, both data digests.
One console line says it; the parent run carries it as `data/*` metrics, `data.*` tags and
`data/version.json`; `sweepflow compare` shows it per sweep.

A run whose data digest and config equal the previous (finished) run's, with a champion in
the registry, has nothing new to learn: `sweep.on_unchanged: skip` (default) ends it there.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict
from sweepflow.tasks.clean import LABEL, model_inputs, split_keys
from sweepflow.tasks.ingest import SPLITS, IngestResult, label_texts, load_ingested
from sweepflow.tasks.splits import row_ids

from sweepflow import tracking
from sweepflow.config import SweepflowConfig
from sweepflow.console import report

log = logging.getLogger(__name__)

ROWS_ARTIFACT = "data/rows.json"
VERSION_ARTIFACT = "data/version.json"
ROWS_TAG = "data.rows_logged"
SKIPPED_TAG = "sweepflow.skipped"
CONFIG_TAG = "sweepflow.config_digest"


class DataVersion(BaseModel):
    """This run's data against the experiment's previous run's."""

    model_config = ConfigDict(frozen=True)
    digest: str
    rows: dict[str, int]
    labels: dict[str, int]  # all splits, per label name
    previous_run: str | None = None
    previous_started: str | None = None
    previous_digest: str | None = None
    previous_status: str | None = None
    previous_config: str | None = None
    previous_labels: dict[str, int] | None = None
    added: dict[str, int] = {}
    removed: dict[str, int] = {}

    @property
    def changed(self) -> bool:
        return self.previous_digest != self.digest

    def line(self) -> str:
        """The console line."""
        if self.previous_run is None:
            return f"data: first version {self.digest} ({sum(self.rows.values()):,} rows)"
        since = f"since run {self.previous_run[:8]} ({self.previous_started})"
        if not self.changed:
            return f"data: unchanged {since}, version {self.digest}"
        parts = " / ".join(f"{s} {_signed(self.added.get(s, 0), self.removed.get(s, 0))}"
                           for s in SPLITS)
        added, removed = sum(self.added.values()), sum(self.removed.values())
        gone = f", -{removed:,} removed" if removed else ""
        return (f"data: +{added:,} rows{gone} {since}, {parts}; version {self.digest} "
                f"(was {self.previous_digest})")


def _signed(added: int, removed: int) -> str:
    return f"+{added:,}" + (f" -{removed:,}" if removed else "")


def rows_of(data: IngestResult) -> dict[str, Any]:
    """Each split's row ids and label names (what `data/rows.json` holds)."""
    dd = load_ingested(data)
    return {"digest": data.digest, "splits": {
        split: {"ids": row_ids(split_keys(dd[split])),
                "labels": label_texts(data, dd[split][LABEL])} for split in dd}}


def _labels(rows: dict[str, Any]) -> dict[str, int]:
    counts = Counter(label for part in rows["splits"].values() for label in part["labels"])
    return dict(sorted(counts.items()))


def diff(current: dict[str, Any], previous: dict[str, Any] | None, run: Run | None
         ) -> DataVersion:
    """Rows added and removed per split, the label distribution before and after."""
    version = DataVersion(digest=current["digest"], labels=_labels(current),
                          rows={s: len(p["ids"]) for s, p in current["splits"].items()})
    if previous is None or run is None:
        return version
    added, removed = {}, {}
    for split, part in current["splits"].items():
        now, before = set(part["ids"]), set(previous["splits"].get(split, {}).get("ids", []))
        added[split], removed[split] = len(now - before), len(before - now)
    started = datetime.fromtimestamp(run.info.start_time / 1000, tz=UTC)
    return version.model_copy(update={
        "previous_run": run.info.run_id, "previous_started": f"{started:%Y-%m-%d %H:%M} UTC",
        "previous_digest": previous["digest"], "previous_status": run.info.status,
        "previous_config": run.data.tags.get(CONFIG_TAG),
        "previous_labels": _labels(previous), "added": added, "removed": removed})


def previous_run(client: tracking.MlflowClient, experiment_id: str, run_id: str
                 ) -> Run | None:
    """The experiment's latest parent run before `run_id` that logged its rows."""
    runs = client.search_runs([experiment_id], f"tags.`{ROWS_TAG}` = 'true'",
                              order_by=["attributes.start_time DESC"], max_results=20)
    return next((r for r in runs if r.info.run_id != run_id
                 and tracking.PARENT_TAG not in r.data.tags), None)


def load_json_artifact(client: tracking.MlflowClient, run_id: str, path: str
                       ) -> dict[str, Any] | None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, path, tmp)
        except (MlflowException, OSError) as err:
            log.info("run %s has no %s (%s)", run_id, path, err)
            return None
        return json.loads(Path(local).read_text())


def record_version(tracker: tracking.Tracker, data: IngestResult) -> DataVersion:
    """Diff against the previous run, then log rows, version, metrics and tags on the
    tracker's run."""
    client = tracker.client
    current = rows_of(data)
    run = previous_run(client, tracker.experiment_id, tracker.run_id)
    previous = load_json_artifact(client, run.info.run_id, ROWS_ARTIFACT) if run else None
    version = diff(current, previous, run if previous else None)
    tracker.log_dict(current, ROWS_ARTIFACT)
    tracker.log_dict(version.model_dump(), VERSION_ARTIFACT)
    metrics = {"data/rows_added": sum(version.added.values()),
               "data/rows_removed": sum(version.removed.values()),
               **{f"data/{s}_added": n for s, n in version.added.items()},
               **{f"data/{s}_removed": n for s, n in version.removed.items()}}
    tags = {ROWS_TAG: "true", "data.digest": version.digest, "data.change": version.line(),
            "data.previous_run": version.previous_run or "",
            "data.previous_digest": version.previous_digest or ""}
    tracker.log(metrics=metrics, tags={k: v[:5000] for k, v in tags.items()})
    return version


def newest_rows(data: IngestResult, champion_rows: dict[str, Any]
                ) -> tuple[list, list[int] | list[list[int]]]:
    """Model inputs (texts, or (text, text_pair) pairs) and label ids (multi-label: lists of
    ids) of this run's rows (all splits) that another version's rows (`data/rows.json` of the
    champion's run) did not hold."""
    known = {i for part in champion_rows["splits"].values() for i in part["ids"]}
    dd = load_ingested(data)
    texts, labels = [], []
    for split in dd:
        for text, label, rid in zip(model_inputs(dd[split]), dd[split][LABEL],
                                    row_ids(split_keys(dd[split])), strict=True):
            if rid not in known:
                texts.append(text)
                labels.append(list(label) if data.multi_label else int(label))
    return texts, labels


def unchanged(config: SweepflowConfig, version: DataVersion, champion: int | None
              ) -> str | None:
    """Why this run can be skipped (data, config and champion as at the previous finished
    run), or None."""
    if config.sweep.on_unchanged != "skip" or version.previous_run is None:
        return None
    if version.changed or version.previous_status != "FINISHED":
        return None
    if version.previous_config != config.digest() or champion is None:
        return None
    return (f"data {version.digest} and config {config.digest()} as at run "
            f"{version.previous_run[:8]} ({version.previous_started}), champion "
            f"v{champion}: nothing new to train on (sweep.on_unchanged=more_trials sweeps "
            "anyway)")


@task(name="data-version", cache_policy=NO_CACHE)
def record_version_task(config: SweepflowConfig, data: IngestResult, tracker: tracking.Tracker
                        ) -> DataVersion:
    version = record_version(tracker, data)
    report.info(version.line())
    return version


@task(name="unchanged", cache_policy=NO_CACHE)
def skip_unchanged_task(config: SweepflowConfig, version: DataVersion,
                        tracker: tracking.Tracker) -> str | None:
    """Whether to skip this run (sweep.on_unchanged=skip); the check is recorded either way."""
    from sweepflow.tasks.register import current_champion, registered_name

    champion = current_champion(tracker.client, registered_name(config),
                                config.registry.metric) if config.registry.enabled else None
    reason = unchanged(config, version, champion.version if champion else None)
    tracker.log(metrics={"sweep/skipped": float(bool(reason))},
                tags={SKIPPED_TAG: reason or ""})
    if reason:
        report.info(f"skipped: {reason}")
    return reason
