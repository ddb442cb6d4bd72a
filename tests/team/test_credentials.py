"""The team servers' credentials: from a secrets file (owner-only) or the environment, required
beyond loopback; `sweepflow stack` refuses to start without them in one line. No servers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sweepflow.credentials import (
    CredentialsError,
    from_environment,
    is_loopback,
    read_secrets,
    require_for,
    write_new_secrets,
)
from tests.flows.servers import clean_env
from tests.team.conftest import sweepflow_cmd

GOOD = {"MLFLOW_TRACKING_USERNAME": "team", "MLFLOW_TRACKING_PASSWORD": "s3cret-s3cret-s3cret",
        "PREFECT_API_AUTH_STRING": "team:an0ther-s3cret"}


def test_loopback_or_not():
    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.2", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "10.200.0.1", "::", "stack.internal"]))


def test_beyond_loopback_credentials_are_required():
    require_for("127.0.0.1", None)
    with pytest.raises(CredentialsError, match=r"--host 0.0.0.0 is reachable from other "
                                               r"machines: give credentials with --secrets"):
        require_for("0.0.0.0", None)
    require_for("0.0.0.0", from_environment(GOOD))


def test_a_new_secrets_file_is_owner_only_and_reads_back(tmp_path):
    path = tmp_path / "conf" / "secrets.env"
    made = write_new_secrets(path)
    assert path.stat().st_mode & 0o777 == 0o600
    read = read_secrets(path)
    assert read.values == made.values and read.file == path
    assert "s3cret" not in repr(read) and made.values["MLFLOW_TRACKING_PASSWORD"] not in repr(read)
    with pytest.raises(FileExistsError):  # never overwritten
        write_new_secrets(path)


def test_a_secrets_file_others_can_read_is_refused(tmp_path):
    path = tmp_path / "secrets.env"
    path.write_text("".join(f"export {k}='{v}'\n" for k, v in GOOD.items()) + "# a comment\n")
    path.chmod(0o644)
    with pytest.raises(CredentialsError, match=f"readable by others: chmod 600 {path}"):
        read_secrets(path)
    path.chmod(0o600)
    assert dict(read_secrets(path).values) == GOOD  # quotes and `export` as in a shell file


def test_incomplete_or_weak_credentials_name_the_variable(tmp_path):
    with pytest.raises(CredentialsError, match="MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_"
                                               "PASSWORD set but not PREFECT_API_AUTH_STRING"):
        from_environment({k: v for k, v in GOOD.items() if k != "PREFECT_API_AUTH_STRING"})
    with pytest.raises(CredentialsError, match="shorter than 12 characters"):
        from_environment({**GOOD, "MLFLOW_TRACKING_PASSWORD": "short"})
    with pytest.raises(CredentialsError, match="is not `user:password`"):
        from_environment({**GOOD, "PREFECT_API_AUTH_STRING": "nocolon"})
    assert from_environment({"PATH": "/bin"}) is None
    path = tmp_path / "secrets.env"
    path.write_text("MLFLOW_TRACKING_USERNAME=team\n")
    path.chmod(0o600)
    with pytest.raises(CredentialsError, match="lacks MLFLOW_TRACKING_PASSWORD, PREFECT_API_"):
        read_secrets(path)


def test_stack_beyond_loopback_without_credentials_refuses_in_one_line(tmp_path: Path):
    """Before any database or server: one line naming --secrets and the variables, exit 2."""
    done = subprocess.run(sweepflow_cmd("stack", "--host", "10.200.0.1", "--home",
                                        str(tmp_path / "stack")),
                          capture_output=True, text=True, timeout=120,
                          env=clean_env(SWEEPFLOW_PG_URL="postgresql://nobody@127.0.0.1:1"))
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("credentials error: --host 10.200.0.1 is "
                                                   "reachable from other machines"), lines
    assert "SWEEPFLOW_SECRETS" in lines[0] and "PREFECT_API_AUTH_STRING" in lines[0]
    assert not (tmp_path / "stack").exists()
