"""The temporary Prefect server of `sweepflow run` without PREFECT_API_URL: up for the block,
PREFECT_API_URL pointing at it meanwhile, and stopped on every way out of it."""

from __future__ import annotations

import contextlib
import os

import psutil
import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings
from sweepflow.flows.tempserver import temporary_server

from sweepflow.netutil import answers
from tests.faults.conftest import children_with


def _servers() -> list[psutil.Process]:
    return children_with("ephemeral_app")


@pytest.mark.parametrize("leave", ["normally", "on an error", "on Ctrl-C"])
def test_the_server_is_stopped_on_every_way_out(monkeypatch, tmp_path, leave):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))  # its own database
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        raises = pytest.raises((RuntimeError, KeyboardInterrupt))
        with raises if leave != "normally" else contextlib.nullcontext():
            with temporary_server(timeout=120) as url:
                assert url and answers(f"{url}/health")
                assert os.environ["PREFECT_API_URL"] == url == PREFECT_API_URL.value()
                (server,) = _servers()
                assert os.getsid(server.pid) == server.pid  # its own session: no Ctrl-C
                if leave == "on an error":
                    raise RuntimeError("boom")
                if leave == "on Ctrl-C":
                    raise KeyboardInterrupt
        assert not server.is_running() and not answers(f"{url}/health")
        assert "PREFECT_API_URL" not in os.environ


def test_a_configured_api_is_used_as_it_is():
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        with temporary_server() as url:
            assert url is None and not _servers()

