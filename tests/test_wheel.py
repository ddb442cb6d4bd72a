"""The installed package runs without the checkout: build the wheel, install it into a fresh
venv outside the checkout, then `sweepflow run -c quick` from another working folder on a
temporary store.

To stay offline and fast the new venv borrows the already installed dependencies: a .pth file
appends this venv's site-packages (never the checkout, and its editable finder is not loaded:
.pth files are read in site directories only), and the wheel is installed with --no-deps."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "README.md", "sweepflow", "flows", "tasks", "conf"]

pytestmark = pytest.mark.slow


def _venv_env(home: Path) -> dict[str, str]:
    """A clean environment: no PYTHONPATH, no Prefect/MLflow settings of this session."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))
           and k not in ("PYTHONPATH", "VIRTUAL_ENV", "SWEEPFLOW_HOME")}
    return {**env, "SWEEPFLOW_HOME": str(home / "store"), "PREFECT_HOME": str(home / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def _build_wheel(tmp: Path) -> Path:
    """Build from a copy of the sources, so the checkout gets no build/ folder."""
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "local.yaml"))
        else:
            shutil.copy2(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp / "dist").glob("sweepflow-*.whl")
    return wheel


def _fresh_venv(tmp: Path, wheel: Path, env: dict[str, str]) -> Path:
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig."
                                "get_paths()['purelib'])"], check=True, capture_output=True,
                               text=True).stdout.strip())
    deps = Path(sysconfig.get_paths()["purelib"])
    assert not deps.is_relative_to(REPO) or deps.is_relative_to(REPO / ".venv")
    (site / "borrowed-deps.pth").write_text(f"{deps}\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True, env=env, cwd=tmp)
    return venv


def test_wheel_runs_outside_the_checkout(tmp_path: Path, tiny_overrides: list[str]) -> None:
    env = _venv_env(tmp_path)
    wheel = _build_wheel(tmp_path)
    venv = _fresh_venv(tmp_path, wheel, env)
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert {"tasks", "flows", "conf"}.isdisjoint(p.name for p in site.iterdir())
    assert (site / "sweepflow" / "conf" / "experiments" / "quick.yaml").is_file()

    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sweepflow.flows.cli, sweepflow.tasks.train"
         " as t, sweepflow.paths as p; print(t.__file__); print(p.CONF_DIR)"],
        check=True, capture_output=True, text=True, cwd=work, env=env).stdout.split()
    for path in where:
        assert Path(path).is_relative_to(site), path

    overrides = [o for o in tiny_overrides if not o.startswith("tracking.experiment=")]
    out = subprocess.run([str(venv / "bin" / "sweepflow"), "run", "-c", "quick", *overrides],
                         capture_output=True, text=True, cwd=work, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "sweepflow-quick v1" in out.stdout, out.stdout[-3000:]
    models = list((tmp_path / "store" / "models").glob("*/*/trial-*/config.json"))
    assert models, sorted(p.name for p in (tmp_path / "store").iterdir())
    assert not (work / "mlruns").exists() and not (REPO / "build").exists()
