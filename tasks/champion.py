"""The champion re-scored on this run's data, as TFX's Evaluator re-evaluates the blessed
model on the new eval split.

The registered champion is loaded the way `predict` loads it (checked safe first:
sweepflow/modelsafety.py) and labels this run's test rows, so the registry compares it with
the challenger on the same rows (tasks/register.py). It also labels the newest rows: those
of this run's data that the champion's own data did not hold, for the drift report
(tasks/drift.py). When its test data is this run's, its stored test predictions are used
and nothing is re-scored. A champion trained before the data gained a class is re-scored as
it is (it never predicts the new class, so a challenger that knows it can win on the same
rows); one that cannot be loaded, or knows a label this data lacks, is not re-scored, and the
reason says why.
"""

from __future__ import annotations

import json
import logging
from typing import NamedTuple

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE
from sweepflow.tasks.clean import LABEL, model_inputs
from sweepflow.tasks.evaluate import TestPredictions
from sweepflow.tasks.evaluate import score_predictions as scores
from sweepflow.tasks.ingest import IngestResult, load_ingested
from sweepflow.tasks.multilabel import multi_hot
from sweepflow.tasks.register import (
    Champion,
    ChampionCheck,
    current_champion,
    registered_name,
)
from sweepflow.tasks.tokenize import TokenizedData
from sweepflow.tasks.versions import ROWS_ARTIFACT, load_json_artifact, newest_rows

from sweepflow import tracking
from sweepflow.config import SweepflowConfig
from sweepflow.console import report
from sweepflow.usererrors import UserError

log = logging.getLogger(__name__)


class Labelled(NamedTuple):
    ids: np.ndarray  # label ids in the data's order, or 0/1 rows (multi-label)
    unlearned: list[str]  # the data's labels the model was not trained on (never predicted)


def label_with(tracker: tracking.Tracker, uri: str, texts: list, names: list[str],
               max_length: int, multi_label: bool = False) -> Labelled:
    """The model's label ids (in `names` order) for `texts` (or (text, text_pair) pairs), or
    0/1 rows for a multi-label model; ValueError when it knows a label this data has not, or
    its kind is not this data's. A model that knows only some of `names` (the data gained a
    class since it was trained) is scored as it is, and the labels it lacks are named."""
    from sweepflow.tasks.predict import load_model, predict

    loaded = load_model(tracker, uri, max_length)
    id2label = getattr(getattr(loaded.model, "config", None), "id2label", None)
    known = set(map(str, id2label.values())) if id2label is not None else set(names)
    if not known <= set(names):
        # A model that knows fewer labels (the data gained a class) is scored as it is: it
        # never predicts the new ones. One that knows a label this data lacks is not.
        raise ValueError(f"it knows the labels {sorted(known)}, this "
                         f"data {sorted(names)}")
    index = {name: i for i, name in enumerate(names)}
    preds = predict(loaded, texts)
    if preds and (preds[0].labels is not None) != multi_label:
        kinds = ("single-label", "multi-label")
        raise ValueError(f"it is a {kinds[preds[0].labels is not None]} model, this data "
                         f"{kinds[multi_label]}")
    found = {x for p in preds for x in (p.labels if multi_label else [p.label])}
    if found - set(index):
        raise ValueError(f"it predicts labels {sorted(found - set(index))} this data does "
                         "not have")
    unlearned = [n for n in names if n not in known]
    if multi_label:
        return Labelled(multi_hot([[index[x] for x in p.labels] for p in preds],
                                  len(names)).astype(np.int64), unlearned)
    return Labelled(np.asarray([index[p.label] for p in preds], dtype=np.int64), unlearned)


def check_champion(config: SweepflowConfig, tokens: TokenizedData, tracker: tracking.Tracker
                   ) -> ChampionCheck:
    """Score the current champion on this run's test rows and newest rows."""
    client = tracker.client
    name = registered_name(config)
    champion = current_champion(client, name, config.registry.metric)
    if champion is None:
        return ChampionCheck(reason="no champion yet")
    data, names = tokens.data, list(tokens.data.label_names)
    dd = load_ingested(data)
    uri = f"models:/{name}/{champion.version}"
    test_texts, y_test = model_inputs(dd["test"]), truth(dd["test"][LABEL], data)
    newest_texts, y_new = newest(client, champion, data, config.drift.max_rows)
    same_test = champion.digest == data.split_digests["test"]
    try:
        texts = newest_texts if same_test else test_texts + newest_texts
        pred, unlearned = label_with(tracker, uri, texts, names, tokens.max_length,
                                     data.multi_label) if texts else (np.zeros(0, np.int64), [])
    except (UserError, ValueError, OSError, RuntimeError) as err:
        reason = f"champion v{champion.version} could not be re-scored: {err}"
        log.info(reason)
        return ChampionCheck(champion=champion, reason=reason)
    check = ChampionCheck(champion=champion, newest_rows=len(newest_texts), unlearned=unlearned,
                          newest=scores(y_new, pred[-len(y_new):]) if len(y_new) else None)
    if same_test:  # its stored predictions are on these rows (tasks/register.py)
        return check
    test_pred = pred[:len(y_test)]
    predictions = TestPredictions(test_digest=data.split_digests["test"], label_names=names,
                                  row=list(range(len(y_test))), true=y_test.tolist(),
                                  pred=test_pred.tolist())
    return check.model_copy(update={"predictions": predictions,
                                    "test": scores(y_test, test_pred)})


def truth(labels: list, data: IngestResult) -> np.ndarray:
    """Label ids, or multi-label 0/1 rows."""
    if data.multi_label:
        return multi_hot(labels, len(data.label_names)).astype(np.int64)
    return np.asarray(labels, dtype=np.int64)


def newest(client: tracking.MlflowClient, champion: Champion, data: IngestResult, limit: int
           ) -> tuple[list, np.ndarray]:
    """At most `limit` of this run's rows that the champion's data did not hold."""
    rows = load_json_artifact(client, champion.run_id, ROWS_ARTIFACT) if champion.run_id \
        else None
    if rows is None:
        return [], np.zeros(0, np.int64)
    texts, labels = newest_rows(data, rows)
    return texts[:limit], truth(labels[:limit], data)


def log_check(tracker: tracking.Tracker, check: ChampionCheck) -> None:
    """The champion's scores on this run's test rows as test/champion_* on the parent run."""
    tags = {"champion.version": str(check.champion.version) if check.champion else "",
            "champion.rescored": "true" if check.test else "false"}
    if check.reason:
        tags["champion.reason"] = check.reason[:5000]
    if check.unlearned:
        tags["champion.unlearned_labels"] = json.dumps(check.unlearned)[:5000]
    metrics = {f"test/champion_{k}": v
               for k, v in (check.test.model_dump().items() if check.test else ())}
    tracker.log(metrics=metrics, tags=tags)


@task(name="champion", cache_policy=NO_CACHE)
def check_champion_task(config: SweepflowConfig, tokens: TokenizedData,
                        tracker: tracking.Tracker) -> ChampionCheck | None:
    if not config.registry.enabled:
        return None
    check = check_champion(config, tokens, tracker)
    log_check(tracker, check)
    if check.test is not None:
        report.info(f"champion v{check.champion.version} re-scored on this run's "
                    f"{len(check.predictions.row):,} test rows: macro-F1 "
                    f"{check.test.f1_macro:.4f}" + (
                        f" (trained before the labels {', '.join(check.unlearned)}: it never "
                        "predicts them)" if check.unlearned else ""))
    elif check.reason and check.champion is not None:
        report.info(check.reason)
    return check
