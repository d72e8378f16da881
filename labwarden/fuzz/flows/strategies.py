"""Hypothesis strategies for flow fuzzing, built from the topology, the policy and the
router config's aims (`labwarden.fuzz.flows.aims`): ordinary probes, odd packets, and
batches of them (one agent request each).
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from hypothesis import strategies as st

from labwarden.declared.policy import Policy
from labwarden.fuzz.flows.aims import Aim
from labwarden.fuzz.flows.flow import FRAGMENTS, ICMP_ERRORS, ICMP_QUERIES, OPTIONS, SAFE_RANGES, TCP_FLAGS, FuzzFlow

BOUNDARY_PORTS = (0, 1, 1023, 1024, 49151, 65535)
OUTSIDE_SOURCES = (IPv4Address("198.51.100.77"), IPv4Address("192.0.2.77"))


def edge_addresses(policy: Policy) -> list[IPv4Address]:
    """Each segment's edges and the bridge's gateway address; just outside the edges when
    that is still inside a range that can never be real."""
    found = set()
    for segment in policy.topology.segments.values():
        net = segment.subnet
        found |= {net.network_address, net.broadcast_address, net.network_address + 1,
                  net.broadcast_address - 1}
        if segment.gateway:
            found.add(segment.gateway)
        for outside in (net.network_address - 1, net.broadcast_address + 1):
            if any(outside in safe for safe in SAFE_RANGES):
                found.add(outside)
    return sorted(found)


def interesting_ports(policy: Policy, aims: list[Aim] = ()) -> list[int]:
    named = {s.port for s in policy.declared_services() if s.port} | {p for a in aims for p in a.ports}
    near = {p + d for p in named for d in (-1, 0, 1)}
    return sorted(p for p in near | set(BOUNDARY_PORTS) if 0 <= p <= 65535)


def port_numbers(policy: Policy, aims: list[Aim] = ()) -> st.SearchStrategy[int]:
    """Boundaries, every declared port and its neighbours, or anything."""
    return st.one_of(st.sampled_from(interesting_ports(policy, aims)), st.integers(0, 65535))


def _reachable(policy: Policy, src: str, addresses: list[IPv4Address]) -> list[IPv4Address]:
    """From the router itself, only its own segments: its own traffic to farther places (the
    airplane's gateway to the internet) crosses no router of the policy's, whose rules say
    what may cross it; the matrix does not probe from the router either."""
    if src != policy.router:
        return addresses
    return [a for a in addresses if policy.topology.on_link(src, a)]


def probe_destinations(policy: Policy, src: str) -> list:
    """Node addresses (weighted), the router's, the edges; not the broadcast or network
    address of a segment src sits on (that is discovery, the isolation suite's business).
    From a node with IPv6, the IPv6 addresses of nodes and router too (weighted alike; no
    edges: IPv6 has no broadcast, and a prefix's first address is the router's anycast)."""
    topology = policy.topology
    nodes = [a for n, node in topology.nodes.items() if n != policy.router for a in node.addresses.values()]
    router = list(topology.nodes[policy.router].addresses.values())
    own = [topology.segments[s].subnet for s in topology.nodes[src].segments]
    edges = [a for a in edge_addresses(policy)
             if not any(a in (net.network_address, net.broadcast_address) for net in own)]
    six = []
    if topology.nodes[src].addresses6:
        six = sorted(a for n, node in topology.nodes.items() if n != policy.router for a in node.addresses6.values())
        six = six * 3 + sorted(topology.nodes[policy.router].addresses6.values())
    return _reachable(policy, src, sorted(nodes) * 3 + sorted(router) + edges + six)


def odd_destinations(policy: Policy, src: str) -> list[IPv4Address]:
    topology = policy.topology
    return _reachable(policy, src, sorted(a for n, node in topology.nodes.items() if n not in (policy.router, src)
                                          for a in node.addresses.values()))


class _Tables:
    """What the flow strategies draw from, computed once (hypothesis draws by the thousand)."""

    def __init__(self, policy: Policy, aims):
        topology = policy.topology
        self.nodes = sorted(topology.nodes)
        self.senders = sorted(n for n in topology.nodes if n != policy.router)
        self.probe_dsts = {n: probe_destinations(policy, n) for n in self.nodes}
        self.odd_dsts = {n: odd_destinations(policy, n) for n in self.nodes}
        self.ports = port_numbers(policy, aims)
        self.aims = [a for a in aims if a.srcs and a.dsts]
        self.forged = {}
        for src in self.senders:
            own = topology.nodes[src].segments
            self.forged[src] = sorted(a for n, node in topology.nodes.items() if n != src
                                      for s, a in node.addresses.items() if s not in own) + list(OUTSIDE_SOURCES)

    def aimed(self, draw, raw: bool):
        aim = draw(st.sampled_from(self.aims))
        srcs = [s for s in aim.srcs if not raw or self.odd_dsts[s]]
        if not srcs:
            return None
        src = draw(st.sampled_from(srcs))
        dsts = [d for d in aim.dsts if not raw or d in self.odd_dsts[src]]
        if not dsts:
            return None
        proto = draw(st.sampled_from(aim.protos))
        port = None
        if proto != "icmp":
            port = (draw(st.sampled_from(aim.ports)) + draw(st.sampled_from([0, 0, -1, 1]))) if aim.ports \
                else draw(self.ports)
            port = min(max(port, 0), 65535)
        return src, draw(st.sampled_from(dsts)), proto, port

    def probe(self, src, dst, proto, port) -> FuzzFlow:
        if port == 0 and dst not in self.odd_dsts[src]:
            port = 1  # port 0 is crafted and judged where it arrives: a node's address only
        return FuzzFlow(src, dst, proto, port)


def probe_flows(policy: Policy, aims: list[Aim] = ()) -> st.SearchStrategy[FuzzFlow]:
    """Ordinary probes: any source, any destination, TCP/UDP on boundary-weighted ports, ICMP
    echo; a third of them aimed at a rule of the router's config when it is known."""
    t = _Tables(policy, aims)

    @st.composite
    def flows(draw) -> FuzzFlow:
        if t.aims and draw(st.integers(0, 2)) == 0:
            aimed = t.aimed(draw, raw=False)
            if aimed:
                return t.probe(*aimed)
        src = draw(st.sampled_from(t.nodes))
        dst = draw(st.sampled_from(t.probe_dsts[src]))
        proto = draw(st.sampled_from(["tcp", "tcp", "udp", "icmp"]))
        return t.probe(src, dst, proto, None if proto == "icmp" else draw(t.ports))
    return flows()


def odd_flows(policy: Policy, aims: list[Aim] = ()) -> st.SearchStrategy[FuzzFlow]:
    """Crafted packets from a node to another node's address."""
    t = _Tables(policy, aims)
    types = sorted(ICMP_QUERIES) + sorted(ICMP_ERRORS)

    @st.composite
    def flows(draw) -> FuzzFlow:
        kind = draw(st.sampled_from(["flags", "flags", "frag", "opt", "spoof", "ttl", "icmp", "icmp", "port0"]))
        aimed = t.aimed(draw, raw=True) if t.aims and draw(st.integers(0, 2)) == 0 else None
        if aimed:
            src, dst, _, port = aimed
        else:
            src = draw(st.sampled_from(t.senders))
            dst = draw(st.sampled_from(t.odd_dsts[src]))
            port = draw(t.ports)
        port = port if port else 1
        if kind == "icmp":
            icmp_type = draw(st.one_of(st.sampled_from(types), st.integers(0, 255)))
            code = draw(st.one_of(st.just(0), st.integers(0, 15)))
            return FuzzFlow(src, dst, "icmp", None, ("icmp", f"{icmp_type}/{code}"))
        if kind == "port0":
            return FuzzFlow(src, dst, draw(st.sampled_from(["tcp", "udp"])), 0)
        if kind == "flags":
            return FuzzFlow(src, dst, "tcp", port, ("flags", draw(st.sampled_from(sorted(TCP_FLAGS)))))
        if kind == "frag":
            mode = draw(st.sampled_from(sorted(FRAGMENTS)))
            proto = "tcp" if mode == "tiny" else draw(st.sampled_from(["tcp", "udp"]))
            return FuzzFlow(src, dst, proto, port, ("frag", mode))
        if kind == "opt":
            return FuzzFlow(src, dst, "udp", port, ("opt", draw(st.sampled_from(sorted(OPTIONS)))))
        if kind == "ttl":
            return FuzzFlow(src, dst, "udp", port, ("ttl", "1"))
        return FuzzFlow(src, dst, "udp", port, ("spoof", str(draw(st.sampled_from(t.forged[src])))))
    return flows()


@dataclass(frozen=True)
class Batch:
    """The flows of one hypothesis example (empty slots dropped)."""
    flows: tuple[FuzzFlow, ...]

    def __repr__(self):
        return "Batch([" + ", ".join(f.spec() for f in self.flows) + "])"


def batches(flows: st.SearchStrategy[FuzzFlow], size: int) -> st.SearchStrategy[Batch]:
    """`size` slots, each a flow or (one in eight) empty."""
    @st.composite
    def batch(draw) -> Batch:
        slots = [draw(flows) if draw(st.integers(0, 7)) else None for _ in range(size)]
        return Batch(tuple(dict.fromkeys(f for f in slots if f is not None)))
    return batch()
