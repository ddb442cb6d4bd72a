"""`sweepflow ui` on a real store, driven by headless Chromium: the experiment page lists the
sweep's parent run, expanding it shows its trials, and an artifact is served from the
experiment's artifact location (the store's artifacts/ folder)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient
from sweepflow.flows.pipeline import pipeline_flow

from sweepflow import tracking
from tests.flows.servers import BIN, answers, clean_env, free_port, started, wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's /usr/bin/chromium "
                       "(apt-get install chromium); .ci/run installs it"),
]


def test_mlflow_ui_lists_sweep_and_trials(tiny_config, tiny_overrides, store, tmp_path):
    from playwright.sync_api import sync_playwright

    summary = pipeline_flow(tiny_config)
    client = MlflowClient(tracking.tracking_uri(tiny_config))
    experiment = client.get_experiment_by_name("tiny")
    assert experiment.artifact_location == (store / "artifacts").as_uri()

    base = f"http://127.0.0.1:{free_port()}"
    log = tmp_path / "ui.log"
    cmd = [str(BIN / "sweepflow"), "ui", "--port", base.rsplit(":", 1)[1], *tiny_overrides]
    with started(cmd, log, clean_env()) as ui:
        wait_for(lambda: answers(f"{base}/health"), 120, "the MLflow UI", [log], [ui])
        runs_url = f"/#/experiments/{experiment.experiment_id}/runs"
        assert f"{base}{runs_url}?workflowType=machine_learning" in log.read_text()

        # The server reads artifacts where the run put them: <store>/artifacts/<run id>/...
        response = httpx.get(f"{base}/get-artifact", timeout=30,
                             params={"path": "config.yaml", "run_uuid": summary.run_id})
        on_disk = store / "artifacts" / summary.run_id / "artifacts" / "config.yaml"
        assert response.status_code == 200 and response.text == on_disk.read_text()

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                page.set_default_timeout(30_000)
                # workflowType picks the "Model training" view; the default is GenAI.
                page.goto(f"{base}{runs_url}?workflowType=machine_learning",
                          wait_until="domcontentloaded")
                parent = page.get_by_role("link", name="sweep-tiny", exact=True)
                parent.wait_for()
                # Trials are nested under their parent, collapsed: click its expander.
                row = page.get_by_role("row").filter(has=parent)
                row.locator('button[data-component-id*="runnamecellrenderer"]').click()
                for trial in ("trial-0", "trial-1"):
                    page.get_by_role("link", name=trial, exact=True).wait_for()
                page.screenshot(path=tmp_path / "runs.png")

                page.goto(f"{base}/#/experiments/{experiment.experiment_id}/runs/"
                          f"{summary.run_id}/artifacts?workflowType=machine_learning",
                          wait_until="domcontentloaded")
                page.get_by_text("config.yaml", exact=True).first.click()
                page.get_by_text(f"Path: {on_disk.as_uri()}").wait_for()
                page.get_by_text("max_length").first.wait_for()
                page.screenshot(path=tmp_path / "artifact.png")
            finally:
                browser.close()
