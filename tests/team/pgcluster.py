"""A private PostgreSQL cluster (Debian's initdb/pg_ctl under /usr/lib/postgresql/*/bin) on its
own port and folder: for tests that stop the database, and for benchmarks that must not take
the shared server's connections."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.flows.servers import free_port


class NoCluster(RuntimeError):
    """initdb/pg_ctl are missing (or there is no postgres user to run them as root)."""


@dataclass(frozen=True)
class Cluster:
    url: str  # postgresql://postgres@127.0.0.1:<port> (no database)
    ctl: tuple[str, ...]  # pg_ctl ... (append start / stop)

    def run(self, *args: str) -> None:
        _as_postgres([*self.ctl, *args])

    def url_at(self, address: str, user: str = "postgres") -> str:
        """The server URL (no password, no database) as a client reaching `address` sees it."""
        return f"postgresql://{user}@{address}:{self.url.rsplit(':', 1)[1]}"


def _as_postgres(cmd: list[str]) -> None:
    """initdb and pg_ctl refuse root: run them as the `postgres` user."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run(prefix + cmd, capture_output=True, text=True, timeout=120, check=True)


def pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        raise NoCluster("needs PostgreSQL's server binaries (/usr/lib/postgresql/*/bin)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise NoCluster("running as root needs a `postgres` user for initdb") from None
    return Path(found[-1]).parent


@contextmanager
def private_cluster(max_connections: int = 100, listen: tuple[str, ...] = ("127.0.0.1",),
                    password: str | None = None) -> Iterator[Cluster]:
    """A cluster on 127.0.0.1 and `listen`. Connections from other addresses need
    `password` (the `postgres` user's, checked with scram-sha-256); without one they are
    let in (trust). Local connections (127.0.0.1, the socket) are always trusted."""
    bindir = pg_bin()
    # Not under pytest's tmp_path: the postgres user cannot enter root's 0700 folders.
    home = Path(tempfile.mkdtemp(prefix="sweepflow-pg-"))
    data = home / "pgdata"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(home, "postgres")
        shutil.chown(data, "postgres")
    port = free_port()
    addresses = ",".join(dict.fromkeys(("127.0.0.1", *listen)))
    cluster = Cluster(f"postgresql://postgres@127.0.0.1:{port}", (
        str(bindir / "pg_ctl"), "-D", str(data), "-l", str(home / "pg.log"), "-w", "-o",
        f"-p {port} -k {home} -c listen_addresses={addresses} "
        f"-c max_connections={max_connections}"))
    try:
        initdb = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
        if password is not None:
            (home / "pw").write_text(password)
            if os.geteuid() == 0:
                shutil.chown(home / "pw", "postgres")
            initdb.append(f"--pwfile={home / 'pw'}")
        _as_postgres(initdb)
        (home / "pw").unlink(missing_ok=True)
        method = "scram-sha-256" if password is not None else "trust"
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all 0.0.0.0/0 {method}\n")
        cluster.run("start")
        yield cluster
    finally:
        try:
            cluster.run("-m", "immediate", "stop")
        except subprocess.CalledProcessError:
            pass  # not running
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def pgbouncer(cluster: Cluster, pool_size: int = 40) -> Iterator[str]:
    """Debian's PgBouncer in front of the cluster, session pooling (the study lock is a
    session advisory lock): clients beyond `pool_size` server connections per database wait
    in PgBouncer instead of being refused. Yields the server URL through it."""
    exe = shutil.which("pgbouncer")
    if exe is None:
        raise NoCluster("needs pgbouncer (apt-get install pgbouncer)")
    home = Path(tempfile.mkdtemp(prefix="sweepflow-pgb-"))
    port = free_port()
    upstream = cluster.url.rsplit(":", 1)[1]
    (home / "pgbouncer.ini").write_text(
        f"[databases]\n* = host=127.0.0.1 port={upstream}\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        "auth_type = trust\nauth_file = " + str(home / "users.txt") + "\n"
        f"pool_mode = session\ndefault_pool_size = {pool_size}\nmax_client_conn = 1000\n"
        f"logfile = {home / 'pgbouncer.log'}\npidfile = {home / 'pgbouncer.pid'}\n")
    (home / "users.txt").write_text('"postgres" ""\n')
    if os.geteuid() == 0:
        for path in (home, *home.iterdir()):
            shutil.chown(path, "postgres")
    _as_postgres([exe, "-d", str(home / "pgbouncer.ini")])
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        pid = (home / "pgbouncer.pid").read_text().strip()
        subprocess.run(["kill", pid], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
