"""Register: every evaluated model becomes a new version in the MLflow model registry with
alias `challenger`; it takes alias `champion` only if it beats the champion on the registry
metric over the same test data (or there is no champion yet).

A champion scored on a different test split (another test-data digest) is never replaced
automatically: the two scores measure different things, so the decision is `not_comparable`
and a person decides (the README shows how to move the alias by hand).
"""

from __future__ import annotations

import math
from typing import Literal

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from sweepflow import tracking
from sweepflow.config import SweepflowConfig
from tasks.evaluate import EvalResult, Scores

CHAMPION, CHALLENGER = "champion", "challenger"
DIGEST_TAG = "data.test_digest"
Decision = Literal["promoted", "kept_champion", "not_comparable"]


class Champion(BaseModel):
    """The current champion as the registry knows it (from its model version tags)."""

    model_config = ConfigDict(frozen=True)
    version: int
    score: float | None
    digest: str | None


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
    champion_version: int  # the champion after the decision
    previous_champion: Champion | None


def registered_name(config: SweepflowConfig) -> str:
    return config.registry.model_name or config.tracking.experiment


def champion_uri(config: SweepflowConfig) -> str:
    return f"models:/{registered_name(config)}@{CHAMPION}"


def decide(score: float, digest: str, champion: Champion | None, metric: str) -> Verdict:
    """Promote when there is no champion or when the score is strictly higher on the same
    test digest; a champion scored on other test data is kept (scores not comparable)."""
    if champion is None:
        return Verdict(decision="promoted", reason="no champion yet")
    v = f"champion v{champion.version}"
    if champion.digest != digest:
        return Verdict(decision="not_comparable",
                       reason=f"{v} was scored on test data {champion.digest}, this model on "
                              f"{digest}: scores are not comparable, champion kept")
    if champion.score is None:
        return Verdict(decision="not_comparable", reason=f"{v} has no {metric} tag")
    if score > champion.score:
        return Verdict(decision="promoted",
                       reason=f"{metric} {score:.4f} > {champion.score:.4f} ({v})")
    return Verdict(decision="kept_champion",
                   reason=f"{metric} {score:.4f} <= {champion.score:.4f} ({v})")


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
                    digest=mv.tags.get(DIGEST_TAG))


def register(config: SweepflowConfig, model_uri: str, scores: Scores, test_digest: str,
             run_id: str) -> RegistryResult:
    """Register the model, set its aliases and log the decision to the parent run."""
    name, metric = registered_name(config), config.registry.metric
    score = getattr(scores, metric.split("/", 1)[1])
    tags = {DIGEST_TAG: test_digest, "sweepflow.run_id": run_id,
            **{f"test/{k}": str(v) for k, v in scores.model_dump().items()}}
    tracking.setup(config)  # mlflow.register_model uses the global tracking/registry URI
    client = tracking.MlflowClient(tracking.tracking_uri(config))
    champion = current_champion(client, name, metric)
    with tracking.no_mlflow_prints():  # register_model prints "Successfully registered ..."
        version = int(mlflow.register_model(model_uri, name, tags=tags).version)
    verdict = decide(score, test_digest, champion, metric)
    client.set_registered_model_alias(name, CHALLENGER, str(version))
    if verdict.decision == "promoted":
        client.set_registered_model_alias(name, CHAMPION, str(version))
    client.set_model_version_tag(name, str(version), "registry.decision", verdict.decision)
    result = RegistryResult(
        model_name=name, version=version, decision=verdict.decision, reason=verdict.reason,
        metric=metric, score=score, previous_champion=champion,
        champion_version=version if verdict.decision == "promoted" else champion.version,
    )
    log_decision(client, run_id, result)
    return result


def log_decision(client: tracking.MlflowClient, run_id: str, result: RegistryResult) -> None:
    """Tags for the decision; the previous champion's score as test/champion_<metric> only
    when it was measured on the same test data."""
    tags = {"registry.model_name": result.model_name, "registry.version": str(result.version),
            "registry.decision": result.decision, "registry.reason": result.reason,
            "registry.champion_version": str(result.champion_version)}
    metrics = []
    previous = result.previous_champion
    if previous is not None and previous.score is not None \
            and result.decision != "not_comparable":
        key = result.metric.replace("test/", "test/champion_", 1)
        metrics.append(tracking.Metric(key, previous.score, tracking.now_ms(), 0))
    client.log_batch(run_id, metrics=metrics,
                     tags=[tracking.RunTag(k, v) for k, v in tags.items()])


def degenerate(config: SweepflowConfig, evaluation: EvalResult) -> str | None:
    """Why a model must not be registered (a score that is not finite, a single class
    predicted on test), or None."""
    if not all(math.isfinite(v) for v in evaluation.model.model_dump().values()):
        return "its test scores are not finite"
    if config.sweep.fail_single_class and (evaluation.classes_predicted or 2) < 2:
        return "it predicts a single class on the test split (sweep.fail_single_class)"
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
                      run_id)
    logger.info("registered %s v%d: %s (%s)", result.model_name, result.version,
                result.decision, result.reason)
    return result
