"""Corrupt it: truncated SQLite stores are named in one line before any work; two cold runs
at once share the caches safely; a full disk leaves the study and the model folder
consistent. (A truncated .arrow cache file: tests/tasks/test_tokenize.py::
test_a_damaged_cache_entry_is_rebuilt.)"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from sweepflow.flows.cli import app
from typer.testing import CliRunner

from sweepflow import cache
from tests import ROOT

runner = CliRunner()


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("which", ["mlflow.db", "optuna.db"])
def test_truncated_store_is_named_before_any_work(tiny_overrides, store, which):
    store.mkdir(parents=True, exist_ok=True)
    MlflowClient(f"sqlite:///{store / 'mlflow.db'}").create_experiment("tiny")
    optuna.create_study(study_name="tiny", storage=f"sqlite:///{store / 'optuna.db'}")
    _truncate(store / which)
    for command in (["run", *tiny_overrides], ["compare", *tiny_overrides]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"store error: {store / which} is ")
        assert len(result.output.strip().splitlines()) == 1
    assert not (store / "cache").exists()  # ingest and tokenize never ran


CACHE_SCRIPT = """
import sys
from sweepflow.config import load_config
from sweepflow.tasks.ingest import ingest
from sweepflow.tasks.tokenize import tokenize
config = load_config(overrides=sys.argv[1:])
print(tokenize(config, ingest(config)).path)
"""


def test_two_cold_runs_at_once_share_the_caches(tiny_overrides, store):
    env = {"SWEEPFLOW_HOME": str(store), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, "-c", CACHE_SCRIPT, *tiny_overrides], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (_out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err[-3000:]
    paths = {out.strip().splitlines()[-1] for out, _ in results}
    assert len(paths) == 1
    for kind in ("ingest", "tokenized"):
        folder = store / "cache" / kind
        entries = list(folder.iterdir())
        assert [p for p in entries if p.name.startswith(".")] == []  # no temp folder left
        assert all(cache.check(p) is None for p in entries)


DISK_FULL_SCRIPT = """
import resource, signal, sys
import optuna
from sweepflow.config import load_config
from sweepflow.tasks.ingest import ingest
from sweepflow.tasks.sweep import TrialResult, basis, create_study, load_study, tell
from sweepflow.tasks.tokenize import tokenize
from sweepflow.tasks.train import TextClassifier

config = load_config(overrides=sys.argv[1:])
tokens = tokenize(config, ingest(config))
ref = create_study(config)
study = load_study(ref, config)
trial = study.ask()
trial.set_user_attr("basis", basis(tokens))
module = TextClassifier(tokens.model_path, tokens.data.label_names, config.train)
result = TrialResult(number=trial.number, state="complete", value=0.5, params={}, steps=1,
                     seconds=1.0, run_id="r")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
# Over the Optuna database (~120 kB), under the weights (~1.3 MB).
resource.setrlimit(resource.RLIMIT_FSIZE, (600_000, 600_000))
try:
    tell(study, trial, result, module, module.model.state_dict(), tokens, ref.models)
except OSError as err:
    print("refused:", err.errno)
"""


def _wider_model(tiny_model_dir: Path, out: Path) -> Path:
    """The tiny model's tokenizer with a wider BERT: weights larger than the database."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=256,
                        max_position_embeddings=128)
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.slow  # a real full file system mid-trial
def test_disk_full_leaves_the_study_and_model_folder_consistent(tiny_overrides, store,
                                                                 tiny_model_dir, tmp_path):
    model = _wider_model(tiny_model_dir, tmp_path / "wider")
    overrides = [*tiny_overrides, f"model.name_or_path={model}"]
    env = {"SWEEPFLOW_HOME": str(store), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(DISK_FULL_SCRIPT),
                           *overrides], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "refused: 27" in proc.stdout  # EFBIG
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{store / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL"]  # not COMPLETE without a model
    leftovers = list((store / "models").rglob("*"))
    assert [p for p in leftovers if p.is_file() or p.name.startswith(("trial-", "."))] == []


def test_a_folder_as_tracking_uri_is_one_line(tmp_path, monkeypatch):
    """MLflow 3 refuses a file store deep inside; the user gets the URI to write instead."""
    from sweepflow.stores import check_tracking
    from sweepflow.usererrors import StoreError

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    for uri in (str(tmp_path / "mlruns"), f"file://{tmp_path}/mlruns"):
        with pytest.raises(StoreError, match=f"use sqlite:///{tmp_path}/mlruns/mlflow.db"):
            check_tracking(uri)
    check_tracking(f"sqlite:///{tmp_path}/mlflow.db")
    check_tracking("http://127.0.0.1:5000")
