"""The lab never leaks: nothing inside reaches the Docker host, the bridges'
gateway addresses or any address no lab node holds, and the router's upstream
route leads to a lab node, not to the host."""

import json
import subprocess
from ipaddress import IPv4Address

import pytest

from labwarden.checks.matrix import probe_of
from labwarden.probe import NodeJob

OUTSIDE = IPv4Address("192.0.2.1")   # documentation range: no lab node holds it


@pytest.fixture
def every_node_controlled(positive_controls, labwarden_policy):
    """Silence from outside the lab proves something only from nodes that get through inside."""
    positive_controls.require(*labwarden_policy.topology.nodes)


def docker_host_addresses():
    """The host's addresses on Docker's own bridges (never its uplink: no probe goes there)."""
    out = subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True).stdout
    return [IPv4Address(a["local"]) for link in json.loads(out or "[]")
            if link["ifname"] == "docker0" or link["ifname"].startswith("br-")
            for a in link.get("addr_info", [])]


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.emulated_only("it probes the Docker host's bridges, which a live lab does not have")
async def test_nothing_outside_answers(lab, labwarden_policy, probe_timeout, every_node_controlled):
    policy = labwarden_policy
    targets = [OUTSIDE] + docker_host_addresses() + \
        [s.gateway for s in policy.topology.segments.values() if s.gateway]
    flows = [policy.flow(src, t, svc) for src in policy.topology.nodes
             for t in targets for svc in ("tcp/22", "tcp/80", "udp/53", "icmp")]
    extra = [f"{a}/32" for a in docker_host_addresses()]
    by_src = {}
    for flow in flows:
        by_src.setdefault(flow.src, []).append(flow)
    answers = await lab.run({s: NodeJob(probes=[probe_of(f) for f in fs]) for s, fs in by_src.items()},
                            timeout=probe_timeout, allow_extra=extra)
    # an error from a lab node (no route onward) proves the packet stayed inside;
    # any answer from the target itself, or an open/closed verdict, is a leak
    lab_addresses = {a for node in policy.topology.nodes.values() for a in node.addresses.values()}
    answered = [f"{policy.label(f.src)} -> {f.dst} {f.proto}/{f.port or ''}: {o.explain()}"
                for s, fs in by_src.items() for f, o in zip(fs, answers[s].observations)
                if o.verdict in ("open", "closed")
                or (o.by is not None and o.by not in lab_addresses)]
    assert not answered, "addresses outside the lab answered:\n  " + "\n  ".join(answered)


@pytest.mark.asyncio(loop_scope="session")
async def test_router_upstream_is_a_lab_node(lab, labwarden_policy):
    policy = labwarden_policy
    answer = (await lab.run({policy.router: NodeJob(info=True)}))[policy.router]
    routes = answer.info["routes"]
    default = [r for r in routes if r.get("dst") == "default"]
    assert default, f"the router has no default route: {routes}"
    hop = IPv4Address(default[0]["via"])
    holder = policy.topology.node_at(hop)
    assert holder is not None and holder.name != policy.router, \
        f"the router's default route leads to {hop}, which no lab node holds"
    assert policy.zone_of(holder.name) == "wan", \
        f"the router's default route leads to {policy.label(holder.name)}, not to a wan node"
