"""Hosts as Linux network namespaces: a test's stand-in for separate machines on one box.

`network(n)` builds n namespaces, each joined to the root namespace by a veth pair on a private
subnet of its own (10.201.0.0/24, 10.202.0.0/24, ...: the host at .2, the root end at .1), and
one "server" address (10.200.0.1 on a link of its own in the root namespace: a veth pair
with both ends there, as this kernel may lack the dummy link type) that every host routes
to through its veth. Servers bound to that address are reachable from every host; cutting a
host's veth (`Host.cut`) partitions that host alone, silently, as a pulled cable does: its
packets are dropped, nothing answers "unreachable". Every address lives on links the test
made; nothing is routed off the machine (no forwarding, no default route in the root).

On exit (normal, exception, Ctrl-C) every process in the namespaces is killed (`ip netns
pids`), then the links and namespaces are deleted. Needs root and iproute2.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

SERVER_ADDRESS = "10.200.0.1"


class NoNetns(RuntimeError):
    """Namespaces cannot be made here (not root, no iproute2, no permission in a container)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise NoNetns(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
    return done


@dataclass(frozen=True)
class Host:
    name: str  # the namespace
    veth: str  # its link's end in the root namespace: down = the host is cut off
    address: str  # the host's own address (inside its namespace)
    gateway: str  # the root end's address, its route to the servers

    def cmd(self, *args: str) -> list[str]:
        """`args` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.name, *args]

    def cut(self) -> None:
        _ip("link", "set", self.veth, "down")

    def restore(self) -> None:
        _ip("link", "set", self.veth, "up")

    def pids(self) -> list[int]:
        out = _ip("netns", "pids", self.name, check=False).stdout
        return [int(p) for p in out.split()]


@dataclass(frozen=True)
class Network:
    server: str  # the address servers bind to; every host reaches it
    hosts: tuple[Host, ...]


def problem() -> str | None:
    """Why namespaces cannot be used here, or None."""
    if os.geteuid() != 0:
        return "needs root (ip netns add)"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    probe = f"sfprobe-{uuid.uuid4().hex[:6]}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode != 0:
        return f"`ip netns add` failed: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _add_host(tag: str, i: int, server: str) -> Host:
    host = Host(name=f"sf-{tag}-{i}", veth=f"sf{tag}h{i}", address=f"10.{201 + i}.0.2",
                gateway=f"10.{201 + i}.0.1")
    inner = f"sf{tag}n{i}"
    _ip("netns", "add", host.name)
    _ip("link", "add", host.veth, "type", "veth", "peer", "name", inner)
    _ip("link", "set", inner, "netns", host.name)
    _ip("addr", "add", f"{host.gateway}/24", "dev", host.veth)
    _ip("link", "set", host.veth, "up")
    for args in (("addr", "add", f"{host.address}/24", "dev", inner),
                 ("link", "set", inner, "up"), ("link", "set", "lo", "up"),
                 ("route", "add", f"{server}/32", "via", host.gateway)):
        _ip("-n", host.name, *args)
    return host


def kill_all(host: Host, timeout: float = 10) -> None:
    """SIGKILL every process in the host's namespace, and wait until none is left."""
    deadline = time.monotonic() + timeout
    while (pids := host.pids()) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def remove(tag: str, hosts: list[Host]) -> None:
    """Processes, links and namespaces of one network, whatever state they are in."""
    for host in hosts:
        kill_all(host)
        _ip("link", "del", host.veth, check=False)  # deletes its peer too
        _ip("netns", "del", host.name, check=False)
    _ip("link", "del", f"sf{tag}s", check=False)


@contextmanager
def network(count: int = 2, server: str = SERVER_ADDRESS) -> Iterator[Network]:
    """`count` hosts and the server address; all of it removed on exit."""
    tag = uuid.uuid4().hex[:6]
    hosts: list[Host] = []
    try:
        _ip("link", "add", f"sf{tag}s", "type", "veth", "peer", "name", f"sf{tag}t")
        _ip("addr", "add", f"{server}/32", "dev", f"sf{tag}s")
        _ip("link", "set", f"sf{tag}s", "up")
        _ip("link", "set", f"sf{tag}t", "up")
        for i in range(count):
            hosts.append(_add_host(tag, i, server))
        yield Network(server=server, hosts=tuple(hosts))
    finally:
        remove(tag, hosts + [Host(f"sf-{tag}-{i}", f"sf{tag}h{i}", "", "")
                             for i in range(len(hosts), count)])
