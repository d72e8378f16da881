"""A node's plumbing costs few processes: its `ip` commands go in one `ip -batch`, and the
sysctls straight to the remount when /proc/sys is read-only. No Docker: `ip` runs here."""

import shutil
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "labwarden" / "agent"))
import agent  # noqa: E402

MOUNTS = """proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
proc /proc/sys proc ro,nosuid,nodev,noexec,relatime 0 0
"""


def test_proc_sys_is_read_only_as_the_last_mount_of_it_says():
    assert agent.proc_sys_read_only(MOUNTS)
    assert not agent.proc_sys_read_only(MOUNTS + "proc /proc/sys proc rw,relatime 0 0\n")
    assert not agent.proc_sys_read_only("proc /proc proc rw 0 0\n")  # a host: no mount of its own


@pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2's ip")
def test_a_failed_command_of_the_batch_is_named():
    node = agent.NodeRun("web", {}, 1.0, threading.Barrier(1))
    node.ip_batch([["link", "show", "lo"]])  # works, one process
    with pytest.raises(agent.AgentError, match=r"node web: `ip link set lw-no-such0 up` failed"):
        node.ip_batch([["link", "show", "lo"], ["link", "set", "lw-no-such0", "up"], ["link", "show", "lo"]])


def test_setup_runs_renames_and_routes_as_one_batch(monkeypatch):
    node = agent.NodeRun("web", {}, 1.0, threading.Barrier(1))
    ran = []
    monkeypatch.setattr(node, "sh", lambda *argv, stdin=None: ran.append((argv, stdin)) or
                        '[{"address": "02:42:c6:12:0a:0a", "ifname": "eth0"}]')
    monkeypatch.setattr(agent, "proc_sys_read_only", lambda: True)
    node.setup({"rename": {"02:42:C6:12:0A:0A": "servers"}, "routes": [["default", "198.18.10.1"]],
                "sysctls": {"net.ipv4.tcp_congestion_control": "cubic"}})
    assert [argv[:2] for argv, _ in ran] == [("ip", "-j"), ("ip", "-batch"), ("unshare", "-m")]
    assert ran[1][1] == ("link set eth0 down\nlink set eth0 name servers\nlink set servers up\n"
                         "route replace default via 198.18.10.1\n")
