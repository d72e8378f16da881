"""Learning a policy from a lab: what `labwarden learn` probes and how it writes down what it saw.

The full matrix (labwarden.checks.matrix) is probed; every flow that crosses the router and
got an answer from the node it was sent to (open, or closed: that host itself refused,
so the router let it through) is *reached*. Flows from the outside zone that answered are
then located (labwarden.checks.landing): one that lands on another node or port than it
was sent to is a port-forward, not an allow. What was reached is grouped by zone pair:
a pair where every probed service answered is `ports: any`, else the list of services.
To the router, only `open` counts (a reject is sent in the router's name and reads as a
closed port) unless denied flows are dropped (then `closed` is an answer too).

`learned()` is pure: observations in, a Learned value out; `learned_text()` renders it in
policy.yaml's format. Structure the matrix cannot observe (zones, the public address,
masquerade, hairpin, anti-spoofing, the router's SYN limit) is copied from the lab's
policy and marked as copied.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from labwarden.checks.landing import locate
from labwarden.checks.matrix import matrix_flows, observe
from labwarden.declared.policy import ROUTER_ZONE, Flow, Policy, Service
from labwarden.probe import Observation

REACHED = ("open", "closed")


@dataclass(frozen=True)
class LearnedForward:
    public: Service
    to: str
    port: int
    daddr: str           # public | any
    evidence: Flow


@dataclass
class Learned:
    blocked: str
    services: dict[str, set[Service]]
    allows: dict[tuple[str, str], set[Service]]        # (from zone, to zone) -> services; empty: any
    evidence: dict[tuple[str, str], list[Flow]]
    forwards: list[LearnedForward]
    uneven: dict[tuple[str, str], set[Service]]        # reached for some nodes of the pair, not all
    errors: list[Flow] = field(default_factory=list)

    def any(self, pair) -> bool:
        return not self.allows[pair]


def _zone(policy: Policy, node: str) -> str:
    return ROUTER_ZONE if node == policy.router else policy.zone_of(node)


def _reached(policy: Policy, flow: Flow, seen: Observation, blocked: str) -> bool:
    if seen.verdict not in REACHED or flow.dst_node is None:
        return False
    if flow.dst_node == policy.router:
        return seen.verdict == "open" or (blocked == "drop" and flow.proto != "icmp")
    return seen.by is None or seen.by == flow.dst  # answered by the host it was sent to


def learned(policy: Policy, observed: dict[Flow, Observation],
            landed: dict[Flow, tuple] | None = None) -> Learned:
    """The smallest allow-list under which `observed` is what the oracle expects.
    landed: where answered flows from the outside zone landed ((node, port), ...)."""
    topology, landed = policy.topology, landed or {}
    crossing = {f: o for f, o in observed.items()  # what the router decides: its own input too
                if f.dst_node is not None and (f.dst_node == policy.router or not topology.on_link(f.src, f.dst))}
    blocked = "reject" if any(o.verdict == "rejected" for o in crossing.values()) else "drop"
    moved = {f for f, lands in landed.items() if any(n != f.dst_node or p != f.port for n, p in lands)}
    services: dict[str, set[Service]] = {}
    tunnelled = {(t.edge, t.public) for t in policy.tunnels}  # copied tunnels (IPv4 only): not services
    for flow, seen in observed.items():
        if seen.verdict == "open" and flow.dst_node is not None and seen.by in (None, flow.dst) \
                and flow.proto != "icmp" and flow not in moved and (flow.dst_node, flow.service) not in tunnelled:
            services.setdefault(flow.dst_node, set()).add(flow.service)
    forwards: dict[Service, LearnedForward] = {}
    for flow, lands in landed.items():
        moved = [(n, p) for n, p in lands if n != flow.dst_node or p != flow.port]
        if not moved:
            continue
        node, port = moved[0]
        daddr = "any" if flow.dst != policy.public else "public"
        old = forwards.get(flow.service)
        if old is None or (daddr == "any" and old.daddr == "public"):
            forwards[flow.service] = LearnedForward(flow.service, node, port, daddr, flow)
    tried: dict[tuple[str, str], dict[Service, list[bool]]] = {}
    evidence: dict[tuple[str, str], list[Flow]] = {}
    errors = []
    for flow, seen in crossing.items():
        if seen.verdict == "error":
            errors.append(flow)
            continue
        if flow.service in forwards and _zone(policy, flow.src) == policy.outside:
            continue  # the forward decides these, whatever the address
        pair = (_zone(policy, flow.src), _zone(policy, flow.dst_node))
        hit = _reached(policy, flow, seen, blocked)
        tried.setdefault(pair, {}).setdefault(flow.service, []).append(hit)
        if hit:
            evidence.setdefault(pair, []).append(flow)
    allows: dict[tuple[str, str], set[Service]] = {}
    uneven: dict[tuple[str, str], set[Service]] = {}
    for pair, per_service in tried.items():
        hits = {s for s, results in per_service.items() if any(results)}
        if not hits:
            continue
        uneven_here = {s for s, results in per_service.items() if any(results) and not all(results)}
        if uneven_here:
            uneven[pair] = uneven_here
        everything = pair[1] != ROUTER_ZONE and hits == set(per_service)
        allows[pair] = set() if everything else hits
    return Learned(blocked, services, allows, evidence, sorted(forwards.values(), key=lambda f: str(f.public)),
                   uneven, errors)


def _ports(services) -> str:
    return "[" + ", ".join(map(str, sorted(services, key=lambda s: (s.proto, s.port or 0)))) + "]"


def summary(policy: Policy, learn: Learned) -> list[str]:
    """What was found, one line each, asking about what the lab's own policy does not allow."""
    lines = []
    for (src, dst), services in sorted(learn.allows.items()):
        flows = learn.evidence[(src, dst)]
        extra = [f for f in flows if policy.expect(f).reached is None]
        what = "every probed port" if not services else ", ".join(map(str, sorted(services, key=str)))
        line = f"{src} → {dst}: {what} {'answers' if dst == ROUTER_ZONE else 'open'}"
        if extra:
            shown = sorted({str(f.service) for f in extra})
            line += (f"; policy.yaml denies {', '.join(shown)} (e.g. {extra[0].label(policy)})"
                     " — is that intended?")
        lines.append(line)
    for fwd in learn.forwards:
        lines.append(f"{policy.outside} → router {fwd.public} is forwarded to {policy.label(fwd.to)} "
                     f"port {fwd.port} (daddr {fwd.daddr})")
    for (src, dst), services in sorted(learn.uneven.items()):
        lines.append(f"{src} → {dst}: {', '.join(map(str, sorted(services, key=str)))} reaches some nodes of "
                     f"{dst} but not others: a zone-wide allow cannot say that (REVIEW)")
    if learn.errors:
        lines.append(f"{len(learn.errors)} probes could not be judged (error), e.g. {learn.errors[0].label(policy)}")
    return lines


def learned_text(policy: Policy, learn: Learned, origin: str) -> str:
    out = [f"# Learned by `labwarden learn` from {origin}: the smallest policy under which",
           "# every flow the matrix probed answers as it did. Read it as a question, not an answer:",
           "# each allow says what was seen, and the summary at the end asks about what",
           f"# {policy.file.name} did not allow. Copied (not observed) lines say so.", "",
           f"router: {policy.router}", "zones:                        # copied"]
    out += [f"  {z}: [{', '.join(segs)}]" for z, segs in policy.zones.items()]
    out += ["", f"blocked: {learn.blocked}               # denied flows were "
            f"{'refused (ICMP error or reset)' if learn.blocked == 'reject' else 'silent'}", "",
            "services:                     # ports that answered open"]
    out += [f"  {n}: {_ports(s)}" for n, s in learn.services.items() if s]
    out += ["", "allow:"]
    for pair, services in sorted(learn.allows.items()):
        example = learn.evidence[pair][0]
        out.append(f"  # seen: {len(learn.evidence[pair])} flows, e.g. {example.label(policy)}")
        ports = "any" if learn.any(pair) else _ports(services)
        out.append(f"  - {{name: learned {pair[0]}->{pair[1]}, from: {pair[0]}, to: {pair[1]}, ports: {ports}}}")
    if not learn.allows:
        out.append("  []")
    if learn.forwards:
        out += ["", "forwards:"]
        for i, fwd in enumerate(learn.forwards):
            out.append(f"  # seen: {fwd.evidence.label(policy)} landed on {fwd.to} port {fwd.port}")
            out.append(f"  - {{name: learned forward {i + 1}, public: {fwd.public}, to: {fwd.to}, "
                       f"port: {fwd.port}, daddr: {fwd.daddr}}}")
    out.append("")
    if policy.public is not None:
        out.append(f"public: {policy.public}        # copied")
    if policy.masquerade:
        out.append(f"masquerade: [{', '.join(policy.masquerade)}]   # copied: learn does not probe NAT")
    out.append(f"hairpin: {str(policy.hairpin).lower()}   # copied")
    out.append(f"antispoof: {str(policy.antispoof).lower()}   # copied: learn does not forge packets")
    if policy.syn_limit is not None:
        out.append(f"syn_limit: {{rate: {policy.syn_limit.rate:g}, burst: {policy.syn_limit.burst}}}   # copied")
    if policy.nd_blocked:
        out.append(f"nd_blocked: [{', '.join(sorted(policy.nd_blocked))}]   # copied: learn cannot tell a "
                   "router that refuses neighbour discovery from one that filters every IPv6 flow")
    if policy.tunnels:  # an edge's tunnel port answers as a service would, on IPv4 only
        out.append("tunnels:   # copied: learn cannot tell a tunnel's public port from a service")
        for t in policy.tunnels:
            page = f", page: {os.path.relpath(t.page, policy.topology.path)}" if t.page else ""
            host = f", host: {t.host}" if t.host else ""
            out.append(f"  - {{name: {t.name}, client: {t.client}, local: {t.local}, edge: {t.edge}, "
                       f"public: {t.public}{page}{host}}}")
    out += ["", "# What learn found:"] + [f"#   {line}" for line in summary(policy, learn)]
    return "\n".join(out) + "\n"


async def probe_lab(lab, policy: Policy, timeout: float = 1.0):
    """Observe the full matrix, then locate the outside zone's answered flows (one source node)."""
    flows = matrix_flows(policy)
    observed = await observe(lab, flows, timeout)
    unjudged = [f for f, o in observed.items() if o.verdict == "error"]  # a sniffer behind under load
    if unjudged:
        observed.update(await observe(lab, unjudged, timeout))
    outside = [n for n in policy.topology.nodes if n != policy.router and policy.zone_of(n) == policy.outside]
    landed: dict[Flow, tuple] = {}
    if outside:
        src = outside[0]
        answered = [f for f, o in observed.items() if f.src == src and f.proto in ("tcp", "udp")
                    and o.verdict in REACHED and f.dst_node is not None
                    and (f.dst_node == policy.router or not policy.topology.on_link(src, f.dst))]
        if answered:
            landings = await locate(lab, policy, src, answered, timeout)
            landed = {f: landing.landed for f, landing in landings.items()}
            landed.update({f2: landed[f] for f in answered for f2 in observed
                           if f2.src != src and f2.src in outside and (f2.dst, f2.service) == (f.dst, f.service)})
    return observed, landed

