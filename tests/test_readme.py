"""The README's step list of the default run follows the pipeline's DAG (flows/pipeline.py)."""

from __future__ import annotations

import inspect
import re

from sweepflow.flows.pipeline import pipeline_flow

from tests import ROOT

# README step name -> the call that runs it in pipeline_flow
STEPS = {"ingest": "ingest_task(", "tokenize": "tokenize_task(",
         "champion": "check_champion_task(", "drift": "drift_task(", "sweep": "sweep_flow(",
         "evaluate": "evaluate_task(", "register": "register_task(",
         "compress": "compress_task("}


def test_readme_steps_follow_the_dag():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## What the default experiment does", 1)[1].split("\n## ", 1)[0]
    named = re.findall(r"\*\*(\w+)\*\*", section)
    assert named == list(STEPS)  # every step, in the README's order
    body = inspect.getsource(pipeline_flow.fn)
    calls = re.findall(r"\b(\w+_(?:task|flow))\(", body)
    steps = [c + "(" for c in calls if c + "(" in STEPS.values()]
    assert steps == list(STEPS.values())  # the DAG runs them in that order, each once
