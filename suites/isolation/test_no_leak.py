"""The lab never leaks: nothing inside reaches the Docker host, the bridges'
gateway addresses or any address no lab node holds, and the router's upstream
route leads to a lab node, not to the host. On IPv6 too: the host's bridges hold
link-local addresses (and forward IPv6), so nothing may answer from them on any
node's link, and no node may have an IPv6 route through anything but a lab node."""

import json
import subprocess
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from labwarden.checks.matrix import probe_of
from labwarden.probe import NodeJob

OUTSIDE = IPv4Address("192.0.2.1")   # documentation range: no lab node holds it
OUTSIDE6 = IPv6Address("2001:db8:dead::1")  # documentation prefix, in no lab segment


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


def docker_host_addresses6():
    """The host's IPv6 addresses on Docker's bridges, and the link-local address each bridge
    has with IPv6 on (EUI-64 of its MAC address), held now or not: a bridge silenced by the
    lab holds none, and it must not answer on it either."""
    def docker(link):
        return link["ifname"] == "docker0" or link["ifname"].startswith("br-")
    out = subprocess.run(["ip", "-j", "-6", "addr"], capture_output=True, text=True).stdout
    held = [IPv6Address(a["local"]) for link in json.loads(out or "[]") if docker(link)
            for a in link.get("addr_info", [])]
    links = subprocess.run(["ip", "-j", "link"], capture_output=True, text=True).stdout
    return list(dict.fromkeys(held + [eui64_link_local(link["address"]) for link in json.loads(links or "[]")
                                      if docker(link) and link.get("address")]))


def eui64_link_local(mac: str) -> IPv6Address:
    """fe80::/64 with the interface id the kernel derives from a MAC address (addr_gen_mode eui64)."""
    b = bytes.fromhex(mac.replace(":", ""))
    return IPv6Address(bytes.fromhex("fe80" + "00" * 6) + bytes([b[0] ^ 2]) + b[1:3] + b"\xff\xfe" + b[3:6])


def ipv6_targets(policy):
    """Per node, the IPv6 addresses outside the lab it probes: OUTSIDE6, the host's global
    ones, and every link-local one of the host's bridges scoped to each of the node's own
    interfaces (a link-local address answers only on its own link: whichever it is on)."""
    host = docker_host_addresses6()
    targets = {}
    for name, node in policy.topology.nodes.items():
        if not node.addresses6:
            continue
        scoped = [ip_address(f"{a}%{node.interfaces[s]}") for a in host if a.is_link_local for s in node.addresses6]
        targets[name] = [OUTSIDE6] + [a for a in host if not a.is_link_local] + scoped
    return targets


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.emulated_only("it probes the Docker host's bridges, which a live lab does not have")
async def test_nothing_outside_answers_ipv6(lab, labwarden_policy, probe_timeout, every_node_controlled):
    policy = labwarden_policy
    targets = ipv6_targets(policy)
    if not targets:
        pytest.skip(f"no node of {policy.topology.name} has an IPv6 address")
    by_src = {src: [policy.flow(src, t, svc) for t in ts for svc in ("tcp/22", "tcp/80", "udp/53", "icmp")]
              for src, ts in targets.items()}
    extra = ["fe80::/10"] + [f"{a}/128" for a in docker_host_addresses6() if not a.is_link_local]
    answers = await lab.run({s: NodeJob(probes=[probe_of(f) for f in fs]) for s, fs in by_src.items()},
                            timeout=probe_timeout, allow_extra=extra)
    lab_addresses = {a for node in policy.topology.nodes.values() for a in node.all_addresses()}
    answered = [f"{policy.label(f.src)} -> {f.dst} {f.service}: {o.explain()}"
                for s, fs in by_src.items() for f, o in zip(fs, answers[s].observations)
                if o.verdict in ("open", "closed") or (o.by is not None and o.by not in lab_addresses)]
    assert not answered, "IPv6 addresses outside the lab answered:\n  " + "\n  ".join(answered)


@pytest.mark.asyncio(loop_scope="session")
async def test_ipv6_routes_lead_to_lab_nodes(lab, labwarden_policy):
    """Every IPv6 route a node has goes through a lab node's address (none through a
    link-local address, which is how the host's bridge or a rogue router would appear)."""
    policy = labwarden_policy
    nodes = [n for n, node in policy.topology.nodes.items() if node.addresses6]
    if not nodes:
        pytest.skip(f"no node of {policy.topology.name} has an IPv6 address")
    answers = await lab.run({n: NodeJob(info=True) for n in nodes})
    lab_addresses = {a for node in policy.topology.nodes.values() for a in node.addresses6.values()}
    wrong = [f"{policy.label(n)}: {r['dst']} via {r['via']} dev {r.get('dev')}"
             for n in nodes for r in answers[n].info.get("routes6", [])
             if r.get("via") and ip_address(r["via"].split("%")[0]) not in lab_addresses]
    assert not wrong, "IPv6 routes through something that is not a lab node:\n  " + "\n  ".join(wrong)


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
