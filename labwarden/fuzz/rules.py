"""Rule fuzzing: random router rulesets and the flows that probe them; the kernel against the model.

A ruleset is drawn from the grammar of `labwarden.routers.nftables.model` (which is also its
meaning: `predict` evaluates it), with the router's real interface names, the
lab's prefixes and ports, so that rules actually meet the probes. Port
constants stay outside the ephemeral range the probes send from (see
`nft_model.EPHEMERAL`), so the model can judge replies without knowing the
source port a probe picked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from hypothesis import strategies as st

from labwarden.realise.lab import run_sync
from labwarden.routers.nftables import KIND as NFTABLES
from labwarden.routers.nftables.model import (CT_STATES, EPHEMERAL, REJECT_CODES, Chain, Match, NamedSet, Prediction, Rule, Ruleset,
                        World, outside_ephemeral, port_constants, predict)
from labwarden.probe import NodeJob, Probe

ICMP_TYPE_NAMES = ("echo-request", "echo-reply", "destination-unreachable")
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


def networks(world: World) -> st.SearchStrategy[IPv4Network]:
    fixed = sorted(set(world.subnets.values())
                   | {IPv4Network(a) for a in world.node_addresses.values()}
                   | {IPv4Network(a) for a in world.router_addresses}, key=str)
    addresses = sorted([*world.node_addresses.values(), *world.router_addresses])
    cut = st.tuples(st.sampled_from(addresses), st.integers(8, 32)).map(
        lambda t: IPv4Network(f"{t[0]}/{t[1]}", strict=False))
    return st.one_of(st.sampled_from(fixed), cut)


# ---------------------------------------------------------------- rules

@st.composite
def named_sets(draw, world: World) -> tuple[NamedSet, ...]:
    sets = []
    if draw(st.booleans()):
        sets.append(NamedSet("addrs", "ipv4_addr",
                             _merge_networks(draw(st.lists(networks(world), min_size=1, max_size=4)))))
    if draw(st.booleans()):
        elements = _merge_ranges(draw(st.lists(port_ranges(world), min_size=1, max_size=4)))
        if elements:
            sets.append(NamedSet("ports", "inet_service", elements))
    return tuple(sets)


@st.composite
def matches(draw, world: World, sets: tuple[NamedSet, ...]) -> tuple[Match, ...]:
    """Up to three matches, at most one of them about the protocol (nft refuses
    `udp dport 53 tcp dport 22`: conflicting protocols)."""
    ifaces = sorted(set(world.router_ifaces.values())) + ["lo"]
    by_kind = {s.kind: s for s in sets}
    kinds = draw(st.lists(st.sampled_from(["iface", "addr", "proto", "ct"]), max_size=3))
    if kinds.count("proto") > 1:
        kinds = [k for k in kinds if k != "proto"] + ["proto"]
    out = []
    for kind in kinds:
        negate = draw(st.booleans())
        if kind == "iface":
            key = draw(st.sampled_from(["iifname", "oifname"]))
            names = draw(st.lists(st.sampled_from(ifaces), min_size=1, max_size=3, unique=True))
            out.append(Match(key, tuple(sorted(names)), negate))
        elif kind == "addr":
            key = draw(st.sampled_from(["saddr", "daddr"]))
            if "ipv4_addr" in by_kind and draw(st.booleans()):
                named = by_kind["ipv4_addr"]
                out.append(Match(key, named.elements, negate, set_name=named.name))
            else:
                nets = _merge_networks(draw(st.lists(networks(world), min_size=1, max_size=3)))
                out.append(Match(key, nets, negate))
        elif kind == "ct":
            states = draw(st.lists(st.sampled_from(CT_STATES), min_size=1, max_size=3, unique=True))
            out.append(Match("ct_state", tuple(s for s in CT_STATES if s in states), negate))
        else:
            what = draw(st.sampled_from(["l4proto", "dport", "dport", "icmp_type"]))
            if what == "l4proto":
                protos = draw(st.lists(st.sampled_from(["tcp", "udp", "icmp"]), min_size=1, max_size=2,
                                       unique=True))
                spelling = draw(st.sampled_from(["meta", "ip"]))
                out.append(Match("l4proto", tuple(sorted(protos)), negate, spelling))
            elif what == "icmp_type":
                types = draw(st.lists(st.sampled_from(ICMP_TYPE_NAMES), min_size=1, max_size=2, unique=True))
                out.append(Match("icmp_type", tuple(types), negate))
            else:
                header = draw(st.sampled_from(["tcp", "udp", "th"]))
                if "inet_service" in by_kind and draw(st.booleans()):
                    named = by_kind["inet_service"]
                    out.append(Match("dport", named.elements, negate, header, set_name=named.name))
                else:
                    ranges = _merge_ranges(draw(st.lists(port_ranges(world), min_size=1, max_size=3)))
                    if ranges:
                        out.append(Match("dport", ranges, negate, header))
    return tuple(out)


def _is_tcp(rule_matches: tuple[Match, ...]) -> bool:
    return any((m.key == "dport" and m.proto == "tcp")
               or (m.key == "l4proto" and m.values == ("tcp",) and not m.negate) for m in rule_matches)


@st.composite
def rules(draw, world: World, sets, targets: list[str], regular: bool, least: int = 0) -> tuple[Rule, ...]:
    out = []
    for _ in range(draw(st.integers(least, MAX_RULES))):
        found = draw(matches(world, sets))
        verdicts = ["accept", "accept", "drop", "drop", "reject", "continue"]
        verdicts += ["jump", "goto"] if targets else []
        verdicts += ["return"] if regular else []
        verdict = draw(st.sampled_from(verdicts))
        arg = None
        if verdict == "reject":
            kinds = [None] + [f"icmp {name}" for name in sorted(REJECT_CODES)]
            kinds += ["tcp reset"] if _is_tcp(found) else []
            arg = draw(st.sampled_from(kinds))
        elif verdict in ("jump", "goto"):
            arg = draw(st.sampled_from(targets))
        out.append(Rule(found, verdict, arg, counter=draw(st.booleans())))
    return tuple(out)


@st.composite
def rulesets(draw, world: World) -> Ruleset:
    """A router ruleset: input and forward base chains (sometimes a second forward base
    chain after the first), regular chains reached by jump/goto (forward only: no loops),
    named sets."""
    sets = draw(named_sets(world))
    subs: list[Chain] = []
    for i in reversed(range(draw(st.integers(0, MAX_SUB_CHAINS)))):
        targets = [c.name for c in subs]
        subs.insert(0, Chain(f"c{i}", draw(rules(world, sets, targets, regular=True))))
    names = [c.name for c in subs]
    policy = st.sampled_from(["accept", "drop"])
    # at least one rule on each hook: fewer rulesets that are only their policies (and alike)
    bases = [Chain("input", draw(rules(world, sets, names, False, 1)), "input", 0, draw(policy)),
             Chain("forward", draw(rules(world, sets, names, False, 1)), "forward", 0, draw(policy))]
    if draw(st.integers(0, 3)) == 0:
        bases.append(Chain("forward_late", draw(rules(world, sets, names, False)), "forward", 10,
                           draw(policy)))
    used = {m.set_name for c in bases + subs for r in c.rules for m in r.matches if m.set_name}
    return Ruleset(tuple(bases + subs), tuple(s for s in sets if s.name in used))


# ---------------------------------------------------------------- flows

def destinations(world: World, src: str) -> list[IPv4Address]:
    """Addresses a probe from src reaches through the router: the router's, nodes on its other
    side, and, from a segment of the router, the broadcast addresses of its other segments,
    which the kernel treats apart (`nft_model.kernel_silence`).

    Not the network addresses (nor any other address nobody holds): forwarded, they meet a
    failed ARP, whose host-unreachable comes seconds later, in time for another probe or
    not: rule fuzzing found the kernel saying `rejected` where the model said `filtered`."""
    side = world.segment_of(world.node_addresses[src])
    beyond = {a for a in world.node_addresses.values() if world.segment_of(a) != side}
    edges = set()
    if world.node_segments[src] in world.router_ifaces:
        edges = {world.subnets[s].broadcast_address for s in world.router_ifaces if s != side}
    return sorted(beyond | set(world.router_addresses)) + sorted(edges)


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
