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
from urllib.parse import urlsplit, urlunsplit

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sweepflow.encoding import LongText
from sweepflow.paths import CONF_DIR, project_dir
from sweepflow.usererrors import UserError

BUNDLED = "bundled"


class ConfigError(UserError, ValueError):
    """A config file, key or value is wrong; the message names it."""

    kind = "config error"
    exit_code = 2


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
    text_column: str | list[str]  # a list of two columns: a sentence pair
    text_pair_column: str | None  # the second text of a sentence pair
    label_column: str
    label_columns: list[str] | None = Field(min_length=1)  # multi-label from 0/1 columns
    allow_empty_labels: bool  # multi-label: an empty label set is a valid "no tag" row
    labels: list[str | int] | dict[str | int, str] | None
    val_fraction: float = Field(gt=0, lt=1)
    test_fraction: float = Field(gt=0, lt=1)
    max_train_samples: int | None = Field(ge=2)
    max_eval_samples: int | None = Field(ge=2)
    allowed_dirs: list[str] = Field(min_length=1)  # see tasks/datasafety.py
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
        if isinstance(self.text_column, list) and (len(self.text_column) != 2
                                                   or self.text_pair_column):
            raise ValueError("data.text_column takes one column, or a list of two (a "
                             "sentence pair; then no data.text_pair_column)")
        if self.label_columns and len(set(self.label_columns)) != len(self.label_columns):
            raise ValueError("data.label_columns names a column twice")
        if self.label_columns and self.labels is not None:
            raise ValueError("data.label_columns names the labels itself; leave data.labels "
                             "null")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be below 1")
        return self


    @property
    def text_columns(self) -> tuple[str, str | None]:
        """(text column, pair column or None)."""
        if isinstance(self.text_column, list):
            return self.text_column[0], self.text_column[1]
        return self.text_column, self.text_pair_column


class ModelConfig(_Model):
    name_or_path: str


class AutoLengthConfig(_Model):
    """`tokenize.max_length: auto`: this percentile of the training texts' token lengths,
    kept within [floor, cap]."""

    percentile: float = Field(gt=0, le=100)
    floor: int = Field(ge=8, le=8192)
    cap: int = Field(ge=8, le=8192)

    @model_validator(mode="after")
    def _floor_below_cap(self) -> AutoLengthConfig:
        if self.floor > self.cap:
            raise ValueError(f"tokenize.auto.floor={self.floor} is above "
                             f"tokenize.auto.cap={self.cap}")
        return self

    def pick(self, train_lengths: list[int]) -> int:
        """The max_length for texts of these token lengths (special tokens included)."""
        import numpy as np

        wanted = float(np.percentile(train_lengths, self.percentile)) if train_lengths else 0
        return int(min(self.cap, max(self.floor, np.ceil(wanted))))


class TokenizeConfig(_Model):
    """How texts become tokens; longer texts: sweepflow/encoding.py."""

    max_length: Annotated[int, Field(ge=8, le=8192)] | Literal["auto"]  # auto: training texts
    auto: AutoLengthConfig
    truncation: Literal["head", "tail", "head_tail"]
    head_share: float = Field(ge=0, le=1)  # head_tail: share of the tokens kept from the head
    long_text: Literal["truncate", "chunk"]
    stride: int = Field(ge=0)  # chunk: tokens shared by neighbouring windows

    @model_validator(mode="after")
    def _stride_fits(self) -> TokenizeConfig:
        shortest = self.auto.floor if self.max_length == "auto" else self.max_length
        if self.long_text == "chunk" and self.stride > shortest // 2:
            raise ValueError(f"tokenize.stride={self.stride} must be at most half of "
                             f"tokenize.max_length={shortest}")
        return self

    def long_texts(self, max_length: int | None = None) -> LongText:
        """The encoding at `max_length` (what `auto` resolved to), else the configured one."""
        if max_length is None:
            max_length = self.auto.floor if self.max_length == "auto" else self.max_length
        return LongText(max_length=max_length, truncation=self.truncation,
                        head_share=self.head_share, long_text=self.long_text,
                        stride=self.stride)


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
    bucket_batches: int = Field(ge=1)
    micro_batches: Annotated[int, Field(ge=1)] | Literal["auto"]
    fast_dropout: bool
    num_threads: int | None = Field(ge=1)
    max_steps: int


class FloatParam(_Model):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False  # a search-space entry's own defaults, not the experiment's
    step: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> FloatParam:
        _check_range(self.low, self.high, self.log, self.step is not None)
        return self


class IntParam(_Model):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _bounds(self) -> IntParam:
        _check_range(self.low, self.high, self.log, self.step != 1)
        return self


def _check_range(low: float, high: float, log: bool, stepped: bool) -> None:
    """What Optuna's suggest_* would reject inside a trial, rejected at load instead."""
    if low > high:
        raise ValueError(f"low={low} is above high={high}")
    if log and low <= 0:
        raise ValueError(f"log=true needs low > 0 (got low={low})")
    if log and stepped:
        raise ValueError("log=true and a step cannot be combined")


class CategoricalParam(_Model):
    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]
TRAIN_KEYS = set(TrainConfig.model_fields)


class SweepConfig(_Model):
    n_trials: int = Field(ge=1)
    study_name: str | None
    continue_study: bool
    warm_start: int = Field(ge=0)  # previous data version's best trials enqueued on new data
    on_unchanged: Literal["skip", "more_trials"]
    sampler: Literal["tpe", "gp", "random", "grid"]
    sampler_startup_trials: int | None = Field(ge=1)  # random trials first: None = sampler_startup
    pruner: Literal["halving", "median", "percentile", "hyperband", "none"]
    pruner_startup_trials: int | None = Field(ge=0)  # None: max(2, min(5, n_trials // 3))
    pruner_warmup_steps: int = Field(ge=0)  # optimizer steps before a trial can be pruned
    pruner_warmup: float = Field(ge=0, lt=1)  # the same as a share of each trial's steps
    pruner_min_validations: int = Field(ge=1)  # a trial's validations before it can be pruned
    pruner_signal: Literal["metric", "loss"]  # what trials report to the pruner
    pruner_percentile: float = Field(gt=0, lt=100)  # percentile pruner: top % kept
    pruner_reduction_factor: int = Field(ge=2)  # halving/hyperband: 1 in this many goes on
    seed_per_trial: bool  # each trial trains with seed + its trial number (else all with seed)
    metric: Literal["val/f1_macro", "val/accuracy", "val/loss"]
    direction: Literal["maximize", "minimize"]
    space: dict[str, Param]
    # Team mode (docs/team-mode.md): a shared study, trial workers placed by Prefect.
    storage: str | None  # Optuna storage URL; None = SQLite in the store
    workers: int = Field(ge=1)  # trial workers of a sweep (flow runs on sweep.work_pool)
    workers_per_host: int | None = Field(ge=1)  # None = min(workers, cores)
    work_pool: str = Field(min_length=1)
    start_worker: bool  # `sweepflow run` starts `prefect worker start` on this machine
    heartbeat_interval: int = Field(ge=1)  # seconds between a running trial's heartbeats
    grace_period: int = Field(ge=2)  # seconds without heartbeat before a trial is stale
    max_retry: int = Field(ge=0)  # re-runs of a stale trial with the same params

    @property
    def sampler_startup(self) -> int:
        """Random trials before the sampler models the study: a third of this run's trials, at
        least 2. 1 finds an optimum on the space's edge sooner and one inside it later
        (docs/performance.md "Start-up trials"), so it is an option, not the default."""
        if self.sampler_startup_trials is not None:
            return self.sampler_startup_trials
        return max(2, self.n_trials // 3)

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
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError(f"sweep.grace_period={self.grace_period} must be longer than "
                             f"sweep.heartbeat_interval={self.heartbeat_interval}")
        if self.storage and not self.storage.startswith(("postgresql", "sqlite:", "mysql")):
            raise ValueError(f"sweep.storage={self.storage!r} is not an Optuna RDB URL "
                             "(postgresql://user@host:5432/db)")
        if self.workers > 1 and not (self.storage or "").startswith(("postgresql", "mysql")):
            raise ValueError(f"sweep.workers={self.workers} needs a shared study: set "
                             "sweep.storage=postgresql://user@host:5432/db (Optuna's SQLite "
                             "storage is not for parallel workers)")
        return self


def _space_values(param: FloatParam | IntParam | CategoricalParam) -> list[tuple[str, Any]]:
    if isinstance(param, CategoricalParam):
        return [(f"choices[{i}]", v) for i, v in enumerate(param.choices)]
    return [("low", param.low), ("high", param.high)]


def check_space_against_train(train: TrainConfig, space: dict[str, Any]) -> None:
    """Every value a trial could draw must pass train.*'s own limits (batch size >= 1,
    learning rate > 0...): caught at load, not inside a trial."""
    base = train.model_dump()
    for name, param in space.items():
        for where, value in _space_values(param):
            try:
                TrainConfig.model_validate({**base, name: value})
            except ValidationError as err:
                msg = err.errors()[0]["msg"]
                raise ValueError(f"sweep.space.{name}.{where}={value!r} is not a valid "
                                 f"train.{name}: {msg}") from None


class TrackingConfig(_Model):
    uri: str | None
    experiment: str
    artifact_location: str | None


class StoreConfig(_Model):
    """Where the tokenized data and the kept models live: a folder every worker reaches."""

    shared_dir: str | None  # None = the local store (SWEEPFLOW_HOME or mlruns/)


class ScheduleConfig(_Model):
    """For `sweepflow serve` and the generated prefect.yaml (`sweepflow deploy-file`): a cron
    string or an interval in seconds (not both), and the deployment's work pool."""

    cron: str | None
    interval: float | None = Field(gt=0)
    timezone: str
    work_pool: str = Field(min_length=1)

    @model_validator(mode="after")
    def _one(self) -> ScheduleConfig:
        if self.cron and self.interval:
            raise ValueError("set schedule.cron or schedule.interval, not both")
        return self


class RegistryConfig(_Model):
    """Model registry: every new version is `challenger`; whether it becomes `champion`
    follows `promotion` (see tasks/register.py), always over the same test-data digest."""

    enabled: bool
    model_name: str | None  # null = tracking.experiment
    metric: Literal["test/f1_macro", "test/accuracy", "test/precision_macro",
                    "test/recall_macro"]
    promotion: Literal["significant", "better", "manual"]
    alpha: float = Field(gt=0, lt=1)
    refuse_single_class: bool  # a model predicting one class on test is not registered


class DriftConfig(_Model):
    """Newest rows against the champion's data (tasks/drift.py)."""

    enabled: bool
    threshold: float = Field(gt=0, le=1)
    alpha: float = Field(gt=0, lt=1)
    min_rows: int = Field(ge=2)
    max_rows: int = Field(ge=1)


class CompressConfig(_Model):
    """The int8 twin of the evaluated model (tasks/compress.py)."""

    enabled: bool
    max_f1_drop: float = Field(ge=0, le=1)
    max_text_chars: int = Field(ge=1)
    latency_texts: int = Field(ge=1)
    throughput_batches: int = Field(ge=1)


class SweepflowConfig(_Model):
    seed: int
    data: DataConfig
    model: ModelConfig
    tokenize: TokenizeConfig
    train: TrainConfig
    sweep: SweepConfig
    tracking: TrackingConfig
    store: StoreConfig
    schedule: ScheduleConfig
    registry: RegistryConfig
    drift: DriftConfig
    compress: CompressConfig

    @property
    def study_name(self) -> str:
        return self.sweep.study_name or self.tracking.experiment

    @model_validator(mode="after")
    def _space_fits_train(self) -> SweepflowConfig:
        check_space_against_train(self.train, self.sweep.space)
        _no_password("sweep.storage", self.sweep.storage, "PGPASSWORD or a PGPASSFILE")
        _no_password("tracking.uri", self.tracking.uri,
                     "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
        if self.data.text_columns[1] and not self.tokenize.long_texts().plain:
            raise ValueError("sentence pairs are truncated by the tokenizer (longest first): "
                             "tokenize.truncation=head and tokenize.long_text=truncate only")
        return self

    def flat(self) -> dict[str, str]:
        """The resolved config as dotted keys, for MLflow params."""
        return _flatten(self.model_dump(mode="json"))

    def digest(self) -> str:
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def to_yaml(self) -> str:
        return OmegaConf.to_yaml(OmegaConf.create(self.model_dump(mode="json")))


def _no_password(key: str, url: str | None, where: str) -> None:
    """The config goes to MLflow params and Prefect flow-run parameters: no secret in it."""
    try:
        parts = urlsplit(url or "")
        password = parts.password
    except ValueError:  # not a URL; the key's own check says so
        return
    if password:
        userinfo, _, hostport = parts.netloc.rpartition("@")
        shown = urlunsplit(parts._replace(netloc=f"{userinfo.split(':')[0]}:***@{hostport}"))
        raise ValueError(f"{key}={shown}: a password in the config would be logged with the "
                         f"run's params and sent to every worker; drop it and export {where} "
                         "(the clients read them)")


def _flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(tree, dict) and tree:
        out: dict[str, str] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): json.dumps(tree) if not isinstance(tree, str) else tree}


def _load_yaml(path: Path) -> Any:
    """One file as an OmegaConf node; a YAML error names the file and line (no file content),
    and tags (`!!python/...`, `!env`) are refused: a config is plain data."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if isinstance(token, yaml.TagToken):
                raise ConfigError(f"{path}:{token.start_mark.line + 1}: YAML tags such as "
                                  f"'{token.value[0]}{token.value[1]}' are not allowed")
        return OmegaConf.load(path)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = f"{mark.line + 1}" if mark else "?"
        raise ConfigError(f"{path}:{line}: not valid YAML: {err.problem or err.context}"
                          ) from None
    except (yaml.YAMLError, OmegaConfBaseException, UnicodeDecodeError, OSError) as err:
        raise ConfigError(f"{path}: not valid YAML: {type(err).__name__}") from None


def _format_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        skip = ("function-", "tagged", "constrained-", "literal[")  # union members' tags
        loc = [str(p) for p in e["loc"] if not str(p).startswith(skip)]
        if len(loc) == 4 and loc[:2] == ["sweep", "space"]:  # the discriminator's tag
            loc = loc[:3]
        key = ".".join(loc)
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown config key '{key}'")
        elif not key:
            lines.append(e["msg"].removeprefix("Value error, "))
        elif isinstance(e.get("input"), dict):  # a section's own check: its message says it
            lines.append(f"bad value for '{key}': {e['msg'].removeprefix('Value error, ')}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"bad value for '{key}': {msg} (got {e.get('input')!r})")
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
    """Compose base.yaml -> file -> local.yaml -> overrides; validate. `config_file` is a path,
    or the name of a packaged experiment (`quick` for conf/experiments/quick.yaml); local.yaml
    is read from `conf_dir` and from the working folder's conf/."""
    layers = [_load_yaml(conf_dir / "base.yaml")]
    if config_file:
        layers.append(_load_yaml(experiment_file(config_file, conf_dir)))
    for local in dict.fromkeys([conf_dir / "local.yaml", project_dir() / "conf" / "local.yaml"]):
        if local.is_file():
            layers.append(_load_yaml(local))
            break
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value")
    try:
        layers.append(OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.to_container(_merge(layers), resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot compose config: {err}") from err
    return validate_config(merged)


def experiment_file(config_file: str | Path, conf_dir: Path = CONF_DIR) -> Path:
    """A config file's path: as given when it exists, else a packaged experiment by name."""
    path = Path(config_file)
    if path.is_file():
        return path
    named = conf_dir / "experiments" / f"{path.stem}.yaml"
    return named if named.is_file() and path.parent in (Path("."), Path("conf/experiments"),
                                                        Path("experiments")) else path


def validate_config(data: Any) -> SweepflowConfig:
    try:
        return SweepflowConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None
