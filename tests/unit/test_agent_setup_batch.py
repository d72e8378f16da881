"""A node's plumbing costs few processes: its `ip` commands go in one `ip -batch` (sysctls
are the runtime's, from compose: labwarden.realise.sysctls). No Docker: `ip` runs here."""

import shutil
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "labwarden" / "agent"))
import agent  # noqa: E402

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
    node.setup({"rename": {"02:42:C6:12:0A:0A": "servers"}, "routes": [["default", "198.18.10.1"]]})
    assert [argv[:2] for argv, _ in ran] == [("ip", "-j"), ("ip", "-batch")]
    assert ran[1][1] == ("link set eth0 down\nlink set eth0 name servers\nlink set servers up\n"
                         "route replace default via 198.18.10.1\n")
