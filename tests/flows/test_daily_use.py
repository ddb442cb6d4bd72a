"""Daily use on a real store: two tiny pipeline runs register versions 1 and 2 (the second
also compresses its model to int8: version 3), `predict` labels texts with the champion,
`compare` tables both sweeps (decision, p-value, cost) and plots their curves."""

from __future__ import annotations

import io
import json

import pytest
from mlflow.tracking import MlflowClient
from rich.console import Console
from sweepflow.flows.cli import _split_overrides, app
from sweepflow.flows.pipeline import pipeline_flow
from sweepflow.tasks.summary import print_summary
from typer.testing import CliRunner

from sweepflow import tracking
from sweepflow.config import load_config

LABELS = {"negative", "neutral", "positive"}
runner = CliRunner()


def _json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_register_predict_compare(tiny_config, tiny_overrides, tmp_path):
    first = pipeline_flow(tiny_config)
    assert first.registry is not None
    assert (first.registry.version, first.registry.decision) == (1, "promoted")
    # Same data, one more trial of the same (continued) study: the same test digest.
    second = pipeline_flow(load_config(overrides=[
        *tiny_overrides, "sweep.n_trials=1", "compress.enabled=true",
        "compress.latency_texts=5", "compress.throughput_batches=1", "compress.max_f1_drop=1"]))
    reg = second.registry
    assert reg is not None and reg.version == 2 and reg.comparison is not None
    significant = reg.comparison.significant(tiny_config.registry.alpha) and (
        reg.score > reg.champion_score)
    assert reg.decision == ("promoted" if significant else "kept_champion")
    client = MlflowClient(tracking.tracking_uri(tiny_config))
    aliases = client.get_registered_model("tiny").aliases
    int8 = {"challenger-int8": 3} | ({"champion-int8": 3} if significant else {})
    assert aliases == {"challenger": 2, "champion": reg.champion_version, **int8}
    parent = client.get_run(second.run_id)
    assert parent.data.tags["registry.decision"] == reg.decision
    assert parent.data.metrics["test/champion_f1_macro"] == first.registry.score
    assert parent.data.metrics["registry/p_value"] == reg.comparison.p_value
    assert "compress/int8_latency_p50_ms" in parent.data.metrics
    _check_cost(client, second.run_id)
    out = io.StringIO()
    print_summary(second, Console(file=out, width=200))
    assert f"registry: tiny v2 (test/f1_macro {reg.score:.4f}) {reg.decision}" in out.getvalue()
    _check_sweep_artifacts(client, second.run_id)

    result = runner.invoke(app, ["predict", *tiny_overrides, "great love happy",
                                 "awful hate worst"])
    assert result.exit_code == 0, result.output
    lines = _json_lines(result.stdout)
    assert [p["text"] for p in lines] == ["great love happy", "awful hate worst"]
    assert all(p["label"] in LABELS and 0 < p["probability"] <= 1 for p in lines)

    (tmp_path / "texts.txt").write_text("the road today\n\nnice fun day\n")
    result = runner.invoke(app, ["predict", *tiny_overrides, "--model", "models:/tiny/1",
                                 "--file", str(tmp_path / "texts.txt")])
    assert result.exit_code == 0, result.output
    assert [p["text"] for p in _json_lines(result.stdout)] == ["the road today", "nice fun day"]

    html, png = tmp_path / "out" / "curves.html", tmp_path / "out" / "curves.png"
    result = runner.invoke(app, ["compare", *tiny_overrides, "--html", str(html), "--png",
                                 str(png)], env={"COLUMNS": "220"})
    assert result.exit_code == 0, result.output
    for summary in (first, second):
        assert summary.run_id[:8] in result.stdout
    for row in ("trials complete/pruned/failed", "best validation score", "data digest"):
        assert row in result.stdout
    assert "kept_champion" in result.stdout or "promoted" in result.stdout
    assert "McNemar p=" in result.stdout and "cost: CPU / wall (trials)" in result.stdout
    assert png.read_bytes().startswith(b"\x89PNG")
    assert f"sweep-tiny {second.run_id[:8]}" in html.read_text()
    assert sorted(p.name for p in html.parent.iterdir()) == ["curves.html", "curves.png"]


def _check_cost(client: MlflowClient, run_id: str) -> None:
    """Each trial and the parent carry their cost; the parent also its trials' totals."""
    parent = client.get_run(run_id).data.metrics
    trials = client.search_runs([client.get_run(run_id).info.experiment_id],
                                f"tags.mlflow.parentRunId = '{run_id}'")
    assert trials
    for trial in trials:
        m = trial.data.metrics
        assert m["cost/cpu_seconds"] > 0 and m["cost/wall_seconds"] > 0
        assert m["cost/peak_rss_mb"] > 50  # a Python process with torch loaded
    assert parent["cost/trials_cpu_seconds"] == pytest.approx(
        sum(t.data.metrics["cost/cpu_seconds"] for t in trials))
    assert parent["cost/wall_seconds"] > parent["cost/trials_wall_seconds"]


def _check_sweep_artifacts(client: MlflowClient, run_id: str) -> None:
    """The per-sweep comparison artifacts of issue 5 on the parent run."""
    names = {a.path.split("/")[-1] for a in client.list_artifacts(run_id, "sweep")}
    for plot in ("optimization_history", "parallel_coordinate", "intermediate_values"):
        assert {f"{plot}.html", f"{plot}.png"} <= names, plot
    assert "trials.csv" in names
    metrics = client.get_run(run_id).data.metrics
    for key in ("sweep/best_value", "sweep/n_complete", "sweep/n_pruned", "sweep/n_failed",
                "sweep/wall_seconds"):
        assert key in metrics, key


def test_predict_errors_name_the_problem(tiny_overrides, tmp_path):
    result = runner.invoke(app, ["predict", *tiny_overrides, "some text"])
    assert result.exit_code == 1
    assert "cannot load models:/tiny@champion" in result.stderr and not result.stdout
    result = runner.invoke(app, ["predict", *tiny_overrides, "-f", str(tmp_path / "no.txt")])
    assert result.exit_code == 1 and "file not found" in result.stderr
    (tmp_path / "t.csv").write_text("body\nhello\n")
    result = runner.invoke(app, ["predict", *tiny_overrides, "-f", str(tmp_path / "t.csv")])
    assert result.exit_code == 1 and "has no column 'text'" in result.stderr


def test_compare_without_sweeps(tiny_overrides):
    result = runner.invoke(app, ["compare", *tiny_overrides, "--experiment", "nothing"])
    assert result.exit_code == 1 and "no sweeps in experiment 'nothing'" in result.stdout


@pytest.mark.parametrize(("arg", "is_override"), [
    ("tracking.experiment=x", True), ("seed=3", True), ("registry.modle_name=x", True),
    ("great day", False), ("a=b is not a key", False), ("x.tracking=1", False),
])
def test_split_overrides(arg, is_override):
    overrides, texts = _split_overrides([arg])
    assert (overrides, texts) == (([arg], []) if is_override else ([], [arg]))
