"""Credentials of the team servers (`sweepflow stack`), from a secrets file outside the repo
or the environment, never from the config: the config travels as Prefect flow-run parameters
and MLflow params, so a secret in it would be everywhere.

The secrets file holds the clients' own environment variables, one `KEY=value` a line, so
every worker machine loads it with `set -a; . FILE; set +a`:

- MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD: MLflow's clients send them as HTTP
  basic auth; the stack's `mlflow server --app-name basic-auth` makes them its admin user.
- PREFECT_API_AUTH_STRING (`user:password`): Prefect's clients send it as basic auth; the
  stack starts the Prefect server with it as PREFECT_SERVER_API_AUTH_STRING.
- PGPASSWORD or PGPASSFILE (optional): libpq (psycopg2: Optuna, MLflow) and asyncpg
  (Prefect) read them. Whether PostgreSQL asks for it is its pg_hba.conf's decision.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sweepflow.usererrors import UserError

SECRETS_ENV = "SWEEPFLOW_SECRETS"
MLFLOW_USER, MLFLOW_PASSWORD = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
PREFECT_AUTH = "PREFECT_API_AUTH_STRING"
PG_PASSWORD = "PGPASSWORD"
REQUIRED = (MLFLOW_USER, MLFLOW_PASSWORD, PREFECT_AUTH)
OPTIONAL = (PG_PASSWORD, "PGPASSFILE")
MIN_PASSWORD = 12  # MLflow's basic-auth password policy


class CredentialsError(UserError):
    """Credentials missing, incomplete or kept where others can read them."""

    kind = "credentials error"
    exit_code = 2


@dataclass(frozen=True)
class Credentials:
    """The clients' variables (`values`, never printed: repr hides them) and where they came
    from, in words a user can act on."""

    values: Mapping[str, str] = field(repr=False)
    source: str
    file: Path | None = None  # the secrets file, when they came from one

    def server_env(self) -> dict[str, str]:
        """What the stack's servers need: MLflow's admin user and a CSRF key for its login
        forms (new at every start; the server's workers share it), Prefect's auth string,
        and the clients' variables (PGPASSWORD reaches the servers' database drivers)."""
        return {**self.values, "MLFLOW_AUTH_ADMIN_USERNAME": self.values[MLFLOW_USER],
                "MLFLOW_AUTH_ADMIN_PASSWORD": self.values[MLFLOW_PASSWORD],
                "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),
                "PREFECT_SERVER_API_AUTH_STRING": self.values[PREFECT_AUTH]}

    def secret_values(self) -> list[str]:
        return [v for k, v in self.values.items() if k in (MLFLOW_PASSWORD, PREFECT_AUTH,
                                                           PG_PASSWORD)]


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`; a wildcard (0.0.0.0) or any other address
    or name is reachable from other machines."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _parse(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip().removeprefix("export ").strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip().isidentifier():
            raise CredentialsError(f"{path}:{number}: not a KEY=value line")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def read_secrets(path: Path) -> Credentials:
    """The credentials of a secrets file that only its owner can read."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise CredentialsError(f"secrets file {path} not found") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CredentialsError(f"secrets file {path} is readable by others: chmod 600 {path}")
    values = _parse(path)
    missing = [k for k in REQUIRED if not values.get(k)]
    if missing:
        raise CredentialsError(f"secrets file {path} lacks {', '.join(missing)}")
    kept = {k: values[k] for k in (*REQUIRED, *OPTIONAL) if values.get(k)}
    return _checked(Credentials(kept, f"the secrets file {path}", path))


def _checked(creds: Credentials) -> Credentials:
    if len(creds.values[MLFLOW_PASSWORD]) < MIN_PASSWORD:
        raise CredentialsError(f"{MLFLOW_PASSWORD} from {creds.source} is shorter than "
                               f"{MIN_PASSWORD} characters (MLflow's password policy)")
    if ":" not in creds.values[PREFECT_AUTH]:
        raise CredentialsError(f"{PREFECT_AUTH} from {creds.source} is not `user:password`")
    return creds


def write_new_secrets(path: Path, user: str = "sweepflow") -> Credentials:
    """A new secrets file (mode 600, never overwritten) with random passwords."""
    values = {MLFLOW_USER: user, MLFLOW_PASSWORD: secrets.token_urlsafe(24),
              PREFECT_AUTH: f"{user}:{secrets.token_urlsafe(24)}"}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("# sweepflow team servers; load with: set -a; . THIS_FILE; set +a\n"
                  "# PGPASSWORD=... (optional: the study database's password)\n")
        out.writelines(f"{k}={v}\n" for k, v in values.items())
    return Credentials(values, f"the secrets file {path}", path)


def from_environment(environ: Mapping[str, str]) -> Credentials | None:
    """The credentials exported in `environ`; None when none of them is."""
    present = [k for k in REQUIRED if environ.get(k)]
    if not present:
        return None
    missing = [k for k in REQUIRED if k not in present]
    if missing:
        raise CredentialsError(f"{', '.join(present)} set but not {', '.join(missing)}: "
                               "export all three, or use a secrets file")
    keys = [k for k in (*REQUIRED, *OPTIONAL) if environ.get(k)]
    return _checked(Credentials({k: environ[k] for k in keys}, "the environment"))


def load_credentials(secrets_file: Path | None, environ: Mapping[str, str]) -> Credentials | None:
    """From the secrets file when one is given, else from the environment (or None)."""
    return read_secrets(secrets_file) if secrets_file else from_environment(environ)


def require_for(host: str, creds: Credentials | None) -> None:
    """Servers bound beyond loopback need credentials."""
    if creds is None and not is_loopback(host):
        raise CredentialsError(
            f"--host {host} is reachable from other machines: give credentials with --secrets "
            f"FILE (or {SECRETS_ENV}=FILE; a FILE that does not exist is created with new ones)"
            f" or export {', '.join(REQUIRED)}")
