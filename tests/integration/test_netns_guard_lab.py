"""The prober enters only the lab's own nodes, on a real lab (latency_lab: four nodes and
the delay line, whose daemon enters its node through the same check).

A node recorded with a pid that is not its container's (a host process: this test's, in
the host's network) or with a process other than the one plumbed is refused by the agent
before setns, by name; a container that restarted is refused and named with what Docker
reports. The lab goes on answering for the nodes that are still what was plumbed.
"""

import dataclasses
import os
from pathlib import Path

import pytest

from labwarden.declared.lab import load_lab
from labwarden.errors import ProbeError
from labwarden.probe import NodeJob
from labwarden.realise.compose import ComposeLab
from labwarden.realise.lab import run_sync

pytestmark = pytest.mark.lab
LAB = Path(__file__).resolve().parent / "latency_lab"
HOST = f"/proc/{os.getpid()}/ns/net"  # a host process (this test's): the host's network namespace


@pytest.fixture(scope="module")
def lab():
    with ComposeLab(*load_lab(LAB), log=lambda *a: None) as instance:
        yield instance


@pytest.fixture()
def recorded(lab):
    """Record something else for a node for one test: recorded(node, **fields)."""
    saved = dict(lab.transports)

    def record(node: str, **fields):
        lab.transports[node] = dataclasses.replace(lab.transports[node], **fields)
    yield record
    lab.transports.clear()
    lab.transports.update(saved)


def info(lab, node: str) -> dict:
    return run_sync(lab.run({node: NodeJob(info=True)}))[node].info


def test_every_node_is_entered_through_its_container_and_its_plumbed_namespace(lab):
    for name, transport in lab.transports.items():
        assert transport.container == lab.containers[name].id
        assert transport.netns == f"/proc/{lab.containers[name].attrs['State']['Pid']}/ns/net"
        assert isinstance(transport.pid_start, int)
    assert lab.impairment.readback  # the delay line's daemon entered its node through the check too


def test_a_host_process_recorded_as_a_node_is_refused(lab, recorded):
    recorded("laptop", netns=HOST)
    with pytest.raises(ProbeError) as refused:
        info(lab, "laptop")
    message = str(refused.value)
    assert f"node laptop: refusing to enter the network namespace of pid {os.getpid()}: that process is not " \
           f"in container {lab.containers['laptop'].id[:12]}" in message
    assert "nothing was entered" in message
    assert f"node laptop: its container restarted (Docker reports pid " \
           f"{lab.containers['laptop'].attrs['State']['Pid']}, the lab was plumbed through pid {os.getpid()})" in message


def test_a_process_other_than_the_one_plumbed_is_refused(lab, recorded):
    plumbed = lab.transports["gw"].pid_start
    recorded("gw", pid_start=plumbed - 1)
    with pytest.raises(ProbeError, match=rf"node gw: refusing to enter the network namespace of pid \d+: that "
                                         rf"process started {plumbed} ticks after boot, not {plumbed - 1} as the "
                                         "one plumbed at start"):
        info(lab, "gw")


def test_a_command_run_in_a_node_is_checked_the_same_way(lab, recorded):
    assert lab.netns_exec("gw", "ip", "-o", "link", "show", "sky").returncode == 0
    recorded("gw", netns=HOST)
    done = lab.netns_exec("gw", "ip", "-o", "link", "show")
    assert done.returncode == 125 and done.stdout == ""
    assert done.stderr.startswith(f"node gw: refusing to enter the network namespace of pid {os.getpid()}: "
                                  "that process is not in container")


def test_a_restarted_container_is_refused_and_named(lab, recorded):
    """Last: the server's plumbing is gone with its restart."""
    before = lab.transports["server"]
    lab.containers["server"].restart(timeout=1)
    lab.containers["server"].reload()
    now = lab.containers["server"].attrs["State"]["Pid"]
    assert f"/proc/{now}/ns/net" != before.netns
    with pytest.raises(ProbeError, match=rf"node server: its container restarted \(Docker reports pid {now}, "
                                         rf"the lab was plumbed through pid {before.netns.split('/')[2]}\)"):
        info(lab, "server")
    # the old pid, had it come back in the restarted container: another process than the one plumbed
    recorded("server", netns=f"/proc/{now}/ns/net")
    with pytest.raises(ProbeError, match=rf"node server: refusing to enter the network namespace of pid {now}: "
                                         rf"that process started \d+ ticks after boot, not {before.pid_start} "):
        info(lab, "server")
    assert info(lab, "laptop")["interfaces"]  # the nodes still as plumbed answer as before
