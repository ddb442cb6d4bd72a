"""Register: every evaluated model becomes a new version in the MLflow model registry with
alias `challenger`; whether it takes alias `champion` follows `registry.promotion`:
`significant` (default) promotes only a challenger right on significantly more of the same
test rows than the champion (McNemar's exact test at `registry.alpha`, see
tasks/significance.py) whose `registry.metric` on those rows is also higher, `better` one
with any higher `registry.metric`, `manual` none (a person moves the alias). The
first registered model becomes champion (except under `manual`).

A champion scored on a different test split (grown data, another test-data digest) is
re-scored on the challenger's test rows first (tasks/champion.py), and the rule runs on those
same rows. The decision is `not_comparable` only when the champion could not be re-scored
(it cannot be loaded, or knows other labels), with the reason. `sweepflow promote` moves the
champion by hand (or rolls it back), recorded on the model version with who and why.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict
from sweepflow.tasks.evaluate import PREDICTIONS_ARTIFACT, EvalResult, Scores, TestPredictions
from sweepflow.tasks.significance import Comparison, compare_predictions

from sweepflow import tracking
from sweepflow.config import SweepflowConfig
from sweepflow.console import report
from sweepflow.usererrors import UserError

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
DIGEST_TAG = "data.test_digest"
RUN_TAG = "sweepflow.run_id"
Decision = Literal["promoted", "kept_champion", "not_comparable", "manual"]
Promotion = Literal["significant", "better", "manual"]


class Champion(BaseModel):
    """The current champion as the registry knows it (from its model version tags)."""

    model_config = ConfigDict(frozen=True)
    version: int
    score: float | None
    digest: str | None
    run_id: str | None = None


class ChampionCheck(BaseModel):
    """The champion on this run's data (tasks/champion.py; None fields: not measured, `reason`
    says why)."""

    model_config = ConfigDict(frozen=True)
    champion: Champion | None = None
    predictions: TestPredictions | None = None  # on this run's test rows (re-scored)
    test: Scores | None = None  # its scores on this run's test rows
    newest_rows: int = 0  # rows of this run's data the champion's data did not hold
    newest: Scores | None = None  # its scores on (at most drift.max_rows of) those
    reason: str | None = None  # why it was not re-scored
    unlearned: list[str] = []  # this data's labels the champion was not trained on


class Verdict(BaseModel):
    model_config = ConfigDict(frozen=True)
    decision: Decision
    reason: str


class RegistryResult(BaseModel):
    model_config = ConfigDict(frozen=True)
    model_name: str
    version: int
    decision: Decision
    reason: str
    metric: str
    score: float
    champion_version: int | None  # the champion after the decision (None: none yet)
    previous_champion: Champion | None
    promotion: Promotion = "better"
    comparison: Comparison | None = None  # vs the previous champion on the same test rows
    champion_score: float | None = None  # the previous champion's metric on these test rows


def registered_name(config: SweepflowConfig) -> str:
    return config.registry.model_name or config.tracking.experiment


def champion_uri(config: SweepflowConfig) -> str:
    return f"models:/{registered_name(config)}@{CHAMPION}"


def decide(score: float, digest: str, champion: Champion | None, metric: str,
           promotion: Promotion, alpha: float,
           comparison: Comparison | None = None, champion_score: float | None = None,
           why_not: str | None = None) -> Verdict:
    """The registry rule (see the module docstring). `champion_score`: the champion's metric
    on this model's test rows (re-scored when it was scored on other test data); without it
    a champion scored on other test data is kept, for `why_not`."""
    if promotion == "manual":
        return Verdict(decision="manual", reason="registry.promotion=manual: the champion "
                       "alias moves only by hand")
    if champion is None:
        return Verdict(decision="promoted", reason="no champion yet")
    v = f"champion v{champion.version}"
    if champion.digest != digest and champion_score is None:
        return Verdict(decision="not_comparable",
                       reason=f"{v} was scored on test data {champion.digest}, this model on "
                              f"{digest}, and it could not be re-scored on these rows"
                              f"{f' ({why_not})' if why_not else ''}: scores are not comparable, "
                              "champion kept")
    if champion.digest != digest:
        v += " re-scored on these test rows"
    theirs = champion.score if champion_score is None else champion_score
    if promotion == "significant":
        return _significant(comparison, alpha, v, metric, score, theirs)
    if theirs is None:
        return Verdict(decision="not_comparable", reason=f"{v} has no {metric} tag")
    if score > theirs:
        return Verdict(decision="promoted", reason=f"{metric} {score:.4f} > {theirs:.4f} ({v})")
    return Verdict(decision="kept_champion",
                   reason=f"{metric} {score:.4f} <= {theirs:.4f} ({v})")


def _significant(comparison: Comparison | None, alpha: float, v: str, metric: str,
                 score: float, theirs: float | None) -> Verdict:
    """McNemar decides significance, `registry.metric` on the same rows the direction."""
    if comparison is None:
        return Verdict(decision="not_comparable",
                       reason=f"no test predictions of both {v} and this model on the same "
                              f"rows ({PREDICTIONS_ARTIFACT}) to test with, champion kept")
    if not comparison.significant(alpha):
        return Verdict(decision="kept_champion", reason=f"not significantly better than {v} "
                       f"at alpha={alpha:g}: {comparison.describe()}")
    if theirs is None:
        return Verdict(decision="not_comparable", reason=f"{v} has no {metric} on these test "
                       "rows, champion kept")
    if score <= theirs:
        return Verdict(decision="kept_champion", reason=f"right on significantly more rows "
                       f"than {v}, but {metric} {score:.4f} <= {theirs:.4f}: "
                       f"{comparison.describe()}")
    return Verdict(decision="promoted", reason=f"significantly better than {v} at "
                   f"alpha={alpha:g}, {metric} {score:.4f} > {theirs:.4f}: "
                   f"{comparison.describe()}")


def champion_predictions(client: tracking.MlflowClient, champion: Champion,
                         digest: str) -> TestPredictions | None:
    """The champion's stored test predictions, when they are on the same test data."""
    if champion.run_id is None or champion.digest != digest:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(champion.run_id, PREDICTIONS_ARTIFACT, tmp)
        except (MlflowException, OSError) as err:
            log.info("champion v%d: no stored test predictions (%s)", champion.version, err)
            return None
        stored = TestPredictions.model_validate(json.loads(Path(path).read_text()))
    return stored if stored.test_digest == digest else None


def compare_with(client: tracking.MlflowClient, champion: Champion | None,
                 challenger: TestPredictions | None, seed: int,
                 rescored: TestPredictions | None = None) -> Comparison | None:
    """McNemar + bootstrap of the challenger against the champion on the same rows (its
    re-scored predictions, else its stored ones), or None when either side has no
    predictions on this test data."""
    if champion is None or challenger is None:
        return None
    stored = rescored if rescored is not None and rescored.test_digest == \
        challenger.test_digest else champion_predictions(client, champion,
                                                         challenger.test_digest)
    if stored is None or stored.row != challenger.row or stored.true != challenger.true:
        return None
    return compare_predictions(np.asarray(challenger.true), np.asarray(stored.pred),
                               np.asarray(challenger.pred), seed)


def current_champion(client: tracking.MlflowClient, name: str, metric: str) -> Champion | None:
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException as err:
        if err.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise
    if CHAMPION not in aliases:
        return None
    mv = client.get_model_version(name, str(aliases[CHAMPION]))
    score = mv.tags.get(metric)
    return Champion(version=int(mv.version), score=None if score is None else float(score),
                    digest=mv.tags.get(DIGEST_TAG), run_id=mv.tags.get(RUN_TAG))


def register(config: SweepflowConfig, model_uri: str, scores: Scores, test_digest: str,
             tracker: tracking.Tracker, predictions: TestPredictions | None = None,
             check: ChampionCheck | None = None) -> RegistryResult:
    """Register the model, set its aliases and log the decision to the tracker's (parent)
    run and to the model version. `check`: the champion re-scored on this run's test rows."""
    name, metric = registered_name(config), config.registry.metric
    score = getattr(scores, metric.split("/", 1)[1])
    tags = {DIGEST_TAG: test_digest, RUN_TAG: tracker.run_id,
            **{f"test/{k}": str(v) for k, v in scores.model_dump().items()}}
    client = tracker.client
    champion = current_champion(client, name, metric)
    rescored = check.predictions if check is not None and check.champion == champion else None
    comparison = compare_with(client, champion, predictions, config.seed, rescored)
    theirs = None
    if rescored is not None and check.test is not None:
        theirs = getattr(check.test, metric.split("/", 1)[1])
    elif champion is not None and champion.digest == test_digest:
        theirs = champion.score
    version = tracker.register_model(model_uri, name, tags)
    rule = config.registry
    verdict = decide(score, test_digest, champion, metric, rule.promotion, rule.alpha,
                     comparison, theirs, check.reason if check is not None else None)
    client.set_registered_model_alias(name, CHALLENGER, str(version))
    if verdict.decision == "promoted":
        make_champion(client, name, version, champion)
    result = RegistryResult(
        model_name=name, version=version, decision=verdict.decision, reason=verdict.reason,
        metric=metric, score=score, previous_champion=champion, promotion=rule.promotion,
        comparison=comparison, champion_score=theirs,
        champion_version=version if verdict.decision == "promoted"
        else (champion.version if champion else None),
    )
    for key, value in decision_tags(result).items():
        client.set_model_version_tag(name, str(version), key, value)
    log_decision(tracker, result)
    return result


INT8 = f"{CHAMPION}-int8"
PREVIOUS_TAG = "registry.previous_champion"


def make_champion(client: tracking.MlflowClient, name: str, version: int,
                  previous: Champion | None) -> None:
    """Move `champion` to `version`, and `champion-int8` to its int8 twin, or off the old
    champion's twin when it has none (tasks/compress.py adds it once the twin qualifies)."""
    client.set_registered_model_alias(name, CHAMPION, str(version))
    if previous is not None and previous.version != version:
        client.set_model_version_tag(name, str(version), PREVIOUS_TAG, str(previous.version))
    twins = client.search_model_versions(
        f"name = '{name}' and tags.`sweepflow.fp32_version` = '{version}'")
    if twins:
        client.set_registered_model_alias(name, INT8, str(max(int(t.version) for t in twins)))
        return
    try:
        client.delete_registered_model_alias(name, INT8)
    except MlflowException:  # there was none
        pass


class PromoteError(UserError):
    """A promotion by hand that cannot be done; the message says why."""

    kind = "promote error"


def promote_by_hand(config: SweepflowConfig, tracker: tracking.Tracker, version: int | None,
                    reason: str, who: str) -> tuple[int, int | None]:
    """Make `version` the champion (None: roll back to the version that was champion before
    the current one), recorded on the version's tags with who, when and why. Returns (new,
    old) champion versions."""
    client = tracker.client
    name = registered_name(config)
    current = current_champion(client, name, config.registry.metric)
    if version is None:
        before = client.get_model_version(name, str(current.version)).tags.get(
            PREVIOUS_TAG) if current else None
        if not before:
            raise PromoteError(f"no earlier champion of {name} to roll back to")
        version = int(before)
    try:
        mv = client.get_model_version(name, str(version))
    except MlflowException as err:  # an unknown version or model
        raise PromoteError(err.message) from None
    if mv.tags.get("sweepflow.variant") == "int8":
        raise PromoteError(f"v{version} is an int8 twin; promote its full-precision version "
                         f"v{mv.tags.get('sweepflow.fp32_version')}")
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    make_champion(client, name, version, current)
    note = f"by {who} at {when}: {reason}"
    for key, value in {"registry.decision": "promoted_by_hand", "registry.reason": note,
                       "registry.promoted_by": who}.items():
        client.set_model_version_tag(name, str(version), key, value[:5000])
    if current is not None and current.version != version:
        client.set_model_version_tag(name, str(current.version), "registry.demoted",
                                     f"v{version} {note}"[:5000])
    return version, current.version if current else None


def decision_tags(result: RegistryResult) -> dict[str, str]:
    """The decision, its reason and the test behind it, as tags (run and model version)."""
    tags = {"registry.decision": result.decision, "registry.reason": result.reason[:5000],
            "registry.promotion": result.promotion}
    c = result.comparison
    if c is not None:
        tags |= {"registry.p_value": f"{c.p_value:.6g}", "registry.f1_diff": f"{c.f1_diff:.6g}",
                 "registry.f1_diff_ci": f"[{c.ci_low:.6g}, {c.ci_high:.6g}]",
                 "registry.vs_version": str(result.previous_champion.version)}
    return tags


def log_decision(tracker: tracking.Tracker, result: RegistryResult) -> None:
    """Tags for the decision; the previous champion's score as test/champion_<metric> only
    when it was measured on the same test data; the p-value and the F1-difference interval
    as registry/* metrics when the two were compared."""
    tags = {"registry.model_name": result.model_name, "registry.version": str(result.version),
            "registry.champion_version": str(result.champion_version or ""),
            **decision_tags(result)}
    metrics = {}
    if result.champion_score is not None:  # on these test rows (re-scored or its own)
        metrics[result.metric.replace("test/", "test/champion_", 1)] = result.champion_score
    if result.comparison is not None:
        c = result.comparison
        metrics |= {f"registry/{k}": v for k, v in (
            ("p_value", c.p_value), ("f1_diff", c.f1_diff), ("f1_diff_ci_low", c.ci_low),
            ("f1_diff_ci_high", c.ci_high))}
    tracker.log(metrics=metrics, tags=tags)


def degenerate(config: SweepflowConfig, evaluation: EvalResult) -> str | None:
    """Why a model must not be registered (a score that is not finite, a single class
    predicted on test), or None."""
    if not all(math.isfinite(v) for v in evaluation.model.model_dump().values()):
        return "its test scores are not finite"
    if config.registry.refuse_single_class and (evaluation.classes_predicted or 2) < 2:
        return ("it predicts a single class (multi-label: one label set) on the test split "
                "(registry.refuse_single_class)")
    return None


@task(name="register", cache_policy=NO_CACHE)
def register_task(config: SweepflowConfig, evaluation: EvalResult, tracker: tracking.Tracker,
                  champion: ChampionCheck | None = None) -> RegistryResult | None:
    logger = get_run_logger()
    if not config.registry.enabled:
        logger.info("model registry disabled (registry.enabled=false)")
        return None
    refused = degenerate(config, evaluation)
    if refused:
        report.warning(f"model not registered: {refused}")
        tracker.log(tags={"registry.decision": f"refused: {refused}"})
        return None
    result = register(config, evaluation.model_uri, evaluation.model, evaluation.test_digest,
                      tracker, evaluation.predictions, champion)
    logger.info("registered %s v%d: %s (%s)", result.model_name, result.version,
                result.decision, result.reason)
    return result
