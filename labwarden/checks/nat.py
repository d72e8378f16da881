"""NAT at the router, judged from outside: port-forwards end to end, the public
surface, outbound masquerade, no way in to inside ranges, hairpin.

Each check is one or a few agent batches (probes, fetches, captures) whose
outcome is a value with an `explain()`; suites/nat asserts on them. Where a
connection lands is seen, not guessed: every inside node captures while the
outside sends, so a forward to the wrong host or with its source rewritten is
named as such, and a forward whose service is down (it lands, and is refused)
reads differently from a missing one (nothing lands: filtered at the router).
Scanning an address is `labwarden.checks.surface`'s; finding where a flow lands,
and the NAT rule that sent it there, `labwarden.checks.landing`'s.
"""

import asyncio
import secrets
import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from labwarden.probe import packets
from labwarden.checks.fetch import content, fetch_for, summary
from labwarden.checks.landing import CAPTURE_S, Landing, is_syn, locate, ports_of, tcp_header
from labwarden.checks.matrix import COMMON_TCP, Cell, observe
from labwarden.checks.surface import COMMON_UDP, Surface, scan, sweep
from labwarden.declared.policy import Forward, Policy, Service
from labwarden.probe import Fetched, NodeJob, Probe

MANAGEMENT = tuple(map(Service.parse, ("tcp/22", "tcp/23", "tcp/53", "udp/53", "tcp/80", "tcp/443",
                                       "tcp/8080", "tcp/8443", "udp/161", "udp/1900")))
MARK_PORT = 9              # discard: nothing listens, so the marker's answer is a port-unreachable
MARK_COPIES = 3            # a lossy link (labwarden.realise.impair) may drop one


def outside_nodes(policy: Policy) -> list[str]:
    """The nodes of the zone forwards accept traffic from (the internet), the router aside."""
    return [n for n in policy.topology.nodes
            if n != policy.router and policy.outside is not None and policy.zone_of(n) == policy.outside]


def inside_nodes(policy: Policy) -> list[str]:
    return [n for n in policy.topology.nodes
            if n != policy.router and policy.zone_of(n) != policy.outside]


# -- forwards, end to end -------------------------------------------------------

@dataclass(frozen=True)
class ForwardCheck:
    """One outside node through one forward: where it landed, as whom, and what it got."""
    forward: Forward
    src: str
    reference: Fetched         # the target node asking its own service the same thing
    via: Fetched               # the outside node through the router's public address
    landed: dict               # node -> [source addresses the connection arrived from]
    state: str                 # works | service down | missing | wrong host | source rewritten | wrong reply
    why: str

    def label(self, policy: Policy) -> str:
        return (f"{self.forward.name}: {policy.label(self.src)} -> {policy.router}@"
                f"{policy.topology.segment_of(policy.public).name} {self.forward.public}")

    def explain(self, policy: Policy) -> str:
        return f"{self.label(policy)}: {self.state}: {self.why}"


def _judge_forward(policy: Policy, forward: Forward, src: str, reference: Fetched, via: Fetched,
                   landed: dict) -> tuple[str, str]:
    target, where = forward.to, f"{policy.label(forward.to)} {forward.target}"
    src_addresses = set(policy.topology.nodes[src].addresses.values())
    elsewhere = [n for n in landed if n != target]
    if elsewhere:
        seen = ", ".join(policy.label(n) for n in elsewhere)
        return "wrong host", f"the connection lands on {seen}, not on {where} ({summary(via)})"
    if target not in landed:
        if not via.connected and via.error == "timeout":
            return "missing", ("filtered at the router: no answer, and the connection reached no "
                               "inside node (no such forward)")
        if not via.connected:
            return "missing", (f"refused at the router: {summary(via)}, and the connection reached no "
                               "inside node (no such forward)")
        return "wrong host", f"{summary(via)}, but the connection reached no inside node: the router answered itself"
    if not via.connected:
        why = "refused" if via.error == "refused" else f"did not answer ({via.error})"
        return "service down", (f"the forward reaches {policy.label(target)}, which {why} on "
                                f"{forward.target}: the inside service is down, not the forward")
    sources = set(landed[target])
    if not sources & src_addresses:
        seen = ", ".join(map(str, sorted(sources)))
        holder = policy.topology.node_at(next(iter(sorted(sources))))
        who = f" ({policy.label(holder.name)})" if holder else ""
        return "source rewritten", (f"{policy.label(target)} saw the connection come from {seen}{who}, "
                                    f"not from {policy.label(src)}'s own address: source NAT on forwarded traffic")
    got, wanted = content(via), content(reference)
    if wanted is None:
        return "service down", (f"{policy.label(target)} itself does not serve {forward.target} properly "
                                f"({summary(reference)})")
    if got != wanted:
        return "wrong reply", (f"got {summary(via)}; {policy.label(target)} itself serves "
                               f"{summary(reference)}: not the same content")
    return "works", (f"{summary(via)}, the same as {policy.label(target)} serves itself, which saw "
                     f"{policy.label(src)}'s own address {', '.join(map(str, sorted(sources)))}")


async def check_forwards(lab, policy: Policy, forwards: list[Forward] | None = None,
                         sources: list[str] | None = None, timeout: float = 1.0) -> list[ForwardCheck]:
    """Every outside node through every forward, while every inside node captures."""
    forwards = policy.forwards if forwards is None else forwards
    sources = outside_nodes(policy) if sources is None else sources
    topology = policy.topology
    # what each target serves itself, asked the same way
    reference_jobs: dict[str, NodeJob] = {}
    for forward in forwards:
        own = next(iter(topology.nodes[forward.to].addresses.values()))
        reference_jobs.setdefault(forward.to, NodeJob()).fetch.append(
            fetch_for(own, forward.port, host=policy.public))
    answers = await lab.run(reference_jobs, timeout=timeout)
    references, taken = {}, {}
    for forward in forwards:
        i = taken.get(forward.to, 0)
        references[forward] = answers[forward.to].fetched[i]
        taken[forward.to] = i + 1
    # through the public address, all at once
    jobs = {n: NodeJob(capture_s=CAPTURE_S) for n in inside_nodes(policy)}
    plan = []
    for src in sources:
        for forward in forwards:
            job = jobs.setdefault(src, NodeJob())
            plan.append((src, forward, len(job.fetch)))
            job.fetch.append(fetch_for(policy.public, forward.public.port, host=policy.public))
    answers = await lab.run(jobs, timeout=timeout)
    syns = {n: [s for s in packets.decode(answers[n].captured) if is_syn(s)] for n in inside_nodes(policy)}
    router_addresses = set(topology.nodes[policy.router].addresses.values())
    checks = []
    for src, forward, i in plan:
        via = answers[src].fetched[i]
        landed = {}
        for node, frames in syns.items():
            for seen in frames:
                sport, dport, _ = tcp_header(seen)
                if sport == via.sport and (seen.src in topology.nodes[src].addresses.values()
                                           or seen.src in router_addresses):
                    landed.setdefault(node, []).append(seen.src)
        state, why = _judge_forward(policy, forward, src, references[forward], via, landed)
        checks.append(ForwardCheck(forward, src, references[forward], via, landed, state, why))
    return checks


# -- the public surface -----------------------------------------------------------

async def public_surface(lab, policy: Policy, src: str, timeout: float = 1.0) -> Surface:
    """The router's public address from an outside node: every TCP and UDP port swept for
    what lands inside, at full speed on every router; then probed for what answers: every
    TCP port where the router takes any rate of SYNs, and under a syn_limit (paced) the
    ports something must answer on, the management ports and every port that landed; the
    usual UDP ports and every one that landed. Whatever landed where the policy delivers
    nothing is located again, with the router's NAT rule."""
    address = policy.public
    swept = {proto: await sweep(lab, policy, src, address, proto) for proto in ("tcp", "udp")}
    limit = policy.syn_limit
    if limit is None:
        tcp_ports = range(1, 65536)
    else:
        # the sweep emptied the router's SYN bucket; the paced probes start on a full one
        await asyncio.sleep(limit.burst / limit.rate)
        named = policy.declared_services() | set(MANAGEMENT) | {Service("tcp", p) for p in COMMON_TCP}
        tcp_ports = sorted({s.port for s in named if s.proto == "tcp"} | set(swept["tcp"]))
    udp_ports = sorted(set(COMMON_UDP) | set(swept["udp"]))
    surface = await scan(lab, policy, src, address, tcp_ports, udp_ports, timeout=timeout)
    landings = {}
    for proto, found in swept.items():
        for port, lands in found.items():
            flow = policy.flow(src, address, Service(proto, port))
            landings[flow] = Landing.of(policy, flow, lands)
    again = [f for f, landing in landings.items() if not landing.ok and f not in surface.landings]
    if again:
        landings.update(await locate(lab, policy, src, again, timeout))
    surface.landings = {**landings, **surface.landings}
    return surface


async def public_surface6(lab, policy: Policy, src: str, timeout: float = 1.0) -> list[Surface]:
    """IPv6 has no NAT, so its public surface is the router's IPv6 address on the outside
    segment and every pinholed node's IPv6 addresses: each scanned from src on every TCP
    port (the router's under a syn_limit: the ports public_surface paces) and the usual UDP
    ports, judged by the oracle: only the pinholes answer. [] where src has no IPv6."""
    topology = policy.topology
    if not topology.nodes[src].addresses6:
        return []
    router = topology.nodes[policy.router]
    own = router.addresses6.get(topology.segment_of(policy.public).name)
    pinholed = sorted({f.to for f in policy.forwards if f.family != 4})
    targets = [own] * (own is not None) + [a for n in pinholed for a in topology.nodes[n].addresses6.values()]
    surfaces = []
    for address in targets:
        tcp_ports = range(1, 65536)
        if policy.syn_limit is not None and address == own:
            await asyncio.sleep(policy.syn_limit.burst / policy.syn_limit.rate)  # a full SYN bucket
            named = policy.declared_services() | set(MANAGEMENT) | {Service("tcp", p) for p in COMMON_TCP}
            tcp_ports = sorted({s.port for s in named if s.proto == "tcp"})
        surfaces.append(await scan(lab, policy, src, address, tcp_ports, COMMON_UDP, timeout=timeout))
    return surfaces


# -- the router's own services from outside ---------------------------------------

async def management(lab, policy: Policy, timeout: float = 1.0) -> list[Cell]:
    """Every outside node to every router address (IPv6's too) on its services and the
    usual management ports (ssh, telnet, DNS, web UI, SNMP, UPnP)."""
    router = policy.topology.nodes[policy.router]
    services = sorted(set(MANAGEMENT) | set(policy.listening(policy.router)) | {Service("icmp")},
                      key=lambda s: (s.proto, s.port or 0))
    flows = [policy.flow(src, address, svc) for src in outside_nodes(policy)
             for address in router.all_addresses() for svc in services]
    observed = await observe(lab, flows, timeout)
    return [Cell(f, policy.expect(f), observed[f]) for f in flows]


# -- outbound: every inside segment goes out, masqueraded -------------------------

@dataclass(frozen=True)
class Outbound:
    """An inside node's datagram to an outside node: which source address arrived."""
    src: str
    dst: str
    expected: IPv4Address | None   # None: it must not arrive at all
    arrived: tuple                 # source addresses the outside node saw
    reach: Cell                    # a TCP/ICMP flow that must pass, or not, as the oracle says

    @property
    def ok(self) -> bool:
        if not self.reach.ok:
            return False
        if self.expected is None:
            return not self.arrived
        return set(self.arrived) == {self.expected}

    def explain(self, policy: Policy) -> str:
        seen = ", ".join(map(str, self.arrived)) or "nothing"
        want = "nothing" if self.expected is None else str(self.expected)
        why = ""
        if self.expected is not None and self.expected == policy.public:
            why = " (the router's public address: masqueraded)"
        elif self.expected is not None:
            why = " (its own address: the policy does not masquerade its zone)"
        text = (f"{policy.label(self.src)} -> {policy.label(self.dst)}: arrived from {seen}, "
                f"expected {want}{why}")
        return text if self.reach.ok else f"{text}; {self.reach.message(policy)}"


async def outbound(lab, policy: Policy, timeout: float = 1.0) -> list[Outbound]:
    """Each inside node sends a marked datagram to each outside node, which captures;
    and opens a TCP connection to a service there (ICMP echo if it has none)."""
    topology = policy.topology
    jobs = {n: NodeJob(capture_s=CAPTURE_S) for n in outside_nodes(policy)}
    plan = []
    for src in inside_nodes(policy):
        for dst in outside_nodes(policy):
            address = next(iter(topology.nodes[dst].addresses.values()))
            marker = f"labwarden-nat-{src}-{secrets.token_hex(4)}".encode()
            listening = sorted(s for s in policy.listening(dst) if s.proto == "tcp")
            reach = policy.flow(src, address, listening[0] if listening else Service("icmp"))
            jobs.setdefault(src, NodeJob()).probes += [Probe("udp", address, MARK_PORT, marker)] * MARK_COPIES
            plan.append((src, dst, address, marker, reach))
    answers = await lab.run(jobs, timeout=timeout)
    observed = await observe(lab, [p[4] for p in plan], timeout)
    results = []
    for src, dst, address, marker, reach in plan:
        arrived = tuple(sorted({s.src for s in packets.decode(answers[dst].captured)
                                if s.kind == "udp" and s.direction == "in" and marker in s.payload}))
        passes = policy.expect(policy.flow(src, address, f"udp/{MARK_PORT}")).reached is not None
        own = topology.nodes[src].addresses[topology.nodes[src].segments[0]]
        expected = (policy.public if policy.zone_of(src) in policy.masquerade else own) if passes else None
        results.append(Outbound(src, dst, expected, arrived, Cell(reach, policy.expect(reach), observed[reach])))
    return results


# -- no way in: outside nodes addressing inside ranges directly -------------------

@dataclass
class WayIn:
    cells: list[Cell]                      # every probe, judged by the oracle
    arrivals: dict                         # inside node -> [Seen] from outside that the policy delivers nowhere
    controls: dict                         # inside node -> whether its capture saw the router's ping
    routes: dict                           # outside node -> [[inside prefix, via the router]]
    landings: list = field(default_factory=list)   # [Landing]: the flows that took them there

    def problems(self, policy: Policy) -> list[str]:
        """The flows that got in, each as it was sent, where it landed and by which rule;
        then what arrived that no flow sent again accounts for (ICMP, or a flow that did not
        land again); then the probes that saw what the policy does not admit."""
        told = [landing.explain(policy) for landing in self.landings]
        located = {(n, landing.flow.proto, p) for landing in self.landings for n, p in landing.landed}
        for node, frames in self.arrivals.items():
            rest = [s for s in frames if s.kind == "icmp" or (node, s.kind, ports_of(s)[1]) not in located]
            if rest:
                told.append(f"{policy.label(node)} got {len(rest)} packets from outside that the policy "
                            f"delivers nowhere (first: {rest[0]})")
        located_flows = {landing.flow for landing in self.landings}
        return told + [c.message(policy) for c in self.cells if not c.ok and c.flow not in located_flows]


async def no_way_in(lab, policy: Policy, timeout: float = 1.0) -> WayIn:
    """Outside nodes that share a segment with the router's public address get a route to
    every inside segment via it (an attacker's own route; on IPv6 via the router's address
    there), then probe every inside address, IPv6's too;
    every inside node captures. Nothing from outside may arrive but what the policy delivers
    (a forward that takes any destination address, `daddr: any`); the TCP flows behind
    anything else are sent again as connections, to name each and the rule that let it in."""
    topology = policy.topology
    inside_segments = [s for s in topology.segments if policy.zone_of_segment(s) != policy.outside]
    public_segment = topology.segment_of(policy.public).name
    attackers = [n for n in outside_nodes(policy) if public_segment in topology.nodes[n].addresses]
    router = topology.nodes[policy.router]
    public6 = router.addresses6.get(public_segment)  # IPv6: no NAT, the same attack on the pinholes' side
    routes = {n: [[str(topology.segments[s].subnet), str(policy.public)] for s in inside_segments]
              + [[str(topology.segments[s].subnet6), str(public6)] for s in inside_segments
                 if public6 is not None and topology.nodes[n].addresses6 and topology.segments[s].subnet6]
              for n in attackers}
    await lab.run({n: NodeJob(setup={"routes": prefixes}) for n, prefixes in routes.items()}, timeout=timeout)
    inside = [n for n in inside_nodes(policy)]
    listening = {s for n in inside for s in policy.listening(n)} | {f.public for f in policy.forwards}
    ports = sorted(set(COMMON_TCP) | {s.port for s in listening if s.proto == "tcp"})
    udp = sorted({53, 5353} | {s.port for s in listening if s.proto == "udp"})
    flows = [policy.flow(src, address, svc) for src in attackers for n in inside
             for address in topology.nodes[n].all_addresses()
             if address.version == 4 or any(r[1] == str(public6) for r in routes[src])
             for svc in [*(Service("tcp", p) for p in ports), *(Service("udp", p) for p in udp),
                         Service("icmp")]]
    jobs = {n: NodeJob(capture_s=CAPTURE_S) for n in inside}
    by_src = {}
    for flow in flows:
        by_src.setdefault(flow.src, []).append(flow)
    for src, fs in by_src.items():
        jobs.setdefault(src, NodeJob()).probes = [Probe(f.proto, f.dst, f.port) for f in fs]
    control_probes = [Probe("icmp", topology.nodes[n].address_on(s)) for n in inside
                      for s in topology.nodes[n].segments if s in router.addresses]
    jobs[policy.router] = NodeJob(probes=control_probes)
    answers = await lab.run(jobs, timeout=timeout)
    cells = [Cell(f, policy.expect(f), o) for src, fs in by_src.items()
             for f, o in zip(fs, answers[src].observations)]
    router_addresses = set(router.addresses.values())
    arrivals, controls = {}, {}
    for node in inside:
        seen = packets.decode(answers[node].captured)
        arrivals[node] = undelivered(policy, flows, node, seen)
        controls[node] = any(s.src in router_addresses and s.kind == "icmp" and s.payload[:1] == b"\x08"
                             for s in seen if s.direction == "in")
    outsiders = {a: n for n in outside_nodes(policy) for a in topology.nodes[n].all_addresses()}
    landings = []
    for src in sorted({outsiders[s.src] for frames in arrivals.values() for s in frames if s.kind != "icmp"}):
        sent = [f for f in by_src.get(src, []) if f.proto != "icmp" and f.dst.version == 4]  # locate: IPv4
        if sent:
            located = await locate(lab, policy, src, sent, timeout)
            landings += [landing for landing in located.values() if not landing.ok]
    return WayIn(cells, arrivals, controls, routes, landings)


def undelivered(policy: Policy, flows, node: str, seen: list) -> list:
    """What arrived at node from outside nodes' IPv4 addresses that none of the IPv4 flows
    they sent is delivered as (policy.delivery): new packets only (a SYN, an echo request,
    a datagram)."""
    # IPv4 only, as the captures are judged: an IPv6 pinhole to web:80 does not deliver an
    # IPv4 SYN that arrives at web:80 (a DNAT that takes any address: forward-any-address)
    delivered = {(f.src, policy.delivery(f)) for f in flows if f.dst.version == 4}
    outsiders = {a: n for n in outside_nodes(policy) for a in policy.topology.nodes[n].addresses.values()}
    return [s for s in seen if s.direction == "in" and s.src in outsiders and _new(s)
            and (outsiders[s.src], (node, _service(s))) not in delivered]


def _service(seen: packets.Seen) -> Service:
    """The service a captured packet is addressed to, where it was captured."""
    if seen.kind == "icmp":
        return Service("icmp")
    return Service(seen.kind, struct.unpack("!H", seen.payload[2:4])[0])


def _new(seen: packets.Seen) -> bool:
    """A packet that opens something: a SYN, an echo request, a datagram (not the replies
    and segments of connections inside nodes opened themselves, e.g. a tunnel)."""
    if seen.kind == "tcp":
        return is_syn(seen)
    if seen.kind == "icmp":
        return seen.payload[:1] == b"\x08"
    return seen.kind == "udp"


# -- hairpin ------------------------------------------------------------------------

async def hairpin(lab, policy: Policy, timeout: float = 1.0) -> list[Cell]:
    """Inside nodes to the router's public address on every forwarded port."""
    flows = [policy.flow(n, policy.public, f.public) for n in inside_nodes(policy) for f in policy.forwards]
    observed = await observe(lab, flows, timeout)
    return [Cell(f, policy.expect(f), observed[f]) for f in flows]


# -- a service that is down -------------------------------------------------------

def service_control(lab, node: str, verb: str, port: int) -> None:
    """Stop or start the service on `port` inside the node (the lab image's lab-services)."""
    done = lab.exec(node, "python3", "/usr/local/bin/lab-services", verb, str(port))
    if done.returncode != 0:
        raise RuntimeError(f"could not {verb} tcp/{port} in {node} (lab-services {verb} {port}): "
                           f"{(done.stdout + done.stderr).strip()}")
