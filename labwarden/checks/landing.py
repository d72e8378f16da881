"""Where connections land: each TCP or UDP flow's first packet, captured where it
arrives inside, against where the policy delivers it, and (when the router is ours)
the router's NAT rule that sent it there; and reading the captured headers.

Used by the NAT checks (`labwarden.checks.nat`), the scan of an address
(`labwarden.checks.surface`) and the isolation suite's local-only nodes.
"""

import struct
from dataclasses import dataclass, replace

from labwarden.routers.nftables import trace as nft_trace

from labwarden.probe import packets
from labwarden.checks.fetch import fetch_for
from labwarden.declared.policy import Expectation, Flow, Policy, Service
from labwarden.probe import NodeJob, Probe

LOCATE_SPORT = 20000       # and up: the source ports of located UDP flows, below the ephemeral range
CAPTURE_S = 1.0


def tcp_header(seen: packets.Seen):
    """(sport, dport, flags) of a captured TCP segment, else None."""
    if seen.kind != "tcp" or len(seen.payload) < 14:
        return None
    sport, dport = struct.unpack("!HH", seen.payload[:4])
    return sport, dport, seen.payload[13]


def is_syn(seen: packets.Seen) -> bool:
    tcp = tcp_header(seen)
    return tcp is not None and tcp[2] & 0x12 == 0x02 and seen.direction == "in"


def ports_of(seen: packets.Seen) -> tuple[int, int]:
    """(sport, dport) of a captured TCP or UDP packet."""
    return struct.unpack("!HH", seen.payload[:4])


def first_packet(seen: packets.Seen) -> bool:
    """An arriving SYN or UDP datagram: what a flow's first packet looks like where it lands."""
    return is_syn(seen) or (seen.kind == "udp" and seen.direction == "in" and len(seen.payload) >= 8)


@dataclass(frozen=True)
class Landing:
    """Where a TCP or UDP flow's first packet arrived inside, against where the policy delivers it."""
    flow: Flow
    expected: Expectation
    delivery: tuple | None       # (node, Service) the policy delivers the flow to, or None
    landed: tuple                # ((node, port), ...) where its first packet was captured
    rule: str | None = None      # the router's NAT rule that sent it there, traced (our router only)

    @property
    def ok(self) -> bool:
        return all(self.delivery == (node, Service(self.flow.proto, port)) for node, port in self.landed)

    def where(self, policy: Policy) -> str:
        text = ", ".join(f"{policy.label(n)} {self.flow.proto}/{p}" for n, p in self.landed)
        return f"{text}, sent there by {self.rule}" if self.rule else text

    def explain(self, policy: Policy) -> str:
        flow = self.flow
        want = (f"{policy.label(self.delivery[0])} {self.delivery[1]}" if self.delivery
                else f"nowhere: expected {self.expected} ({self.expected.reason})")
        text = (f"{flow.label(policy)}: sent to {flow.dst}:{flow.port}, it lands on {self.where(policy)}; "
                f"the policy delivers it {want}")
        loose = next((f for f in policy.forwards if f.public == flow.service and f.daddr == "public"
                      and any(n == f.to for n, _ in self.landed) and flow.dst != policy.public), None)
        if loose is not None:
            text += (f". The router forwards {flow.service} whatever address it is sent to (as an OpenWrt "
                     f"redirect without src_dip does): if that is meant, give forward '{loose.name}' "
                     f"`daddr: any` in {policy.file.name}; if not, match the public address in the rule")
        return text

    @classmethod
    def of(cls, policy: Policy, flow: Flow, landed, rule: str | None = None) -> "Landing":
        return cls(flow, policy.expect(flow), policy.delivery(flow), tuple(sorted(set(landed))), rule)


async def locate(lab, policy: Policy, src: str, flows, timeout: float = 1.0) -> dict:
    """Where each TCP or UDP flow lands ({flow: Landing}): src connects (TCP) or sends a
    datagram from a source port of the flow's own (UDP) while every other node captures.
    When the router is ours (its nftables config is known), the flows that land where the
    policy delivers nothing are sent once more while the router traces them, which names
    the NAT rule that sent each one on."""
    topology = policy.topology
    tcp, udp = [f for f in flows if f.proto == "tcp"], [f for f in flows if f.proto == "udp"]
    node = topology.nodes[src]
    sources = {4: node.addresses[node.segments[0]], 6: next(iter(node.addresses6.values()), None)}
    jobs = {n: NodeJob(capture_s=CAPTURE_S) for n in topology.nodes if n not in (src, policy.router)}
    jobs[src] = NodeJob(fetch=[fetch_for(f.dst, f.port, read_s=0.2) for f in tcp],
                        send=[packets.marked_udp(sources[f.dst.version], f.dst, b"labwarden-locate", LOCATE_SPORT + i, f.port)
                              for i, f in enumerate(udp)])
    answers = await lab.run(jobs, timeout=timeout)
    ports = {("tcp", fetched.sport): flow for flow, fetched in zip(tcp, answers[src].fetched)}
    ports |= {("udp", LOCATE_SPORT + i): flow for i, flow in enumerate(udp)}
    landed = {flow: [] for flow in tcp + udp}
    for node, answer in answers.items():
        if node != src:
            for seen in packets.decode(answer.captured):
                if first_packet(seen) and (seen.kind, ports_of(seen)[0]) in ports:
                    landed[ports[seen.kind, ports_of(seen)[0]]].append((node, ports_of(seen)[1]))
    landings = {flow: Landing.of(policy, flow, lands) for flow, lands in landed.items()}
    wrong = [flow for flow, landing in landings.items() if not landing.ok]
    rules = await nat_rules(lab, policy, src, wrong, timeout) if wrong else {}
    return {flow: replace(landing, rule=rules.get(flow)) for flow, landing in landings.items()}


async def nat_rules(lab, policy: Policy, src: str, flows, timeout: float = 1.0) -> dict:
    """{flow: 'dstnat_wan rule \'...\' (router/fw4.nft:257)'} for each flow whose first packet a
    NAT rule of the router rewrote, from a trace of one bare probe per flow (the monitor
    drops events when it falls behind: a few packets a flow keep it up); {} where the
    router is not ours."""
    config = lab.router_firewall()
    if config is None:
        return {}
    kind = lab.router_kind()
    if not kind.can_trace:
        return {f: f"a rule not named (a router of kind {kind.name} cannot be traced)" for f in flows}
    own = set(policy.topology.nodes[src].addresses.values())
    jobs = {src: NodeJob(probes=[Probe(f.proto, f.dst, f.port) for f in flows]),
            policy.router: NodeJob(setup=kind.trace_setup(own), trace=True)}
    try:
        answers = await lab.run(jobs, timeout=timeout)
    finally:
        await lab.run({policy.router: NodeJob(setup=kind.untrace_setup())}, timeout=timeout)
    trace = answers[policy.router].raw.get("trace") or {}
    told = nft_trace.stories(nft_trace.parse_events(trace.get("events", [])),
                             {f: (own, f.dst, f.proto, f.port, set()) for f in flows})
    listing = nft_trace.parse_listing(trace.get("ruleset", ""))
    parsed, shown = nft_trace.parse_config(config.read_text()), nft_trace.shown_path(config, policy.topology)
    rules = {}
    for flow, story in told.items():
        rewrites = story.request[0].nat() if story.request else []
        if rewrites:
            rules[flow] = str(nft_trace.locate(rewrites[0], listing, parsed, shown))
    return rules
