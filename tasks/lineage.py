"""Lineage: the splits as MLflow dataset inputs, the data profile and the run's identity."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import mlflow.data
import pandas as pd
from matplotlib.figure import Figure
from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource
from prefect import task
from sweepflow.tasks.clean import TEXT
from sweepflow.tasks.ingest import IngestResult, load_ingested
from sweepflow.tasks.tokenize import TokenizedData, load_tokenized

from sweepflow import tracking
from sweepflow.config import SweepflowConfig

CONTEXTS = {"train": "training", "validation": "validation", "test": "testing"}


def run_tags(config: SweepflowConfig, study: str, flow_run_id: str | None) -> dict[str, str]:
    return {"prefect.flow_run_id": flow_run_id or "none", "git_sha": tracking.git_sha(),
            "optuna.study": study, "sweepflow.config_digest": config.digest()}


def length_histogram(frames: dict[str, pd.DataFrame], tokens: TokenizedData) -> Figure:
    """Text lengths (characters, from the ingested `frames`) and token lengths per split."""
    tok = load_tokenized(tokens.path)
    fig = Figure(figsize=(10, 3.5))  # no pyplot: no global figure state, no backend to pick
    axes = fig.subplots(1, 2)
    for split, frame in frames.items():
        axes[0].hist(frame[TEXT].str.len(), bins=50, alpha=0.5, label=split)
        # One numpy batch: ds["length"] alone is a lazy column read row by row (1.4 s).
        lengths = tok[split].select_columns(["length"]).with_format("numpy")[:]["length"]
        axes[1].hist(lengths, bins=50, alpha=0.5, label=split)
    axes[0].set_title("text length (characters)")
    axes[1].set_title(f"tokens (truncated at {tokens.max_length})")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    return fig


def dataset_source(data: IngestResult, split: str) -> Any:
    """Where a split came from: a Hub dataset or a local file."""
    if data.hub is not None:
        return HuggingFaceDatasetSource(path=data.source_uri, config_name=data.hub.get("name"),
                                        revision=data.hub.get("revision"), split=split)
    return Path(data.source_uri).as_uri()  # a file:// URI names one source type


def log_lineage(config: SweepflowConfig, tokens: TokenizedData, run_id: str) -> None:
    """Params, config file, dataset inputs, data profile and token stats on the parent run."""
    client = tracking.MlflowClient(tracking.tracking_uri(config))
    flat = config.flat()
    params = [tracking.Param(k, v[:6000]) for k, v in flat.items()]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i : i + 100])
    data = tokens.data
    client.set_tag(run_id, "data.digest", data.digest)
    client.set_tag(run_id, "data.source", data.source)
    stats = tokens.stats
    client.log_batch(run_id, metrics=[
        tracking.Metric(f"data/{k}", float(v), tracking.now_ms(), 0)
        for k, v in {"token_len_p50": stats.p50, "token_len_p95": stats.p95,
                     "token_len_max": stats.max, "share_truncated": stats.share_truncated,
                     **{f"rows_{s}": n for s, n in data.sizes.items()}}.items()
    ])
    client.log_text(run_id, config.to_yaml(), "config.yaml")
    profile = json.loads((Path(data.path) / "profile.json").read_text())
    profile["tokens"] = stats.model_dump()
    client.log_dict(run_id, profile, "data_profile.json")
    frames = {split: ds.to_pandas() for split, ds in load_ingested(data).items()}
    client.log_figure(run_id, length_histogram(frames, tokens), "length_histogram.png",
                      save_kwargs={"dpi": 100})
    with tracking.active_run(config, run_id):
        for split, frame in frames.items():
            dataset = mlflow.data.from_pandas(
                frame, source=dataset_source(data, split), targets="label",
                name=f"{config.tracking.experiment}-{split}",
            )
            mlflow.log_input(dataset, context=CONTEXTS[split],
                             tags={"split": split, "sweepflow.digest": data.split_digests[split]})


@task(name="log-lineage")
def log_lineage_task(config: SweepflowConfig, tokens: TokenizedData, run_id: str) -> None:
    log_lineage(config, tokens, run_id)
