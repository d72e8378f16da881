"""Layer-2 exposure checks: discovery, snooping and forged sources.

Each check is one agent request in which some nodes capture while others
send, so every capture is running before the first packet leaves. Each also
carries a positive control, the same thing done where it must succeed, so
that "nothing seen" is evidence and not a broken sniffer.
"""

import secrets
from dataclasses import dataclass, field

from labwarden.probe import packets
from labwarden.checks.matrix import matrix_services
from labwarden.declared.policy import Policy
from labwarden.probe import NodeJob, Probe

CAPTURE_S = 1.5
DISCOVERY_PORTS = (5353, 1900)


def hidden_segments(policy: Policy, observer: str) -> list[str]:
    """Segments the observer may not reach at all: it should not learn their hosts exist.
    (A flow to a host's address that a forward sends on to another node, as OpenWrt's
    redirects without src_dip do, does not reach that host.)"""
    topology = policy.topology
    own = set(topology.nodes[observer].segments)
    hidden = []
    for name in topology.segments:
        members = [(n, a) for n, node in topology.nodes.items() if n != policy.router
                   for s, a in node.addresses.items() if s == name]
        if name in own or not members:
            continue
        if not any(policy.expect(policy.flow(observer, addr, svc)).reached == holder
                   for holder, addr in members for svc in matrix_services(policy)):
            hidden.append(name)
    return hidden


def observers(policy: Policy) -> list[str]:
    return [n for n in policy.topology.nodes if n != policy.router]


@dataclass
class Sighting:
    """What a node found of a segment: addresses that answered ARP, ping or discovery."""
    arp: set = field(default_factory=set)
    ping: set = field(default_factory=set)
    discovery: set = field(default_factory=set)

    def any(self) -> bool:
        return bool(self.arp or self.ping or self.discovery)

    def __str__(self):
        parts = [f"{k}: {', '.join(map(str, sorted(v)))}" for k, v in
                 (("ARP", self.arp), ("ping", self.ping), ("discovery", self.discovery)) if v]
        return "; ".join(parts) or "nothing"


def _sweep_job(lab, node: str, segments: list[str], own_segment: str) -> NodeJob:
    """ARP sweep and discovery queries on the node's own segment wire, ping sweep through routes."""
    topology = lab.topology
    me = topology.nodes[node]
    iface, ip = me.interfaces[own_segment], me.address_on(own_segment)
    mac = lab.mac(node, own_segment)
    job = NodeJob(capture_s=CAPTURE_S)
    for segment in segments:
        subnet = topology.segments[segment].subnet
        job.send += packets.arp_sweep(iface, mac, ip, subnet)
        job.probes += [Probe("icmp", host) for host in subnet.hosts() if host != ip]
    job.send += packets.discovery_queries(iface, mac, ip)
    return job


def _sighting(lab, policy: Policy, observer: str, job: NodeJob, answer, segment: str,
              count_router: bool = False) -> Sighting:
    """Hosts of the segment that answered; the router's own addresses are no secret
    (but they do show that a control sweep works)."""
    topology = lab.topology
    subnet = topology.segments[segment].subnet
    router_addresses = set() if count_router else set(topology.nodes[policy.router].addresses.values())
    me = set(topology.nodes[observer].addresses.values())
    found = Sighting()
    for seen in packets.decode(answer.captured):
        if seen.direction != "in" or seen.src is None or seen.src not in subnet \
                or seen.src in router_addresses:
            continue
        if seen.kind == "arp-reply":
            found.arp.add(seen.src)
        elif seen.kind == "udp" and seen.dst in me \
                and int.from_bytes(seen.payload[:2], "big") in DISCOVERY_PORTS:
            found.discovery.add(seen.src)  # an mDNS or SSDP answer, to us
    found.ping = {p.dst for p, o in zip(job.probes, answer.observations)
                  if p.dst in subnet and p.dst not in router_addresses and o.verdict == "open"}
    return found


async def discovery(lab, policy: Policy, timeout: float = 1.0):
    """Per (observer, hidden segment) what the observer found; plus per segment a control.

    The control is a node on the segment itself doing the same sweep: it must
    find its neighbours, or the sweep proves nothing.
    """
    topology = lab.topology
    plan = {n: hidden_segments(policy, n) for n in observers(policy)}
    plan = {n: segs for n, segs in plan.items() if segs}
    swept = {s for segs in plan.values() for s in segs}
    controls = {}
    for segment in sorted(swept):
        insiders = [n for n, node in topology.nodes.items()
                    if segment in node.addresses and n != policy.router and n not in plan]
        insiders = insiders or [n for n, node in topology.nodes.items()
                                if segment in node.addresses and n != policy.router]
        if insiders:
            controls[segment] = insiders[0]
    jobs = {}
    for node, segs in plan.items():
        jobs[node] = _sweep_job(lab, node, segs, topology.nodes[node].segments[0])
    for segment, node in controls.items():
        job = _sweep_job(lab, node, [segment], segment)
        if node in jobs:
            jobs[node].send += job.send
            jobs[node].probes += job.probes
        else:
            jobs[node] = job
    answers = await lab.run(jobs, timeout=timeout)
    results = {(node, segment): _sighting(lab, policy, node, jobs[node], answers[node], segment)
               for node, segs in plan.items() for segment in segs}
    control = {segment: (node, _sighting(lab, policy, node, jobs[node], answers[node], segment, True))
               for segment, node in controls.items()}
    return results, control


async def snooping(lab, policy: Policy, timeout: float = 1.0):
    """Every segment's nodes talk among themselves and to wan while all others capture.

    Returns per segment: {listener: frames of that segment's hosts it saw}, and
    the router's own capture on that segment as the control.
    """
    topology = lab.topology
    wan_nodes = [n for n in topology.nodes if policy.zone_of(n) == "wan"]
    talkers = {s: [n for n, node in topology.nodes.items() if s in node.addresses and n != policy.router]
               for s in topology.segments if policy.zone_of_segment(s) != "wan"}
    jobs = {n: NodeJob(capture_s=CAPTURE_S) for n in topology.nodes}
    for segment, nodes in talkers.items():
        for talker in nodes:
            peers = [topology.nodes[p].address_on(segment) for p in nodes if p != talker]
            out = [topology.nodes[w].addresses[s] for w in wan_nodes for s in topology.nodes[w].addresses]
            jobs[talker].probes += [Probe("icmp", a) for a in peers + out]
            jobs[talker].probes += [Probe("tcp", a, 22) for a in peers] + [Probe("tcp", a, 80) for a in out]
    answers = await lab.run(jobs, timeout=timeout)
    seen_by = {}
    for segment, nodes in talkers.items():
        own = {topology.nodes[n].address_on(segment) for n in nodes}
        per_listener = {}
        for listener in topology.nodes:
            if listener == policy.router or segment in topology.nodes[listener].addresses:
                continue
            if policy.zone_of(listener) == "wan" and segment not in policy.masquerade:
                continue  # without masquerade, wan hosts see inside addresses by design
            # a frame from the segment's hosts, or one to them that reached this listener; not
            # the listener's own frames to them (e.g. a SYN-ACK an earlier test's SYN still
            # draws, which the router drops as invalid): those show nothing of the segment
            frames = [s for s in packets.decode(answers[listener].captured)
                      if s.src is not None and (s.src in own or (s.dst in own and s.direction == "in"))]
            per_listener[listener] = frames
        control = [s for s in packets.decode(answers[policy.router].captured)
                   if s.iface == topology.nodes[policy.router].interfaces.get(segment) and s.src in own]
        seen_by[segment] = (per_listener, control)
    return seen_by


async def spoofing(lab, policy: Policy, timeout: float = 1.0):
    """Forged-source packets from each node towards a target it may reach.

    Returns a list of (sender, forged source, target, arrived) plus the genuine
    controls [(sender, target, arrived)].
    """
    topology = lab.topology
    plan = []  # (sender, source, target node, target address, marker, genuine)
    for sender in observers(policy):
        own = topology.nodes[sender]
        # a target in another zone: the packet crosses the router (in a lab with several
        # routers, e.g. the airplane's, transit routers may forward any source of theirs)
        targets = [(n, a) for n, node in topology.nodes.items() if n not in (sender, policy.router)
                   and policy.zone_of(n) != policy.zone_of(sender)
                   for s, a in node.addresses.items() if s not in own.addresses
                   and policy.expect(policy.flow(sender, a, "udp/9999")).reached]
        if not targets:
            continue
        target, address = targets[0]
        plan.append((sender, own.addresses[own.segments[0]], target, address, secrets.token_hex(8), True))
        for segment in topology.segments:
            if segment in own.addresses:
                continue
            holders = [node.address_on(segment) for n, node in topology.nodes.items()
                       if segment in node.addresses and n not in (policy.router, target)]
            forged = holders[0] if holders else topology.segments[segment].subnet.network_address + 250
            plan.append((sender, forged, target, address, secrets.token_hex(8), False))
    jobs: dict[str, NodeJob] = {}
    for index, (sender, source, target, address, marker, _) in enumerate(plan):
        jobs.setdefault(sender, NodeJob()).send.append(
            packets.marked_udp(source, address, f"labwarden-spoof-{marker}".encode(), 40000 + index))
        jobs.setdefault(target, NodeJob()).capture_s = CAPTURE_S
    answers = await lab.run(jobs, timeout=timeout)
    arrived = {}
    for node, answer in answers.items():
        for seen in packets.decode(answer.captured):
            arrived.setdefault(node, []).append(seen.payload)
    outcome = []
    for sender, source, target, address, marker, genuine in plan:
        hit = any(f"labwarden-spoof-{marker}".encode() in p for p in arrived.get(target, []))
        outcome.append((sender, source, target, address, genuine, hit))
    return outcome
