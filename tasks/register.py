"""Register: every evaluated model becomes a new version in the MLflow model registry with
alias `challenger`; whether it takes alias `champion` follows `registry.promotion`:
`significant` (default) promotes only a challenger significantly better than the champion on
the same test rows (McNemar's exact test at `registry.alpha`, see tasks/significance.py),
`better` one with any higher registry metric, `manual` none (a person moves the alias). The
first registered model becomes champion (except under `manual`).

A champion scored on a different test split (another test-data digest) is never replaced
automatically: the two scores measure different things, so the decision is `not_comparable`
and a person decides (the README shows how to move the alias by hand).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Literal

import mlflow
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


def registered_name(config: SweepflowConfig) -> str:
    return config.registry.model_name or config.tracking.experiment


def champion_uri(config: SweepflowConfig) -> str:
    return f"models:/{registered_name(config)}@{CHAMPION}"


def decide(score: float, digest: str, champion: Champion | None, metric: str,
           promotion: Promotion = "better", alpha: float = 0.05,
           comparison: Comparison | None = None) -> Verdict:
    """The registry rule (see the module docstring). A champion scored on other test data is
    kept: the two scores measure different things."""
    if promotion == "manual":
        return Verdict(decision="manual", reason="registry.promotion=manual: the champion "
                       "alias moves only by hand")
    if champion is None:
        return Verdict(decision="promoted", reason="no champion yet")
    v = f"champion v{champion.version}"
    if champion.digest != digest:
        return Verdict(decision="not_comparable",
                       reason=f"{v} was scored on test data {champion.digest}, this model on "
                              f"{digest}: scores are not comparable, champion kept")
    if promotion == "significant":
        return _significant(comparison, alpha, v)
    if champion.score is None:
        return Verdict(decision="not_comparable", reason=f"{v} has no {metric} tag")
    if score > champion.score:
        return Verdict(decision="promoted",
                       reason=f"{metric} {score:.4f} > {champion.score:.4f} ({v})")
    return Verdict(decision="kept_champion",
                   reason=f"{metric} {score:.4f} <= {champion.score:.4f} ({v})")


def _significant(comparison: Comparison | None, alpha: float, v: str) -> Verdict:
    if comparison is None:
        return Verdict(decision="not_comparable",
                       reason=f"no test predictions of both {v} and this model on the same "
                              f"rows ({PREDICTIONS_ARTIFACT}) to test with, champion kept")
    if comparison.significant(alpha):
        return Verdict(decision="promoted", reason=f"significantly better than {v} at "
                       f"alpha={alpha:g}: {comparison.describe()}")
    return Verdict(decision="kept_champion", reason=f"not significantly better than {v} at "
                   f"alpha={alpha:g}: {comparison.describe()}")


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
                 challenger: TestPredictions | None, seed: int) -> Comparison | None:
    """McNemar + bootstrap of the challenger against the champion on the same rows, or None
    when either side has no predictions on this test data."""
    if champion is None or challenger is None:
        return None
    stored = champion_predictions(client, champion, challenger.test_digest)
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
             run_id: str, predictions: TestPredictions | None = None) -> RegistryResult:
    """Register the model, set its aliases and log the decision to the parent run and to
    the model version."""
    name, metric = registered_name(config), config.registry.metric
    score = getattr(scores, metric.split("/", 1)[1])
    tags = {DIGEST_TAG: test_digest, RUN_TAG: run_id,
            **{f"test/{k}": str(v) for k, v in scores.model_dump().items()}}
    tracking.setup(config)  # mlflow.register_model uses the global tracking/registry URI
    client = tracking.MlflowClient(tracking.tracking_uri(config))
    champion = current_champion(client, name, metric)
    comparison = compare_with(client, champion, predictions, config.seed)
    with tracking.no_mlflow_prints():  # register_model prints "Successfully registered ..."
        version = int(mlflow.register_model(model_uri, name, tags=tags).version)
    rule = config.registry
    verdict = decide(score, test_digest, champion, metric, rule.promotion, rule.alpha,
                     comparison)
    client.set_registered_model_alias(name, CHALLENGER, str(version))
    if verdict.decision == "promoted":
        client.set_registered_model_alias(name, CHAMPION, str(version))
    result = RegistryResult(
        model_name=name, version=version, decision=verdict.decision, reason=verdict.reason,
        metric=metric, score=score, previous_champion=champion, promotion=rule.promotion,
        comparison=comparison, champion_version=version if verdict.decision == "promoted"
        else (champion.version if champion else None),
    )
    for key, value in decision_tags(result).items():
        client.set_model_version_tag(name, str(version), key, value)
    log_decision(client, run_id, result)
    return result


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


def log_decision(client: tracking.MlflowClient, run_id: str, result: RegistryResult) -> None:
    """Tags for the decision; the previous champion's score as test/champion_<metric> only
    when it was measured on the same test data; the p-value and the F1-difference interval
    as registry/* metrics when the two were compared."""
    tags = {"registry.model_name": result.model_name, "registry.version": str(result.version),
            "registry.champion_version": str(result.champion_version or ""),
            **decision_tags(result)}
    now = tracking.now_ms()
    metrics = []
    previous = result.previous_champion
    if previous is not None and previous.score is not None \
            and result.decision != "not_comparable":
        key = result.metric.replace("test/", "test/champion_", 1)
        metrics.append(tracking.Metric(key, previous.score, now, 0))
    if result.comparison is not None:
        c = result.comparison
        metrics += [tracking.Metric(f"registry/{k}", float(v), now, 0) for k, v in (
            ("p_value", c.p_value), ("f1_diff", c.f1_diff), ("f1_diff_ci_low", c.ci_low),
            ("f1_diff_ci_high", c.ci_high))]
    client.log_batch(run_id, metrics=metrics,
                     tags=[tracking.RunTag(k, v) for k, v in tags.items()])


def degenerate(config: SweepflowConfig, evaluation: EvalResult) -> str | None:
    """Why a model must not be registered (a score that is not finite, a single class
    predicted on test), or None."""
    if not all(math.isfinite(v) for v in evaluation.model.model_dump().values()):
        return "its test scores are not finite"
    if config.registry.refuse_single_class and (evaluation.classes_predicted or 2) < 2:
        return ("it predicts a single class on the test split "
                "(registry.refuse_single_class)")
    return None


@task(name="register", cache_policy=NO_CACHE)
def register_task(config: SweepflowConfig, evaluation: EvalResult,
                  run_id: str) -> RegistryResult | None:
    logger = get_run_logger()
    if not config.registry.enabled:
        logger.info("model registry disabled (registry.enabled=false)")
        return None
    refused = degenerate(config, evaluation)
    if refused:
        logger.warning("model not registered: %s", refused)
        tracking.MlflowClient(tracking.tracking_uri(config)).set_tag(
            run_id, "registry.decision", f"refused: {refused}")
        return None
    result = register(config, evaluation.model_uri, evaluation.model, evaluation.test_digest,
                      run_id, evaluation.predictions)
    logger.info("registered %s v%d: %s (%s)", result.model_name, result.version,
                result.decision, result.reason)
    return result
