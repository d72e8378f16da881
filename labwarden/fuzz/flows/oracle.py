"""The flow fuzzer's oracle: the outcomes a fuzzed flow may have, from the policy alone.

An ordinary probe is judged by its verdict, like a matrix cell, after the kernel's
own silences (`routers.nftables.verdicts.kernel_silence`): a probe to the broadcast address of a
segment the router is on is the router's broadcast, which nothing answers,
whatever its firewall says.

For odd packets it is stated here, honestly: an odd packet never reaches the other
side of a deny; on an allowed path only the packets any router forwards must arrive
(fragments, which conntrack reassembles, ordinary options, an echo request of any
code); on one segment everything arrives, but fragments that cannot be reassembled: a
Docker bridge runs the host's conntrack (br_netfilter), which drops them; forged
sources do not cross an antispoofing router; TTL 1 dies at the first router on the
way (`forwarders`: none when it is sent to an address of the next hop).
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from labwarden.routers.nftables.verdicts import kernel_silence
from labwarden.declared.policy import Policy, Service
from labwarden.fuzz.flows.flow import FuzzFlow

ARRIVED, LOST = "arrived", "not arrived"


@dataclass(frozen=True)
class Expected:
    outcomes: frozenset[str]             # probe verdicts, or ARRIVED / LOST
    reason: str
    allowed: bool                        # what the policy says of the flow

    def admits(self, outcome: str) -> bool:
        return outcome in self.outcomes

    def __str__(self):
        return "|".join(sorted(self.outcomes))


def _outside_segment(policy: Policy) -> str | None:
    router = policy.topology.nodes[policy.router]
    segment = policy.topology.segment_of(router.gateway) if router.gateway else None
    return segment.name if segment else None


def _any_rule(policy: Policy, src_zone: str, dst_zone: str) -> str | None:
    rule = next((r for r in policy.allow if r.any and src_zone in r.sources and dst_zone in r.targets), None)
    return rule.name if rule else None


def router_subnets(policy: Policy) -> list[IPv4Network]:
    topology = policy.topology
    return [topology.segments[s].subnet for s in topology.nodes[policy.router].segments]


def expect_flow(policy: Policy, flow: FuzzFlow) -> Expected:
    if not flow.raw:
        e = policy.expect(policy.flow(flow.src, flow.dst, flow.service))
        # a flow the policy lands on a node nobody holds its address of was rewritten by a
        # forward (DNAT, in prerouting): it is routed to that node, no broadcast any more
        rewritten = e.reached is not None and policy.topology.node_at(flow.dst) is None
        silent = None if rewritten or policy.topology.on_link(flow.src, flow.dst) else \
            kernel_silence(flow.dst, router_subnets(policy))
        if silent:
            return Expected(frozenset({"filtered"}), silent, False)
        outcomes = set(e.verdicts)
        if e.reached is None and e.reason in ("no such host", "not a lab address"):
            outcomes.add("rejected")  # nobody there: silence, or a host-unreachable
        return Expected(frozenset(outcomes), e.reason, e.reached is not None)
    return _expect_raw(policy, flow)


def _expect_raw(policy: Policy, flow: FuzzFlow) -> Expected:
    topology = policy.topology
    target = topology.node_at(flow.dst)
    if target is None or target.name in (policy.router, flow.src):
        raise ValueError(f"{flow.spec()}: an odd packet is judged at the node it is sent to")
    kind, value = flow.odd or ("port0", "")
    if topology.on_link(flow.src, flow.dst):
        if kind == "frag" and value in ("later", "overlap"):
            return Expected(frozenset({ARRIVED, LOST}), "same segment, but a bridge may reassemble "
                            "fragments (Docker's do: br_netfilter runs the host's conntrack)", True)
        return Expected(frozenset({ARRIVED}), "same segment: no router in between", True)
    path = forwarders(policy, flow.src, flow.dst)
    if kind == "ttl":
        if not path:  # for the next hop itself: delivered, not forwarded
            return Expected(frozenset({ARRIVED}), f"ttl 1 is enough for {target.name}, the next hop", True)
        return Expected(frozenset({LOST}), f"ttl 1 expires at {path[0]}", False)
    either = frozenset({ARRIVED, LOST})

    def judged(service: Service, src: str = flow.src) -> tuple[bool, str]:
        e = policy.expect(policy.flow(src, flow.dst, service))
        return e.reached == target.name, e.reason

    if kind == "icmp":
        icmp_type = int(value.split("/")[0])
        if icmp_type == 8:
            ok, why = judged(Service("icmp"))
            return Expected(frozenset({ARRIVED if ok else LOST}), f"an echo request: {why}", ok)
        rule = _any_rule(policy, policy.zone_of(flow.src), policy.zone_of(target.name))
        if rule is None:
            return Expected(frozenset({LOST}), "no allow rule with `ports: any` covers ICMP "
                            f"type {icmp_type} on this path", False)
        return Expected(either, f"allow '{rule}' (ICMP other than echo: may or may not pass)", True)
    service = Service(flow.proto, flow.port)
    if kind == "spoof":
        forged = IPv4Address(value)
        segment = topology.segment_of(forged)
        own = topology.nodes[flow.src].segments
        legit = segment.name in own if segment else _outside_segment(policy) in own
        if policy.antispoof and not legit and policy.router in path:
            return Expected(frozenset({LOST}), "a forged source: antispoofing drops it", False)
    ok, why = judged(service)
    if not ok:
        return Expected(frozenset({LOST}), f"an odd packet never crosses a deny ({why})", False)
    must = (kind == "port0" or (kind == "frag" and value in ("split", "tiny"))
            or (kind == "opt" and value in ("nop", "rr", "ts")))
    if must:
        return Expected(frozenset({ARRIVED}), f"{why}: a router forwards this packet", True)
    return Expected(either, f"{why}: an odd packet on an allowed path may or may not pass", True)


def forwarders(policy: Policy, src: str, dst: IPv4Address) -> list[str]:
    """The nodes that forward a packet from src to dst, by the topology's routes (a route,
    else the gateway, at each hop); [] when dst is on-link or an address of the next hop."""
    topology, node, path = policy.topology, policy.topology.nodes[src], []
    while not topology.on_link(node, dst) and len(path) < len(topology.nodes):
        via = node.next_hop(dst)
        hop = topology.node_at(via) if via else None
        if hop is None or dst in hop.addresses.values():
            break
        path.append(hop.name)
        node = hop
    return path
