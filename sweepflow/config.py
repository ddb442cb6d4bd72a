"""Typed experiment config: YAML layers composed with OmegaConf, validated with pydantic.

Order: conf/base.yaml -> --config FILE -> conf/local.yaml (if present) -> key=value overrides.
Every model forbids extra keys, so a typo fails at load time with the dotted key named. The
defaults live in conf/base.yaml only: these models declare types and limits, no values.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sweepflow.paths import CONF_DIR

BUNDLED = "bundled"


class ConfigError(ValueError):
    """A config file, key or value is wrong; the message names it."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CleanConfig(_Model):
    fix_unicode: bool
    drop_empty: bool
    drop_duplicates: bool
    min_chars: int | None = Field(ge=0)
    max_chars: int | None = Field(ge=1)
    confidence_column: str | None
    min_confidence: float | None


class SplitNames(_Model):
    train: str
    validation: str
    test: str


class DataConfig(_Model):
    path: str | dict[str, str]
    name: str | None
    revision: str | None
    encoding: str | None
    splits: SplitNames
    text_column: str
    label_column: str
    labels: list[str | int] | dict[str | int, str] | None
    val_fraction: float = Field(gt=0, lt=1)
    test_fraction: float = Field(gt=0, lt=1)
    max_train_samples: int | None = Field(ge=2)
    max_eval_samples: int | None = Field(ge=2)
    clean: CleanConfig

    @model_validator(mode="after")
    def _check_path(self) -> DataConfig:
        if isinstance(self.path, dict):
            unknown = set(self.path) - {"train", "validation", "test"}
            if unknown:
                raise ValueError(
                    f"split names must be train/validation/test, got {sorted(unknown)}")
            if "train" not in self.path:
                raise ValueError("a mapping of split files needs a 'train' file")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be below 1")
        return self


class ModelConfig(_Model):
    name_or_path: str


class TokenizeConfig(_Model):
    max_length: int = Field(ge=8, le=8192)


Batching = Literal["shuffle", "bucketed", "grouped"]


class TrainConfig(_Model):
    max_epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    eval_batch_size: int = Field(ge=1)
    precision: Literal["auto", "bf16-mixed", "16-mixed", "32-true"]
    learning_rate: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    warmup_ratio: float = Field(ge=0, lt=1)
    val_checks_per_epoch: int = Field(ge=1)
    early_stopping_patience: int = Field(ge=1)
    batching: Batching
    fast_dropout: bool
    num_threads: int | None = Field(ge=1)
    max_steps: int


class FloatParam(_Model):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False  # a search-space entry's own defaults, not the experiment's
    step: float | None = None


class IntParam(_Model):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = 1


class CategoricalParam(_Model):
    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]
TRAIN_KEYS = set(TrainConfig.model_fields)


class SweepConfig(_Model):
    n_trials: int = Field(ge=1)
    study_name: str | None
    continue_study: bool
    sampler: Literal["tpe", "random", "grid"]
    pruner: Literal["halving", "median", "percentile", "hyperband", "none"]
    pruner_startup_trials: int | None = Field(ge=0)  # None: max(2, min(5, n_trials // 3))
    pruner_warmup_steps: int = Field(ge=0)  # optimizer steps before a trial can be pruned
    pruner_warmup: float = Field(ge=0, lt=1)  # the same as a share of each trial's steps
    pruner_signal: Literal["metric", "loss"]  # what trials report to the pruner
    pruner_percentile: float = Field(gt=0, lt=100)  # percentile pruner: top % kept
    pruner_reduction_factor: int = Field(ge=2)  # halving/hyperband: 1 in this many goes on
    metric: Literal["val/f1_macro", "val/accuracy", "val/loss"]
    direction: Literal["maximize", "minimize"]
    space: dict[str, Param]

    @property
    def startup_trials(self) -> int:
        """Complete trials before pruning starts: by default a third of this run's trials,
        at least 2 and at most 5 (optuna's own default)."""
        if self.pruner_startup_trials is not None:
            return self.pruner_startup_trials
        return max(2, min(5, self.n_trials // 3))

    @model_validator(mode="after")
    def _check_space(self) -> SweepConfig:
        for name in self.space:
            if name not in TRAIN_KEYS:
                raise ValueError(
                    f"sweep.space.{name} is not a train.* setting ({sorted(TRAIN_KEYS)})")
        if (self.metric == "val/loss") != (self.direction == "minimize"):
            raise ValueError(f"sweep.direction={self.direction} does not fit {self.metric}")
        return self


class TrackingConfig(_Model):
    uri: str | None
    experiment: str
    artifact_location: str | None


class ScheduleConfig(_Model):
    """For `sweepflow serve`: a cron string or an interval in seconds (not both)."""

    cron: str | None
    interval: float | None = Field(gt=0)
    timezone: str

    @model_validator(mode="after")
    def _one(self) -> ScheduleConfig:
        if self.cron and self.interval:
            raise ValueError("set schedule.cron or schedule.interval, not both")
        return self


class RegistryConfig(_Model):
    """Model registry: every new version is `challenger`; it becomes `champion` only if it
    beats the champion on `metric` over the same test-data digest (or there is none)."""

    enabled: bool
    model_name: str | None  # null = tracking.experiment
    metric: Literal["test/f1_macro", "test/accuracy", "test/precision_macro",
                    "test/recall_macro"]


class SweepflowConfig(_Model):
    seed: int
    data: DataConfig
    model: ModelConfig
    tokenize: TokenizeConfig
    train: TrainConfig
    sweep: SweepConfig
    tracking: TrackingConfig
    schedule: ScheduleConfig
    registry: RegistryConfig

    @property
    def study_name(self) -> str:
        return self.sweep.study_name or self.tracking.experiment

    def flat(self) -> dict[str, str]:
        """The resolved config as dotted keys, for MLflow params."""
        return _flatten(self.model_dump(mode="json"))

    def digest(self) -> str:
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def to_yaml(self) -> str:
        return OmegaConf.to_yaml(OmegaConf.create(self.model_dump(mode="json")))


def _flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(tree, dict) and tree:
        out: dict[str, str] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): json.dumps(tree) if not isinstance(tree, str) else tree}


def _load_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return OmegaConf.load(path)
    except (OmegaConfBaseException, ValueError, OSError) as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err


def _format_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"] if not str(p).startswith(("function-", "tagged")))
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown config key '{key}'")
        else:
            lines.append(f"bad value for '{key}': {e['msg']} (got {e.get('input')!r})")
    return "; ".join(lines)


def _merge(layers: list[Any]) -> Any:
    """Merge layers in order; a layer that sets sweep.space replaces the space, so an
    experiment can search fewer parameters than base."""
    merged = layers[0]
    for layer in layers[1:]:
        if OmegaConf.select(layer, "sweep.space") is not None and "sweep" in merged:
            merged = OmegaConf.merge(merged, {"sweep": {"space": None}})
            merged.sweep.space = {}
        merged = OmegaConf.merge(merged, layer)
    return merged


def load_config(
    config_file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    conf_dir: Path = CONF_DIR,
) -> SweepflowConfig:
    """Compose base.yaml -> file -> local.yaml (both in `conf_dir`) -> overrides; validate."""
    layers = [_load_yaml(conf_dir / "base.yaml")]
    if config_file:
        layers.append(_load_yaml(Path(config_file)))
    local = conf_dir / "local.yaml"
    if local.is_file():
        layers.append(_load_yaml(local))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value")
    try:
        layers.append(OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.to_container(_merge(layers), resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot compose config: {err}") from err
    return validate_config(merged)


def validate_config(data: Any) -> SweepflowConfig:
    try:
        return SweepflowConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None
