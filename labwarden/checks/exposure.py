"""Layer-2 exposure checks: discovery, snooping and forged sources.

Each check is one agent request in which some nodes capture while others
send, so every capture is running before the first packet leaves. Each also
carries a positive control, the same thing done where it must succeed, so
that "nothing seen" is evidence and not a broken sniffer.
"""

import secrets
from dataclasses import dataclass, field
from ipaddress import IPv6Address

from labwarden.probe import packets
from labwarden.checks.matrix import matrix_services
from labwarden.declared.fields import within
from labwarden.declared.policy import Policy
from labwarden.probe import NodeJob, Probe

CAPTURE_S = 1.5
DISCOVERY_PORTS = (5353, 1900)
SWEEP6_HOSTS = 16  # an IPv6 segment is swept at interface ids ::1-::10 and its declared addresses
# (255 put a wan node's capture past the agent's MAX_FRAMES under ipv4-only-filter: 5,118 frames;
# 64 put openwrt-homelab's git past it: 5,139, its router soliciting every swept address of the
# servers segment, whose neighbour discovery fw4 refuses)


def sweep_targets6(topology, segment: str) -> list[IPv6Address]:
    """The IPv6 addresses a sweep of the segment tries (a /64 cannot be swept whole): the
    low interface ids, where hand-numbered hosts live, and every address declared on it."""
    prefix = topology.segments[segment].subnet6
    if prefix is None:
        return []
    low = [prefix.network_address + i for i in range(1, SWEEP6_HOSTS + 1)]
    declared = [node.addresses6[segment] for node in topology.nodes.values() if segment in node.addresses6]
    return sorted(set(low + declared))


def hidden_families(policy: Policy, observer: str, segment: str) -> set[int]:
    """The IP versions (4, 6) on which the observer may not reach any host of the segment: on
    those it should not learn that the hosts exist. (A flow to a host's address that a forward
    sends on to another node, as OpenWrt's redirects without src_dip do, does not reach that
    host; an IPv6 pinhole to one host does, so wan may know the server VLAN on IPv6.)"""
    topology = policy.topology
    if segment in topology.nodes[observer].segments:
        return set()
    hidden = set()
    for version in (4, 6):
        members = [(n, a) for n, node in topology.nodes.items() if n != policy.router
                   for s, a in (node.addresses if version == 4 else node.addresses6).items() if s == segment]
        if members and not any(policy.expect(policy.flow(observer, addr, svc)).reached == holder
                               for holder, addr in members for svc in matrix_services(policy)):
            hidden.add(version)
    return hidden


def hidden_segments(policy: Policy, observer: str, version: int | None = None) -> list[str]:
    """Segments the observer may not reach at all (on `version`, or on either family)."""
    return [name for name in policy.topology.segments
            if (families := hidden_families(policy, observer, name)) and (version is None or version in families)]


def ipv6_answerers(policy: Policy, segment: str, control: str) -> list[str]:
    """Who could answer a control's IPv6 sweep of its own segment: the segment's other IPv6
    hosts, and the router unless its zone is `nd_blocked` (the router refuses its neighbour
    discovery). None: no IPv6 control is possible there, so no IPv6 sweep of it proves anything."""
    blocked = policy.zone_of_segment(segment) in policy.nd_blocked
    return [n for n, node in policy.topology.nodes.items() if segment in node.addresses6 and n != control
            and not (n == policy.router and blocked)]


def observers(policy: Policy) -> list[str]:
    return [n for n in policy.topology.nodes if n != policy.router]


@dataclass
class Sighting:
    """What a node found of a segment: addresses that answered ARP or neighbour solicitation
    (`nd`), ping (by sweep, or to ff02::1) or discovery."""
    arp: set = field(default_factory=set)
    ping: set = field(default_factory=set)
    discovery: set = field(default_factory=set)
    nd: set = field(default_factory=set)

    def any(self) -> bool:
        return bool(self.arp or self.ping or self.discovery or self.nd)

    def families(self) -> set[int]:
        """The IP versions of the addresses found."""
        return {a.version for a in self.arp | self.ping | self.discovery | self.nd}

    def __str__(self):
        parts = [f"{k}: {', '.join(map(str, sorted(v, key=lambda a: (a.version, a))))}" for k, v in
                 (("ARP", self.arp), ("neighbour solicitation", self.nd), ("ping", self.ping),
                  ("discovery", self.discovery)) if v]
        return "; ".join(parts) or "nothing"


def _sweep_job(lab, node: str, segments: dict[str, set[int]], own_segment: str) -> NodeJob:
    """ARP and neighbour-solicitation sweeps, discovery queries and an echo to ff02::1 on the
    node's own segment wire; ping sweeps (both families) through routes."""
    topology = lab.topology
    me = topology.nodes[node]
    iface, ip = me.interfaces[own_segment], me.address_on(own_segment)
    ip6 = me.addresses6.get(own_segment)
    mac = lab.mac(node, own_segment)
    job = NodeJob(capture_s=CAPTURE_S)
    for segment, families in segments.items():
        subnet = topology.segments[segment].subnet
        if 4 in families:
            job.send += packets.arp_sweep(iface, mac, ip, subnet)
            job.probes += [Probe("icmp", host) for host in subnet.hosts() if host != ip]
        if ip6 is not None and 6 in families:
            targets = [a for a in sweep_targets6(topology, segment) if a != ip6]
            job.send += packets.nd_sweep(iface, mac, ip6, targets)
            job.probes += [Probe("icmp", host) for host in targets]
    job.send += packets.discovery_queries(iface, mac, ip)
    if ip6 is not None:
        job.send.append(packets.all_nodes_echo(iface, mac, ip6))
    return job


def _sighting(lab, policy: Policy, observer: str, job: NodeJob, answer, segment: str,
              count_router: bool = False, families=(4, 6)) -> Sighting:
    """Hosts of the segment that answered, on those families; the router's own addresses are
    no secret (but they do show that a control sweep works)."""
    topology = lab.topology
    subnets = [n for n in (topology.segments[segment].subnet, topology.segments[segment].subnet6)
               if n and n.version in families]

    def inside(address) -> bool:
        return address is not None and within(address, subnets)

    router_addresses = set() if count_router else set(topology.nodes[policy.router].all_addresses())
    me = set(topology.nodes[observer].all_addresses())
    found = Sighting()
    for seen in packets.decode(answer.captured):
        if seen.direction != "in":
            continue
        if seen.kind == "na":  # an advertisement names the address it answers for
            target = seen.nd_target()
            if inside(target) and target not in router_addresses:
                found.nd.add(target)
            continue
        if not inside(seen.src) or seen.src in router_addresses:
            continue
        if seen.kind == "arp-reply":
            found.arp.add(seen.src)
        elif seen.kind == "echo6-reply" and seen.dst in me:
            found.ping.add(seen.src)  # an answer to the echo to ff02::1 (or to a sweep's ping)
        elif seen.kind == "udp" and seen.dst in me \
                and int.from_bytes(seen.payload[:2], "big") in DISCOVERY_PORTS:
            found.discovery.add(seen.src)  # an mDNS or SSDP answer, to us
    found.ping |= {p.dst for p, o in zip(job.probes, answer.observations)
                   if inside(p.dst) and p.dst not in router_addresses and o.verdict == "open"}
    return found


async def discovery(lab, policy: Policy, timeout: float = 1.0):
    """Per (observer, hidden segment) what the observer found (None: hidden on IPv6 only, where
    no control is possible, so nothing was swept); plus per segment a control.

    The control is a node on the segment itself doing the same sweep: it must
    find its neighbours, or the sweep proves nothing.
    """
    topology = lab.topology
    plan = {n: {s: hidden_families(policy, n, s) for s in hidden_segments(policy, n)} for n in observers(policy)}
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
    for segment, node in controls.items():
        if not ipv6_answerers(policy, segment, node):  # nobody could show that an IPv6 sweep finds
            for segs in plan.values():                  # hosts there: judged on IPv4 only
                segs.get(segment, set()).discard(6)
    jobs = {}
    for node, segs in plan.items():
        jobs[node] = _sweep_job(lab, node, segs, topology.nodes[node].segments[0])
    for segment, node in controls.items():
        job = _sweep_job(lab, node, {segment: {4, 6}}, segment)
        if node in jobs:
            jobs[node].send += job.send
            jobs[node].probes += job.probes
        else:
            jobs[node] = job
    answers = await lab.run(jobs, timeout=timeout)
    results = {(node, segment): _sighting(lab, policy, node, jobs[node], answers[node], segment,
                                          families=families) if families else None
               for node, segs in plan.items() for segment, families in segs.items()}
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
            peers = [a for p in nodes if p != talker for a in (topology.nodes[p].address_on(segment),
                                                              topology.nodes[p].addresses6.get(segment)) if a]
            if not topology.nodes[talker].addresses6:
                peers = [a for a in peers if a.version == 4]
            out = [a for w in wan_nodes for a in topology.nodes[w].all_addresses()
                   if a.version == 4 or topology.nodes[talker].addresses6]
            jobs[talker].probes += [Probe("icmp", a) for a in peers + out]
            jobs[talker].probes += [Probe("tcp", a, 22) for a in peers] + [Probe("tcp", a, 80) for a in out]
    answers = await lab.run(jobs, timeout=timeout)
    seen_by = {}
    for segment, nodes in talkers.items():
        own = {a for n in nodes for a in (topology.nodes[n].address_on(segment),
                                          topology.nodes[n].addresses6.get(segment)) if a}
        per_listener = {}
        for listener in topology.nodes:
            if listener == policy.router or segment in topology.nodes[listener].addresses:
                continue
            if policy.zone_of(listener) == "wan" and segment not in policy.masquerade:
                continue  # without masquerade, wan hosts see inside addresses by design
            # a frame from the segment's hosts, or one to them that reached this listener; not
            # the listener's own frames to them (e.g. a SYN-ACK an earlier test's SYN still
            # draws, which the router drops as invalid): those show nothing of the segment.
            # IPv6 has no NAT: a wan host sees the inside address of what is sent to it itself
            mine6 = set(topology.nodes[listener].addresses6.values()) if policy.zone_of(listener) == "wan" else set()
            frames = [s for s in packets.decode(answers[listener].captured)
                      if s.src is not None and (s.src in own or (s.dst in own and s.direction == "in"))
                      and not (s.src.version == 6 and s.dst in mine6)]
            per_listener[listener] = frames
        control = [s for s in packets.decode(answers[policy.router].captured)
                   if s.iface == topology.nodes[policy.router].interfaces.get(segment) and s.src in own]
        seen_by[segment] = (per_listener, control)
    return seen_by


def _spoof_plan(policy: Policy, sender: str, version: int) -> list[tuple]:
    """[(sender, source, target node, target address, marker, genuine)] of one family: the
    genuine packet to a target the sender may reach in another zone, then one forged with
    an address of each other segment."""
    topology = policy.topology
    own = topology.nodes[sender]
    own_addresses = own.addresses if version == 4 else own.addresses6
    if not own_addresses:
        return []

    def on(node, segment):
        return (node.addresses if version == 4 else node.addresses6).get(segment)
    # a target in another zone: the packet crosses the router (in a lab with several
    # routers, e.g. the airplane's, transit routers may forward any source of theirs)
    targets = [(n, a) for n, node in topology.nodes.items() if n not in (sender, policy.router)
               and policy.zone_of(n) != policy.zone_of(sender)
               for s, a in (node.addresses if version == 4 else node.addresses6).items()
               if s not in own.addresses and policy.expect(policy.flow(sender, a, "udp/9999")).reached]
    if not targets:
        return []
    target, address = targets[0]
    plan = [(sender, own_addresses.get(own.segments[0], next(iter(own_addresses.values()))),
             target, address, secrets.token_hex(8), True)]
    for name, segment in topology.segments.items():
        if name in own.addresses or (version == 6 and segment.subnet6 is None):
            continue
        holders = [on(node, name) for n, node in topology.nodes.items()
                   if on(node, name) and n not in (policy.router, target)]
        subnet = segment.subnet if version == 4 else segment.subnet6
        forged = holders[0] if holders else subnet.network_address + 250
        plan.append((sender, forged, target, address, secrets.token_hex(8), False))
    return plan


async def spoofing(lab, policy: Policy, timeout: float = 1.0):
    """Forged-source packets from each node towards a target it may reach, on each family.

    Returns a list of (sender, source, target, target address, genuine, arrived): the
    genuine packets are the controls.
    """
    plan = [entry for sender in observers(policy) for version in (4, 6)
            for entry in _spoof_plan(policy, sender, version)]
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


async def rogue_routers(lab, policy: Policy, timeout: float = 1.0):
    """Each node with IPv6 plays a rogue router: a router advertisement and a DHCPv6 reply
    to every IPv6 host of each segment it may not reach, and the same to ff02::1 on its own
    link, while all of them capture.

    Returns [(sender, segment, {host: kinds that arrived})] for the hidden segments, and
    {sender: (own-link peer or the router, kinds it saw)} as controls (a capture on the
    sender's link sees what the sender sends there, or "none arrived" proves nothing)."""
    topology = lab.topology
    plan, jobs, peers = [], {}, {}
    for sender in observers(policy):
        me = topology.nodes[sender]
        home = next((s for s in me.segments if s in me.addresses6), None)
        hidden = [s for s in hidden_segments(policy, sender, 6) if topology.segments[s].subnet6]
        if home is None or not hidden:
            continue
        marker = f"labwarden-rogue-{secrets.token_hex(8)}".encode()
        job = jobs.setdefault(sender, NodeJob(capture_s=CAPTURE_S))
        link = (me.interfaces[home], lab.mac(sender, home))
        job.send += packets.rogue_router(me.addresses6[home], "ff02::1", marker, link)
        # the control: a neighbour on the sender's link, else the router (on every link)
        peer = next((n for n, node in topology.nodes.items() if home in node.addresses6
                     and n not in (sender, policy.router)), policy.router)
        peers[sender] = peer
        jobs.setdefault(peer, NodeJob()).capture_s = CAPTURE_S
        for segment in hidden:
            hosts = {n: node.addresses6[segment] for n, node in topology.nodes.items()
                     if segment in node.addresses6 and n != policy.router}
            for host, address in hosts.items():
                job.send += packets.rogue_router(me.addresses6[home], address, marker)
                jobs.setdefault(host, NodeJob()).capture_s = CAPTURE_S
            plan.append((sender, segment, list(hosts), marker))
    if not plan:
        return [], {}
    answers = await lab.run(jobs, timeout=timeout)

    def kinds(node, marker):
        return sorted({"router advertisement" if s.kind == "ra" else "DHCPv6 reply"
                       for s in packets.decode(answers[node].captured) if s.direction == "in"
                       and (s.kind == "ra" or (s.kind == "udp" and s.payload[:2] == b"\x02\x23"))
                       and marker in s.payload})
    results = [(sender, segment, {h: kinds(h, marker) for h in hosts}) for sender, segment, hosts, marker in plan]
    controls = {sender: (peers[sender], kinds(peers[sender], marker)) for sender, _, _, marker in plan}
    return results, controls
