"""The prober enters a node's namespace only while it still is the node's (agent/netns.py):
a pid that is not in the node's container, or a namespace other than the one plumbed, is
refused before setns, naming the node. No Docker: this process stands for the host's."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from labwarden.probe import encode
from labwarden.probe import ship

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "labwarden" / "agent"))
import netns  # noqa: E402

CONTAINER = "0123456789abcdef" * 4
HERE = f"/proc/{os.getpid()}/ns/net"  # a process outside any container: as a reused pid would be


@pytest.mark.parametrize("cgroup", [
    f"12:memory:/docker/{CONTAINER}\n0::/docker/{CONTAINER}\n",            # cgroup v1, cgroupfs driver
    f"0::/system.slice/docker-{CONTAINER}.scope\n",                         # v2, systemd driver
    f"0::/../{CONTAINER}\n",                                                # v2 seen from a private cgroupns
])
def test_a_process_of_the_container_is_recognised_by_its_cgroup(cgroup):
    assert netns.in_container(cgroup, CONTAINER)


@pytest.mark.parametrize("cgroup", ["9:name=systemd:/\n0::/\n", "0::/user.slice/user-0.slice/session-3.scope\n",
                                    f"0::/docker/{CONTAINER[:-1]}0\n", f"0::/docker/x{CONTAINER}\n"])
def test_a_host_process_or_another_container_is_not_the_node(cgroup):
    assert not netns.in_container(cgroup, CONTAINER)


@pytest.mark.parametrize("spec, why", [
    ({"netns": HERE}, "the request names no container to check that pid against"),
    ({"netns": HERE, "container": "abc123"}, "'abc123' is not a full container id"),
    ({"netns": "/proc/self/ns/net", "container": CONTAINER}, "not a /proc/PID/ns/net path"),
    ({"netns": "/proc/999999999/ns/net", "container": CONTAINER}, "no such process"),
    ({"netns": HERE, "container": CONTAINER},
     rf"refusing to enter the network namespace of pid {os.getpid()}: that process is not in container "
     rf"{CONTAINER[:12]} \(its cgroup is .*\): the container stopped or restarted .* nothing was entered"),
])
def test_a_namespace_that_cannot_be_tied_to_the_container_is_refused(spec, why):
    with pytest.raises(netns.Refused, match=why):
        netns.enter(spec)


def test_a_process_other_than_the_one_plumbed_is_refused(monkeypatch):
    monkeypatch.setattr(netns, "in_container", lambda cgroup, container: True)  # as if this were the node
    plumbed = netns.start_time(Path(f"/proc/{os.getpid()}/stat").read_text())
    fd, started = netns.open_checked({"netns": HERE, "container": CONTAINER, "pid_start": plumbed})
    os.close(fd)
    assert started == plumbed
    with pytest.raises(netns.Refused, match=rf"that process started {plumbed} ticks after boot, not {plumbed - 1} "
                                            r"as the one plumbed at start \(the container restarted"):
        netns.open_checked({"netns": HERE, "container": CONTAINER, "pid_start": plumbed - 1})


def test_the_start_time_is_read_past_a_command_name_with_spaces_and_parentheses():
    stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100"
    assert netns.start_time(stat) == 987654


@pytest.fixture()
def pyz(tmp_path):
    path = tmp_path / "agent.pyz"
    path.write_bytes(ship.agent_bytes())
    return path


def test_the_agent_refuses_the_node_and_enters_nothing(pyz):
    """A recorded pid that is no longer the node's: the node fails by name, gets no answer from
    the wrong namespace (no `info`), and the other nodes go on."""
    request = {"timeout": 0.2, "allowed": [], "nodes": {
        "web": {"netns": HERE, "container": CONTAINER, "info": True},
        "here": {"netns": None, "info": True}}}
    done = subprocess.run([sys.executable, str(pyz), encode(request)], capture_output=True, text=True, timeout=30)
    nodes = json.loads(done.stdout.strip().splitlines()[-1])["nodes"]
    assert nodes["web"]["error"].startswith(f"node web: refusing to enter the network namespace of pid {os.getpid()}")
    assert "info" not in nodes["web"] and "pid_start" not in nodes["web"]
    assert nodes["here"]["error"] is None and nodes["here"]["info"]["interfaces"]


def test_a_command_is_not_run_in_a_namespace_that_is_not_the_nodes(pyz, tmp_path):
    marker = tmp_path / "ran"
    done = subprocess.run([sys.executable, str(pyz), "enter", "--node", "gpu", "--netns", HERE,
                           "--container", CONTAINER, "--", "touch", str(marker)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 125 and not marker.exists()
    assert done.stderr.startswith(f"node gpu: refusing to enter the network namespace of pid {os.getpid()}")
