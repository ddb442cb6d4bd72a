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


def log_lineage(config: SweepflowConfig, tokens: TokenizedData, tracker: tracking.Tracker
                ) -> None:
    """Params, config file, dataset inputs, data profile and token stats on the parent run."""
    # the max_length the model was trained at (`auto` resolved): predict and serve read it
    params = config.flat() | {"tokenize.max_length": str(tokens.max_length)}
    tracker.log(params={k: v[:6000] for k, v in params.items()})
    data = tokens.data
    tracker.log(tags={"data.digest": data.digest, "data.source": data.source})
    stats = tokens.stats
    tracker.log(metrics={
        f"data/{k}": v
        for k, v in {"token_len_p50": stats.p50, "token_len_p95": stats.p95,
                     "token_len_max": stats.max, "share_truncated": stats.share_truncated,
                     **{f"rows_{s}": n for s, n in data.sizes.items()}}.items()
    })
    tracker.log_text(config.to_yaml(), "config.yaml")
    profile = json.loads((Path(data.path) / "profile.json").read_text())
    profile["tokens"] = stats.model_dump()
    tracker.log_dict(profile, "data_profile.json")
    frames = {split: ds.to_pandas() for split, ds in load_ingested(data).items()}
    tracker.log_figure(length_histogram(frames, tokens), "length_histogram.png", dpi=100)
    with tracker.active():
        for split, frame in frames.items():
            dataset = mlflow.data.from_pandas(
                frame, source=dataset_source(data, split), targets="label",
                name=f"{config.tracking.experiment}-{split}",
            )
            mlflow.log_input(dataset, context=CONTEXTS[split],
                             tags={"split": split, "sweepflow.digest": data.split_digests[split]})


@task(name="log-lineage")
def log_lineage_task(config: SweepflowConfig, tokens: TokenizedData, tracker: tracking.Tracker
                     ) -> None:
    log_lineage(config, tokens, tracker)
