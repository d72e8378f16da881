"""Rule fuzzing: random router rulesets and the flows that probe them; the kernel against the model.

A ruleset is drawn from the grammar of `labwarden.routers.nftables.model` (which is also its
meaning: `predict` evaluates it), with the router's real interface names, the
lab's prefixes and ports, so that rules actually meet the probes. On a dual-stack
lab (the World has IPv6 addresses) a ruleset is dual-stack: its chains sit in `inet`,
`ip` and `ip6` tables, its rules name `ip` or `ip6` prefixes, `meta nfproto`, ICMPv6
types and rejects, and the flows aim at IPv6 addresses too; every input chain that
sees IPv6 first accepts neighbour discovery (without it the router cannot answer or
forward anything on IPv6, which the model does not describe). Port
constants stay outside the ephemeral range the probes send from (see
`model.EPHEMERAL`), so the model can judge replies without knowing the
source port a probe picked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_network

from hypothesis import strategies as st

from labwarden.realise.lab import run_sync
from labwarden.routers.nftables import KIND as NFTABLES
from labwarden.routers.nftables.model import (CT_STATES, EPHEMERAL, REJECT6_CODES, REJECT_CODES, REJECTX_CODES, Chain,
                                              Match, NamedSet, Rule, Ruleset, outside_ephemeral, port_constants)
from labwarden.routers.nftables.verdicts import Prediction, World, predict
from labwarden.probe import NodeJob, Probe

ICMP_TYPE_NAMES = ("echo-request", "echo-reply", "destination-unreachable")
# the first rule of every input chain that sees IPv6: the router's neighbour discovery
NEIGHBOUR_DISCOVERY = Rule((Match("icmp_type", ("nd-neighbor-solicit", "nd-neighbor-advert"), proto="icmpv6"),),
                           "accept")
MAX_SUB_CHAINS = 3
MAX_RULES = 6
FLOWS_PER_RULESET = 24
RULESETS_PER_EXAMPLE = 4      # loaded one after the other in one agent call


# ---------------------------------------------------------------- values

def _merge_ranges(ranges) -> tuple:
    """Disjoint, non-adjacent intervals (nft refuses overlapping ones in a set)."""
    merged: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return tuple((lo, hi) for lo, hi in merged if outside_ephemeral(lo, hi))


def _merge_networks(networks) -> tuple:
    """No element inside another (nft refuses overlapping intervals in a set)."""
    kept = []
    for net in sorted(set(networks), key=lambda n: (n.prefixlen, n)):
        if not any(net.subnet_of(k) for k in kept):
            kept.append(net)
    return tuple(sorted(kept))


def lab_ports(world: World) -> list[int]:
    ports = {port for _, proto, port in world.listening if port}
    ports |= {p + d for p in ports for d in (-1, 1)}
    return sorted(p for p in ports if 1 <= p <= 65535 and outside_ephemeral(p, p))


def ports(world: World) -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(lab_ports(world)), st.integers(1, EPHEMERAL.start - 1),
                     st.integers(EPHEMERAL.stop, 65535))


def port_ranges(world: World) -> st.SearchStrategy[tuple[int, int]]:
    single = ports(world).map(lambda p: (p, p))
    low = st.tuples(st.integers(1, EPHEMERAL.start - 1), st.integers(0, 2000))
    span = low.map(lambda t: (t[0], min(t[0] + t[1], EPHEMERAL.start - 1)))
    return st.one_of(single, single, span)


def dual_stack(world: World) -> bool:
    return bool(world.node_addresses6)


def networks(world: World, version: int = 4) -> st.SearchStrategy[IPv4Network | IPv6Network]:
    """The lab's prefixes and addresses of one IP version, and cuts of them."""
    held = world.node_addresses if version == 4 else (world.node_addresses6 or {})
    subnets = world.subnets if version == 4 else (world.subnets6 or {})
    addresses = sorted({*held.values(), *(a for a in world.router_addresses if a.version == version)})
    fixed = sorted(set(subnets.values()) | {ip_network(a) for a in addresses}, key=str)
    shortest = 8 if version == 4 else 32
    cut = st.tuples(st.sampled_from(addresses), st.integers(shortest, 32 if version == 4 else 128)).map(
        lambda t: ip_network(f"{t[0]}/{t[1]}", strict=False))
    return st.one_of(st.sampled_from(fixed), cut)


# ---------------------------------------------------------------- rules

@st.composite
def named_sets(draw, world: World) -> tuple[NamedSet, ...]:
    sets = []
    for version, name, kind in ((4, "addrs", "ipv4_addr"), (6, "addrs6", "ipv6_addr")):
        if (version == 4 or dual_stack(world)) and draw(st.booleans()):
            sets.append(NamedSet(name, kind, _merge_networks(
                draw(st.lists(networks(world, version), min_size=1, max_size=4)))))
    if draw(st.booleans()):
        elements = _merge_ranges(draw(st.lists(port_ranges(world), min_size=1, max_size=4)))
        if elements:
            sets.append(NamedSet("ports", "inet_service", elements))
    return tuple(sets)


@st.composite
def matches(draw, world: World, sets: tuple[NamedSet, ...], version: int | None = 4) -> tuple[Match, ...]:
    """Up to three matches, at most one of them about the protocol (nft refuses
    `udp dport 53 tcp dport 22`: conflicting protocols). version: the IP version the
    rule's network matches are about (4 in an `ip` table, 6 in an `ip6` table, any in
    `inet`: nft refuses `ip saddr X ip6 daddr Y`); None: none of them, `meta nfproto` may."""
    ifaces = sorted(set(world.router_ifaces.values())) + ["lo"]
    by_kind = {s.kind: s for s in sets}
    kinds = ["iface", "addr", "proto", "ct"] if version else ["iface", "nfproto", "proto", "ct"]
    kinds = draw(st.lists(st.sampled_from(kinds), max_size=3))
    if kinds.count("proto") > 1:
        kinds = [k for k in kinds if k != "proto"] + ["proto"]
    header = "ip6" if version == 6 else "ip"
    out = []
    for kind in kinds:
        negate = draw(st.booleans())
        if kind == "iface":
            key = draw(st.sampled_from(["iifname", "oifname"]))
            names = draw(st.lists(st.sampled_from(ifaces), min_size=1, max_size=3, unique=True))
            out.append(Match(key, tuple(sorted(names)), negate))
        elif kind == "nfproto":
            families = draw(st.lists(st.sampled_from(["ipv4", "ipv6"]), min_size=1, max_size=2, unique=True))
            out.append(Match("nfproto", tuple(sorted(families)), negate))
        elif kind == "addr":
            key = draw(st.sampled_from(["saddr", "daddr"]))
            named = by_kind.get("ipv6_addr" if version == 6 else "ipv4_addr")
            if named and draw(st.booleans()):
                out.append(Match(key, named.elements, negate, header, set_name=named.name))
            else:
                nets = _merge_networks(draw(st.lists(networks(world, version), min_size=1, max_size=3)))
                out.append(Match(key, nets, negate, header))
        elif kind == "ct":
            states = draw(st.lists(st.sampled_from(CT_STATES), min_size=1, max_size=3, unique=True))
            out.append(Match("ct_state", tuple(s for s in CT_STATES if s in states), negate))
        else:
            out.append(draw(_proto_match(world, by_kind, version, negate)))
    return tuple(m for m in out if m is not None)


@st.composite
def _proto_match(draw, world: World, by_kind: dict, version: int | None, negate: bool) -> Match | None:
    what = draw(st.sampled_from(["l4proto", "dport", "dport", "icmp_type"]))
    dual = dual_stack(world)
    if what == "l4proto":
        protos = draw(st.lists(st.sampled_from(["tcp", "udp", "icmp"] + (["ipv6-icmp"] if dual else [])),
                               min_size=1, max_size=2, unique=True))
        spellings = ["meta"] + {4: ["ip"], 6: ["ip6"]}.get(version, [])
        return Match("l4proto", tuple(sorted(protos)), negate, draw(st.sampled_from(spellings)))
    if what == "icmp_type":
        icmpv6 = version == 6 or (version is None and dual and draw(st.booleans()))
        types = draw(st.lists(st.sampled_from(ICMP_TYPE_NAMES), min_size=1, max_size=2, unique=True))
        return Match("icmp_type", tuple(types), negate, "icmpv6" if icmpv6 else "icmp")
    header = draw(st.sampled_from(["tcp", "udp", "th"]))
    if "inet_service" in by_kind and draw(st.booleans()):
        named = by_kind["inet_service"]
        return Match("dport", named.elements, negate, header, set_name=named.name)
    ranges = _merge_ranges(draw(st.lists(port_ranges(world), min_size=1, max_size=3)))
    return Match("dport", ranges, negate, header) if ranges else None


def _is_tcp(rule_matches: tuple[Match, ...]) -> bool:
    return any((m.key == "dport" and m.proto == "tcp")
               or (m.key == "l4proto" and m.values == ("tcp",) and not m.negate) for m in rule_matches)


def reject_kinds(family: str, version: int | None, found: tuple[Match, ...]) -> list[str | None]:
    """What a reject may answer with in a table of that family, in a rule about that IP version
    (nft refuses `icmpx` outside inet, `icmp` in ip6, `icmpv6` in ip, and a kind of the other
    family than the rule's matches)."""
    version = version or next((m.family() for m in found if m.family()), None)  # an icmpv6 type
    icmp4 = [f"icmp {name}" for name in sorted(REJECT_CODES)]
    icmp6 = [f"icmpv6 {name}" for name in sorted(REJECT6_CODES)]
    icmpx = [f"icmpx {name}" for name in sorted(REJECTX_CODES)]
    kinds: list[str | None] = [None]
    if family == "ip":
        kinds += icmp4
    elif family == "ip6":
        kinds += icmp6
    else:
        nfproto = any(m.key == "nfproto" for m in found)
        kinds += icmpx + ([] if nfproto or version == 6 else icmp4) + ([] if nfproto or version == 4 else icmp6)
    return kinds + (["tcp reset"] if _is_tcp(found) else [])


@st.composite
def rules(draw, world: World, sets, targets: list[str], regular: bool, least: int = 0,
          family: str = "inet") -> tuple[Rule, ...]:
    out = []
    for _ in range(draw(st.integers(least, MAX_RULES))):
        if family == "inet":
            version = draw(st.sampled_from([4, 6, None])) if dual_stack(world) else 4
        else:
            version = 6 if family == "ip6" else 4
        found = draw(matches(world, sets, version))
        verdicts = ["accept", "accept", "drop", "drop", "reject", "continue"]
        verdicts += ["jump", "goto"] if targets else []
        verdicts += ["return"] if regular else []
        verdict = draw(st.sampled_from(verdicts))
        arg = None
        if verdict == "reject":
            arg = draw(st.sampled_from(reject_kinds(family, version, found)))
        elif verdict in ("jump", "goto"):
            arg = draw(st.sampled_from(targets))
        out.append(Rule(found, verdict, arg, counter=draw(st.booleans())))
    return tuple(out)


@st.composite
def rulesets(draw, world: World) -> Ruleset:
    """A router ruleset: input and forward base chains (sometimes a second base chain on a
    hook, after the first), regular chains reached by jump/goto (forward only: no loops;
    within their table), named sets. Dual-stack: each chain in a table of a family drawn."""
    sets = draw(named_sets(world))
    families = st.sampled_from(["inet", "inet", "ip", "ip6"] if dual_stack(world) else ["inet", "inet", "ip"])
    subs: list[Chain] = []
    for i in reversed(range(draw(st.integers(0, MAX_SUB_CHAINS)))):
        family = draw(families)
        targets = [c.name for c in subs if c.family == family]
        subs.insert(0, Chain(f"c{i}", draw(rules(world, sets, targets, True, 0, family)), family=family))
    policy = st.sampled_from(["accept", "drop"])

    def base(name, hook, priority, least):
        family = draw(families)
        found = draw(rules(world, sets, [c.name for c in subs if c.family == family], False, least, family))
        if hook == "input" and family != "ip" and dual_stack(world):
            found = (NEIGHBOUR_DISCOVERY, *found)
        return Chain(name, found, hook, priority, draw(policy), family)

    # at least one rule on each hook: fewer rulesets that are only their policies (and alike)
    bases = [base("input", "input", 0, 1), base("forward", "forward", 0, 1)]
    if draw(st.integers(0, 3)) == 0:
        bases.append(base("forward_late", "forward", 10, 0))
    if dual_stack(world) and draw(st.integers(0, 3)) == 0:
        bases.append(base("input_late", "input", 10, 0))
    used = {m.set_name for c in bases + subs for r in c.rules for m in r.matches if m.set_name}
    return Ruleset(tuple(bases + subs), tuple(s for s in sets if s.name in used))


# ---------------------------------------------------------------- flows

def destinations(world: World, src: str) -> list:
    """Addresses a probe from src reaches through the router: the router's, nodes on its other
    side, and, from a segment of the router, the broadcast addresses of its other segments,
    which the kernel treats apart (`verdicts.kernel_silence`).

    Not the network addresses (nor any other address nobody holds): forwarded, they meet a
    failed ARP, whose host-unreachable comes seconds later, in time for another probe or
    not: rule fuzzing found the kernel saying `rejected` where the model said `filtered`."""
    side = world.segment_of(world.node_addresses[src])
    beyond = {a for a in world.node_addresses.values() if world.segment_of(a) != side}
    edges = set()
    if world.node_segments[src] in world.router_ifaces:
        edges = {world.subnets[s].broadcast_address for s in world.router_ifaces if s != side}
    own = {a for a in world.router_addresses if a.version == 4}
    out = sorted(beyond | own) + sorted(edges)
    if src in (world.node_addresses6 or {}):  # and IPv6 (no broadcast there)
        own6 = {a for a in world.router_addresses if a.version == 6}
        out += sorted({a for a in world.node_addresses6.values() if world.segment_of(a) != side} | own6)
    return out


@st.composite
def probe_flows(draw, world: World, ruleset: Ruleset):
    """Flows (src, dst, proto, port) aimed at the ruleset's ports and their neighbours."""
    named = port_constants(ruleset)
    near = {p + d for p in named for d in (-1, 0, 1)} | set(lab_ports(world))
    candidates = sorted(p for p in near if 1 <= p <= 65535)
    src = draw(st.sampled_from(sorted(world.node_addresses)))
    dst = draw(st.sampled_from(destinations(world, src)))
    proto = draw(st.sampled_from(["tcp", "udp", "icmp"]))
    port = None if proto == "icmp" else draw(st.sampled_from(candidates))
    return (src, dst, proto, port)


# ---------------------------------------------------------------- kernel against model


SILENT = "filtered"


@dataclass(frozen=True)
class Difference:
    ruleset: Ruleset
    flow: tuple
    kernel: str
    detail: str
    model: Prediction
    flaky: tuple | None = None    # (verdict, detail) re-probed alone, when that agreed with the model

    def message(self) -> str:
        src, dst, proto, port = self.flow
        what = proto if port is None else f"{proto}/{port}"
        said = f"the kernel says {self.kernel} ({self.detail})"
        if self.flaky:
            said = (f"FLAKY: the kernel said {self.kernel} ({self.detail}) with the other flows, but "
                    f"{self.flaky[0]} ({self.flaky[1]}) probed alone")
        return (f"{src} -> {dst} {what}: {said}, the model says {self.model.explain()}\n"
                f"ruleset:\n{self.ruleset.render()}")


@dataclass
class RuleChecker:
    """Loads rulesets into the lab's router and probes flows through each: several rulesets
    in one agent call (`Lab.run_rounds`), each after an emptied conntrack table."""
    lab: object
    policy: object
    world: World
    timeout: float = 0.3
    confirm_timeout: float = 1.0
    loss_retries: int = 0         # more probes of a silence, on a lab with lossy links
    rulesets: int = 0
    flows: int = 0
    seconds: float = 0.0
    seen: dict = field(default_factory=dict)

    def observe(self, cases: list[tuple[Ruleset, list[tuple]]], timeout: float) -> dict:
        """{(ruleset, flow): (verdict, detail)} for every case's flows."""
        rounds = []
        for ruleset, flows in cases:
            # no connection state from the ruleset before: each ruleset is judged on its own
            jobs = {self.policy.router: NodeJob(setup={**NFTABLES.load(ruleset.render()), "flush_conntrack": True})}
            for src, dst, proto, port in flows:
                jobs.setdefault(src, NodeJob()).probes.append(Probe(proto, dst, port))
            rounds.append(jobs)
        started = time.monotonic()
        answers = run_sync(self.lab.run_rounds(rounds, timeout=timeout))
        self.seconds += time.monotonic() - started
        self.rulesets += len(cases)
        out = {}
        for (ruleset, flows), answer in zip(cases, answers):
            self.flows += len(flows)
            index = {}
            for flow in flows:
                i = index[flow[0]] = index.get(flow[0], -1) + 1
                obs = answer[flow[0]].observations[i]
                out[(ruleset, flow)] = (obs.verdict, obs.detail)
        return out

    def check(self, cases: list[tuple[Ruleset, list[tuple]]]) -> list[Difference]:
        """The differences between kernel and model over every (ruleset, flows) case; a
        flow on which they differ is probed again, alone with its ruleset and the full
        timeout, before it counts. A silence that then agrees was a wait too short (or a
        lost packet) and passes; an answer that then agrees is a flaky difference, never
        a pass."""
        cases = [(ruleset, list(dict.fromkeys(flows))) for ruleset, flows in cases]
        new = [(r, [f for f in flows if (r, f) not in self.seen]) for r, flows in cases]
        new = [(r, fs) for r, fs in new if fs]
        first = self.observe(new, self.timeout) if new else {}
        model = {(r, f): predict(r, self.world, *f) for r, flows in cases for f in flows}
        doubtful = [key for key, seen in first.items() if seen[0] != model[key].verdict]
        alone = self.observe([(r, [f]) for r, f in doubtful], self.confirm_timeout) if doubtful else {}
        for _ in range(self.loss_retries):
            lost = [key for key, seen in alone.items() if seen[0] == SILENT != model[key].verdict]
            if not lost:
                break
            again = self.observe([(r, [f]) for r, f in lost], self.confirm_timeout)
            alone.update({key: seen for key, seen in again.items() if seen[0] != SILENT})
        for key, seen in first.items():
            if key not in alone:
                self.seen[key] = Difference(*key, *seen, model[key]) if seen[0] != model[key].verdict else None
            elif alone[key][0] != model[key].verdict:
                self.seen[key] = Difference(*key, *alone[key], model[key])
            elif seen[0] != SILENT:
                self.seen[key] = Difference(*key, *seen, model[key], flaky=alone[key])
            else:
                self.seen[key] = None
        return [self.seen[(r, f)] for r, flows in cases for f in flows if self.seen[(r, f)]]

    def rate(self) -> str:
        per_s = self.rulesets / self.seconds if self.seconds else 0.0
        return (f"{self.rulesets} rulesets loaded and probed ({self.flows} flows) in {self.seconds:.1f} s: "
                f"{per_s:.1f} rulesets/s")
