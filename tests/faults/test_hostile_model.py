"""A hostile model: a pyfunc model whose pickle runs code when loaded. `predict` refuses it
in one line and the payload never runs; --trust-model is the explicit way round."""

from __future__ import annotations

import os

import mlflow
import pytest
from sweepflow.flows.cli import app
from typer.testing import CliRunner

from sweepflow.modelsafety import check_model
from sweepflow.usererrors import UnsafeModel

runner = CliRunner()


class Payload:
    """Unpickling this calls open(path, "w"): a file appears if the pickle is loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class Hostile(mlflow.pyfunc.PythonModel):
    def __init__(self, path: str) -> None:
        self.payload = Payload(path)

    def predict(self, context, model_input):  # pragma: no cover - never reached
        return model_input


@pytest.fixture
def hostile_model(tmp_path):
    marker = tmp_path / "payload-ran"
    folder = tmp_path / "hostile"
    mlflow.pyfunc.save_model(str(folder), python_model=Hostile(str(marker)))
    marker.unlink(missing_ok=True)  # MLflow loads the pickle back once while saving
    assert (folder / "python_model.pkl").is_file()
    return folder, marker


def test_pickled_pyfunc_is_refused_and_never_loaded(tiny_overrides, hostile_model):
    folder, marker = hostile_model
    result = runner.invoke(app, ["predict", *tiny_overrides, "--model", str(folder), "hi"])
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("unsafe model: ") and len(err.splitlines()) == 1
    assert "--trust-model" in err
    assert not marker.exists()


def test_serve_model_refuses_it_too(tiny_overrides, hostile_model):
    folder, marker = hostile_model
    result = runner.invoke(app, ["serve-model", *tiny_overrides, "--model", str(folder)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("unsafe model: ") and not marker.exists()


def test_trust_model_loads_it(tiny_overrides, hostile_model):
    """The flag really bypasses the check: the payload runs (proof the test model is hostile)."""
    folder, marker = hostile_model
    runner.invoke(app, ["predict", *tiny_overrides, "--model", str(folder), "--trust-model",
                        "hi"])
    assert marker.exists()


@pytest.mark.parametrize("name", ["pytorch_model.bin", "weights.pkl", "model.pt"])
def test_pickle_bearing_weights_are_refused(tiny_model_dir, tmp_path, name):
    folder = tmp_path / "model"
    folder.mkdir()
    for f in tiny_model_dir.iterdir():
        os.symlink(f, folder / f.name)
    (folder / name).write_bytes(b"\x80\x04K\x01.")  # pickle protocol 4 of the int 1
    with pytest.raises(UnsafeModel, match=name):
        check_model(folder)


def test_a_pickle_under_another_name_is_refused(tiny_model_dir, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    for f in tiny_model_dir.iterdir():
        os.symlink(f, folder / f.name)
    (folder / "notes.txt").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(UnsafeModel, match="notes.txt .* holds a pickle"):
        check_model(folder)


def test_safetensors_model_folder_is_accepted(tiny_model_dir):
    check_model(tiny_model_dir)
