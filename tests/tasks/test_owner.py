"""Process identity of a run's owner (psutil): alive, gone, a reused PID, another host."""

from __future__ import annotations

import socket
import subprocess

from sweepflow import owner


def test_a_live_owner_a_gone_one_and_a_reused_pid():
    me, host = owner.me(), socket.gethostname()
    assert not owner.is_dead(host, me.pid, me.start)
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert owner.is_dead(host, gone.pid, "1.00")
    assert owner.is_dead(host, me.pid, "1.00")  # this PID, another start: another process
    assert not owner.is_dead("another-host", gone.pid, "1.00")  # never judged from here
