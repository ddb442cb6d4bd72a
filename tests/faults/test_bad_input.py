"""Feed it garbage: bad config and bad data stop before any work, in one line naming the
file (and line or key), without a traceback and without quoting a file's content."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL
from sweepflow.flows.cli import app
from typer.testing import CliRunner

from tests.faults.conftest import cli_env, run_cli

runner = CliRunner()


def _nothing_written(store: Path) -> None:
    assert not (store / "mlflow.db").exists() and not (store / "cache").exists()


@pytest.mark.parametrize(("text", "message"), [
    ("train:\n  batch_size: [1, 2\n", "exp.yaml:3: not valid YAML"),
    ("train:\n\tbatch_size: 3\n", "exp.yaml:2: not valid YAML"),
    ("train: !!python/object/apply:os.system ['touch {marker}']\n",
     "exp.yaml:1: YAML tags such as '!!python/object/apply:os.system' are not allowed"),
])
def test_bad_yaml_is_one_line_exit_2(tmp_path, store, text, message):
    marker = tmp_path / "pwned"
    exp = tmp_path / "exp.yaml"
    exp.write_text(text.format(marker=marker))
    result = runner.invoke(app, ["run", "--config", str(exp)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("config error: ") and message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not marker.exists()
    _nothing_written(store)


@pytest.mark.parametrize(("override", "message"), [
    ("sweep.space.learning_rate={type: float, low: 0.1, high: 0.01}",
     "'sweep.space.learning_rate': low=0.1 is above high=0.01"),
    ("sweep.space.batch_size={type: int, low: 0, high: 8}",
     "sweep.space.batch_size.low=0 is not a valid train.batch_size"),
    ("sweep.space.learning_rate={type: float, low: -1, high: 0.01}",
     "sweep.space.learning_rate.low=-1.0 is not a valid train.learning_rate"),
    ("sweep.space.warmup_ratio={type: categorical, choices: [0.0, 1.5]}",
     "sweep.space.warmup_ratio.choices[1]=1.5 is not a valid train.warmup_ratio"),
    ("sweep.space.learning_rate={type: float, low: 0.0, high: 0.1, log: true}",
     "log=true needs low > 0"),
    ("sweep.space.learning_rate={type: float, low: 0.01, high: 0.1, log: true, step: 0.01}",
     "log=true and a step cannot be combined"),
])
def test_search_space_checked_at_load(tiny_overrides, store, override, message):
    result = runner.invoke(app, ["run", *tiny_overrides, override])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("config error: ") and message in result.output
    _nothing_written(store)  # no parent run opened, no trial left RUNNING


def test_ragged_tsv_names_file_and_line_without_traceback(tiny_overrides, store, tmp_path):
    tsv = tmp_path / "train.tsv"
    tsv.write_text("text\tsentiment\ngreat day\tpositive\nsecret-value\tbad\tnegative\n")
    overrides = [o for o in tiny_overrides if not o.startswith("data.path")]
    result = run_cli(["run", *overrides, f"data.path={tsv}"],
                     cli_env(store, PREFECT_API_URL.value()))
    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-3000:]
    assert out.strip() == (f"data error: {tsv}: line 3 has 3 fields, the header has 2 "
                           "(separator '\\t'); fix or quote that row")
    assert "secret-value" not in out


def test_symlink_outside_allowed_dirs_is_refused_without_content(tiny_overrides, tmp_path):
    target = Path("/etc/hostname") if Path("/etc/hostname").is_file() else Path("/etc/passwd")
    link = tmp_path / "data.csv"
    link.symlink_to(target)
    overrides = [o for o in tiny_overrides if not o.startswith("data.path")]
    result = runner.invoke(app, ["run", *overrides, f"data.path={link}"])
    assert result.exit_code == 1, result.output
    assert f"(it resolves to {target}) is outside data.allowed_dirs" in result.output
    content = target.read_text().splitlines()[0]
    assert content not in result.output


def test_dropped_rows_are_reported_with_their_reason(tiny_overrides, tmp_path):
    """Rows without a label and empty texts are dropped, and the run says so."""
    from sweepflow.tasks.ingest import describe, ingest

    from sweepflow.config import load_config
    from tests.conftest import make_frame

    df = make_frame()
    df.loc[[0, 1, 2], "sentiment"] = None
    df.loc[[3, 4], "text"] = "   "
    path = tmp_path / "holes.csv"
    df.to_csv(path, index=False)
    overrides = [o for o in tiny_overrides if not o.startswith("data.path")]
    lines = describe(ingest(load_config(overrides=[*overrides, f"data.path={path}"])))
    text = "\n".join(lines)
    assert "dropped 3 rows without a label" in text
    assert "dropped 2 texts empty after cleaning" in text


@pytest.mark.parametrize(("change", "extra", "message"), [
    ({"tags": "billing"}, [], "mixes label lists and single labels: row 4 holds a single label"),
    # the others in the slow tier (each starts a flow; tests/tasks/test_multilabel.py checks
    # every message at the step itself, fast)
    pytest.param({"tags": '["billing", "refunds"]'}, ["data.labels=[billing, bug, urgent]"],
                 "label 'refunds' in column 'tags' of {path} (split train), row 4, is not in "
                 "data.labels", marks=pytest.mark.slow),
    pytest.param({"tags": "[]"}, ["data.allow_empty_labels=false"],
                 "column 'tags' of {path} (split train), row 4, has no label",
                 marks=pytest.mark.slow),
    pytest.param({"urgent": 7}, ["data.label_columns=[billing, urgent, bug]"],
                 "column 'urgent' of {path} (split train), row 4, holds 7: data.label_columns "
                 "columns hold 0 or 1", marks=pytest.mark.slow),
])
def test_bad_multi_label_input_is_one_line_before_training(tiny_overrides, store, tmp_path,
                                                           change, extra, message):
    """A bad label cell or 0/1 column: one line naming file, column and row; no run left
    RUNNING, no prepared data written."""
    from tests.faults.conftest import statuses
    from tests.tasks.test_multilabel import make_multilabel

    frame = make_multilabel().astype(object)
    for column, value in change.items():
        frame.loc[3, column] = value
    path = tmp_path / "tickets.csv"
    frame.to_csv(path, index=False)
    overrides = [o for o in tiny_overrides if not o.startswith("data.path")]
    result = runner.invoke(app, ["run", *overrides, f"data.path={path}",
                                 "data.label_column=tags", *extra])
    assert result.exit_code == 1, result.output
    # (in process, the datasets library's progress line shares the output: not the CLI's)
    lines = [line for line in result.output.splitlines() if "error" in line]
    assert len(lines) == 1 and lines[0].count("data error: ") == 1, result.output
    assert message.format(path=path) in lines[0].split("data error: ")[1]
    assert "RUNNING" not in statuses(store).values() if (store / "mlflow.db").exists() else True
    assert not list(store.rglob("result.json"))
