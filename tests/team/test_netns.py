"""Team mode across hosts: two network namespaces (tests/team/netns.py) stand in for two
machines, each with its own hostname, its own store and one Prefect worker, reaching the
servers (a private PostgreSQL cluster, the MLflow and Prefect servers) by the server address,
with only the shared folder in common. The sweep's parent runs beside the servers.

The servers listen beyond loopback, so they ask for credentials: MLflow's basic-auth admin,
Prefect's API auth string, PostgreSQL's scram password for every address but 127.0.0.1.
Every process here gets them from its environment (host-b's database password from a
PGPASSFILE); a client without them is refused by each server."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from sweepflow.tasks.team import WORKER_TAG

from sweepflow.credentials import (
    MLFLOW_PASSWORD,
    MLFLOW_USER,
    OPTIONAL,
    PREFECT_AUTH,
    REQUIRED,
    Credentials,
)
from sweepflow.stack import database_url, ensure_databases, started_stack
from tests.flows.servers import clean_env, free_port, started, tail, wait_for
from tests.team import netns
from tests.team.conftest import BIN, sweepflow_cmd
from tests.team.pgcluster import NoCluster, private_cluster
from tests.team.test_team_faults import _check_one_sweep, _opt, _study

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

HOSTNAMES = ("host-a", "host-b")


@dataclass(frozen=True)
class Site:
    """Two hosts and the servers they reach."""

    net: netns.Network
    pg: str  # the PostgreSQL server as the hosts see it (no database)
    admin: str  # the same server from the servers' machine (local, trusted)
    mlflow: str
    prefect_api: str
    shared: Path
    root: Path
    creds: Credentials

    def env(self, who: str, credentials: bool = True) -> dict[str, str]:
        """The environment of a process on host `who`: its own store and Prefect home, and
        the credentials (host-b's database password in a PGPASSFILE) unless told not to."""
        home = self.root / who
        base = {k: v for k, v in clean_env().items() if k not in (*REQUIRED, *OPTIONAL)}
        creds = dict(self.creds.values) if credentials else {"PGPASSFILE": "/nonexistent"}
        if credentials and who == HOSTNAMES[1]:
            passfile = home / "pgpass"
            passfile.parent.mkdir(parents=True, exist_ok=True)
            passfile.write_text(f"*:*:*:postgres:{creds.pop('PGPASSWORD')}\n")
            passfile.chmod(0o600)
            creds["PGPASSFILE"] = str(passfile)
        return {**base, **creds, "PREFECT_API_URL": self.prefect_api,
                "SWEEPFLOW_HOME": str(home / "mlruns"), "PREFECT_HOME": str(home / "prefect"),
                "PREFECT_WORKER_QUERY_SECONDS": "1", "HF_HUB_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}

    def prefect_auth(self) -> tuple[str, str]:
        user, _, password = self.creds.values[PREFECT_AUTH].partition(":")
        return user, password

    def on(self, i: int, *args: str) -> list[str]:
        """`args` run on host i, under its own hostname (a UTS namespace of their own)."""
        return self.net.hosts[i].cmd("unshare", "--uts", "sh", "-c",
                                     f'hostname {HOSTNAMES[i]} && exec "$0" "$@"', *args)


@pytest.fixture
def net() -> Iterator[netns.Network]:
    reason = netns.problem()
    if reason:
        pytest.skip(f"hosts as network namespaces: {reason}")
    with netns.network(2) as built:
        yield built


def new_credentials() -> Credentials:
    return Credentials({MLFLOW_USER: "team", MLFLOW_PASSWORD: secrets.token_urlsafe(18),
                        PREFECT_AUTH: f"team:{secrets.token_urlsafe(18)}",
                        "PGPASSWORD": secrets.token_urlsafe(18)}, "the test")


@pytest.fixture
def site(net: netns.Network, tmp_path: Path, tiny_model_dir: Path,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    creds = new_credentials()
    for key, value in creds.values.items():  # this process reads the study and the runs
        monkeypatch.setenv(key, value)
    try:
        with private_cluster(listen=(net.server,), password=creds.values["PGPASSWORD"]
                             ) as cluster, started_stack(
                tmp_path / "stack", "sf", host=net.server, mlflow_port=free_port(),
                prefect_port=free_port(), server=cluster.url, credentials=creds) as stack:
            shared = tmp_path / "shared"
            shutil.copytree(tiny_model_dir, shared / "model")  # the hosts share nothing else
            yield Site(net=net, pg=cluster.url_at(net.server), admin=cluster.url,
                       mlflow=stack.mlflow_url, prefect_api=stack.prefect_api, shared=shared,
                       root=tmp_path, creds=creds)
    except NoCluster as err:
        pytest.skip(str(err))


def _overrides(site: Site, csv: Path, *extra: str) -> list[str]:
    db = f"sf_{uuid.uuid4().hex[:12]}"
    ensure_databases(site.admin, [db])
    return [
        f"data.path={csv}", "data.max_train_samples=null", "data.max_eval_samples=null",
        f"model.name_or_path={site.shared / 'model'}", "tokenize.max_length=16",
        "train.max_epochs=2", "train.batch_size=16", "train.val_checks_per_epoch=2",
        "train.early_stopping_patience=20", "train.precision=32-true", "compress.enabled=false",
        "sweep.pruner=none", "sweep.n_trials=3", "sweep.workers=2", "sweep.start_worker=false",
        "registry.refuse_single_class=false", f"sweep.storage={database_url(site.pg, db)}",
        f"sweep.work_pool=pool-{uuid.uuid4().hex[:8]}", "sweep.heartbeat_interval=1",
        "sweep.grace_period=10", "sweep.max_retry=2", f"tracking.uri={site.mlflow}",
        f"tracking.experiment=hosts-{uuid.uuid4().hex[:8]}", f"store.shared_dir={site.shared}",
        *extra]


def _worker(site: Site, i: int, pool: str) -> list[str]:
    return site.on(i, str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type",
                   "process", "--limit", "1")


def _predict(site: Site, i: int, overrides: list[str]) -> subprocess.CompletedProcess:
    keep = [o for o in overrides if o.startswith(("tracking.", "data."))]
    return subprocess.run(site.on(i, *sweepflow_cmd("predict", *keep, "great love happy")),
                          capture_output=True, text=True, timeout=300,
                          env=site.env(HOSTNAMES[i]))


PROBE = """
import json, sys, httpx, psycopg2
mlflow, prefect, pg, wrong = sys.argv[1:5]
search = f"{mlflow}/api/2.0/mlflow/experiments/search?max_results=1"
said = {"mlflow": httpx.get(search, timeout=30).status_code,
        "mlflow wrong": httpx.get(search, auth=("team", wrong), timeout=30).status_code,
        "prefect": httpx.post(f"{prefect}/flows/filter", json={}, timeout=30).status_code,
        "prefect wrong": httpx.post(f"{prefect}/flows/filter", json={}, auth=("team", wrong),
                                    timeout=30).status_code}
for name, extra in (("postgres", {}), ("postgres wrong", {"password": wrong})):
    try:
        psycopg2.connect(f"{pg}/postgres", connect_timeout=10, **extra).close()
        said[name] = "connected"
    except psycopg2.OperationalError as err:
        said[name] = str(err).strip().splitlines()[-1]
if sys.argv[5:] == ["clients"]:  # the products' own clients, credentials from the environment
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    said["mlflow client"] = [e.name for e in MlflowClient(mlflow).search_experiments()]
    with get_client(sync_client=True) as client:
        said["prefect client"] = type(client.read_flows(limit=1)).__name__
print(json.dumps(said))
"""


def _probe(site: Site, credentials: bool) -> dict[str, object]:
    """From host-a: each server asked without credentials and with a wrong password, and
    (with `credentials` in the environment) by the products' own clients."""
    done = subprocess.run(site.on(0, sys.executable, "-c", PROBE, site.mlflow, site.prefect_api,
                                  site.pg, "wrong-password-123",
                                  *(["clients"] if credentials else [])),
                          capture_output=True, text=True, timeout=300,
                          env=site.env(HOSTNAMES[0], credentials))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_from_another_host_a_client_without_credentials_is_refused(site):
    """MLflow and Prefect answer 401 without credentials or with a wrong password, PostgreSQL
    refuses the connection; with the credentials in the environment the same host's MLflow,
    Prefect and PostgreSQL clients get in."""
    without = _probe(site, credentials=False)
    print(without)
    assert without["mlflow"] == without["mlflow wrong"] == 401
    assert without["prefect"] == without["prefect wrong"] == 401
    assert "no password supplied" in without["postgres"]
    assert 'password authentication failed for user "postgres"' in without["postgres wrong"]
    with_them = _probe(site, credentials=True)
    print(with_them)
    assert with_them["postgres"] == "connected", with_them
    assert "Default" in with_them["mlflow client"], with_them
    assert with_them["prefect client"] == "list", with_them


def _everything_said(site: Site, overrides: list[str], logs: list[Path]) -> str:
    """The consoles and logs of the parent, the workers and the servers; the MLflow runs'
    params and tags; the Prefect flow runs' parameters and stored logs."""
    texts = [p.read_text(errors="replace") for p in logs]
    texts += [p.read_text(errors="replace") for p in (site.root / "stack").rglob("*.log")]
    client = MlflowClient(site.mlflow)
    exp = client.get_experiment_by_name(_opt(overrides, "tracking.experiment"))
    for run in client.search_runs([exp.experiment_id]):
        texts.append(json.dumps([run.data.params, run.data.tags]))
    for run in _worker_runs(site, ("pipeline", "sweep", "trial-worker")):
        texts += [json.dumps(run["parameters"]), _run_log(site, run)]
    return "\n".join(texts)


def test_a_sweep_across_two_hosts(site, team_csv, tmp_path):
    overrides = _overrides(site, team_csv)
    pool = _opt(overrides, "sweep.work_pool")
    logs = [tmp_path / "parent.log", tmp_path / "host-a.log", tmp_path / "host-b.log"]
    began = time.monotonic()
    with started(_worker(site, 0, pool), logs[1], site.env(HOSTNAMES[0])), \
            started(_worker(site, 1, pool), logs[2], site.env(HOSTNAMES[1])), \
            started(sweepflow_cmd("run", *overrides), logs[0], site.env("parent")) as parent:
        assert parent.wait(900) == 0, "\n".join(tail(p, 60) for p in logs)
    print(f"sweep of 3 trials on 2 namespaced hosts: {time.monotonic() - began:.0f} s")
    said = _everything_said(site, overrides, logs)
    assert "trial-worker" in said and "sweep.storage" in said
    for secret in site.creds.secret_values():
        assert secret not in said  # never in a log, a run's params or a flow run's
    study, children = _check_one_sweep(overrides, site.mlflow)
    where = {t.user_attrs[WORKER_TAG].split(":")[0] for t in study.get_trials()}
    assert where == set(HOSTNAMES)  # both hosts ran trials
    assert {r.info.status for r in children} == {"FINISHED"}
    for i in range(2):  # the registered best model, from either host
        done = _predict(site, i, overrides)
        assert done.returncode == 0, done.stderr[-3000:]
        line = json.loads(done.stdout.strip().splitlines()[-1])
        assert line["text"] == "great love happy" and line["label"]


def _running_on(overrides: list[str], host: str) -> optuna.trial.FrozenTrial | None:
    """A RUNNING trial of `host` that has reported a validation."""
    study = _study(overrides)
    for t in study.get_trials(states=(TrialState.RUNNING,)) if study else []:
        if t.user_attrs.get(WORKER_TAG, "").startswith(f"{host}:") and t.intermediate_values:
            return t
    return None


def _retry_of(overrides: list[str], victim: optuna.trial.FrozenTrial
              ) -> optuna.trial.FrozenTrial | None:
    """The victim's retry once a worker has taken it (a retry starts with a copy of the
    victim's user attributes, the worker's tag included, until its worker sets its own)."""
    study = _study(overrides)
    for t in study.get_trials() if study else []:
        if victim.number in t.system_attrs.get("retry_history", []) and t.user_attrs.get(
                WORKER_TAG) != victim.user_attrs[WORKER_TAG]:
            return t
    return None


def _worker_runs(site: Site, flows: tuple[str, ...] = ("trial-worker",)) -> list[dict]:
    answer = httpx.post(f"{site.prefect_api}/flow_runs/filter", timeout=30,
                        auth=site.prefect_auth(), json={"flows": {"name": {"any_": flows}}})
    answer.raise_for_status()
    return answer.json()


def _run_log(site: Site, run: dict) -> str:
    """A flow run's log lines, as the Prefect server keeps them."""
    lines, offset = [], 0
    while True:
        answer = httpx.post(f"{site.prefect_api}/logs/filter", timeout=30,
                            auth=site.prefect_auth(), json={
            "logs": {"flow_run_id": {"any_": [run["id"]]}}, "offset": offset, "limit": 200})
        answer.raise_for_status()
        lines += [entry["message"] for entry in answer.json()]
        if len(answer.json()) < 200:
            return "\n".join(lines)
        offset += 200


def test_a_partition_longer_than_the_grace_period(site, team_csv, tmp_path):
    """Host A is cut off (its link down) in the middle of a trial for longer than
    sweep.grace_period, until its trial's retry runs on host B; then its link comes back.
    Its late result is refused, its run ends KILLED with the reason, the kept model and the
    registry are the study's best, and the sweep ends with the asked trials."""
    overrides = _overrides(site, team_csv, "train.max_epochs=4", "sweep.grace_period=5")
    pool = _opt(overrides, "sweep.work_pool")
    logs = [tmp_path / "parent.log", tmp_path / "host-a.log", tmp_path / "host-b.log"]
    host_a = site.net.hosts[0]
    with started(_worker(site, 0, pool), logs[1], site.env(HOSTNAMES[0])), \
            started(_worker(site, 1, pool), logs[2], site.env(HOSTNAMES[1])), \
            started(sweepflow_cmd("run", *overrides), logs[0], site.env("parent")) as parent:
        victim = wait_for(lambda: _running_on(overrides, HOSTNAMES[0]), 600,
                          "a trial on host-a that has reported a validation", logs, [parent])
        host_a.cut()
        cut = time.monotonic()
        try:
            retry = wait_for(lambda: _retry_of(overrides, victim), 300,
                             f"trial {victim.number} retried on host-b", logs, [parent])
            while time.monotonic() - cut < 15:  # at least 3 grace periods
                time.sleep(1)
        finally:
            host_a.restore()
        print(f"host-a cut off for {time.monotonic() - cut:.0f} s")
        assert parent.wait(900) == 0, "\n".join(tail(p, 60) for p in logs)
    study, children = _check_one_sweep(overrides, site.mlflow)
    trials = study.get_trials()
    assert trials[victim.number].state == TrialState.FAIL
    assert trials[retry.number].user_attrs[WORKER_TAG].startswith(f"{HOSTNAMES[1]}:")
    assert trials[retry.number].state == TrialState.COMPLETE
    assert trials[retry.number].params == victim.params
    run_of = {int(r.data.tags["optuna.trial_number"]): r for r in children}
    late = run_of[victim.number]
    assert late.info.status == "KILLED"
    assert late.data.tags["error"].startswith(("late result refused", f"trial {victim.number}"
                                                                      " abandoned")), late
    assert "optuna.steps" not in late.data.tags  # nothing of it was told
    # The kept model and the registry: the study's best, never the late trial
    kept = sorted(p.name for p in site.shared.glob("models/*/*/trial-*"))
    assert kept == [f"trial-{study.best_trial.number}"], kept
    assert study.best_trial.number != victim.number
    client = MlflowClient(site.mlflow)
    name = _opt(overrides, "tracking.experiment")
    assert [v.version for v in client.search_model_versions(f"name = '{name}'")] == ["1"]
    assert f"best trial #{study.best_trial.number}:" in logs[0].read_text()
    # Both trial workers ended cleanly (host-a's went back to the queue after the refusal)
    runs = _worker_runs(site)
    assert {r["state_type"] for r in runs} == {"COMPLETED"}
    said = [_run_log(site, r) for r in runs]
    print(f"trial {victim.number}'s run: {late.data.tags['error']}")
    assert [f"trial {victim.number} failed" in text and late.data.tags["error"] in text
            for text in said].count(True) == 1, said
