"""Flow fuzzing: flows nobody thought of, drawn by hypothesis, sent for real, judged by the policy.

What this module holds:

- `FuzzFlow`, one flow: an ordinary probe (tcp/udp/icmp echo, judged by its
  verdict like a matrix cell) or an *odd* packet crafted with scapy (TCP flag
  combinations, IP fragments, IP options, forged sources, TTL 1, ICMP types and
  codes, port 0), judged by whether it arrives at the node it is addressed to;
  `spec()`/`parse()` give the one-line form the replay command takes;
- the oracle for both: `expect_flow(policy, flow)`; for odd packets it is stated
  here, honestly: an odd packet never reaches the other side of a deny; on an
  allowed path only the packets any router forwards must arrive (fragments,
  which conntrack reassembles, ordinary options, an echo request of any code); on
  one segment everything arrives, but fragments that cannot be reassembled: a
  Docker bridge runs the host's conntrack (br_netfilter), which drops them;
  forged sources do not cross an antispoofing router; TTL 1 dies at the first router
  on the way (`forwarders`: none when it is sent to an address of the next hop);
- strategies built from the topology, the policy and, when the router is ours,
  its config (`config_aims`): the constants and interface pairs of every rule
  aim some flows at that rule and its edges, the way fuzzers take a program's
  comparison operands as a dictionary;
- the kernel's own silences (`nft_model.kernel_silence`): a probe to the broadcast
  address of a segment the router is on is the router's broadcast, which nothing
  answers, whatever its firewall says;
- `FlowFuzzer`, which sends a batch of flows in one agent request (probes from
  the sources, raw packets, captures on the targets), remembers what each flow
  did, and re-sends each flow the oracle does not admit alone, with the full probe
  timeout, before it counts: a silence that then answers was a wait too short (or a
  packet a lossy link lost) and passes; an answer that does not come again is a
  failure marked flaky, with both observations;
- `hunt`, which lets hypothesis draw every batch of its profile, *recording*
  failures rather than stopping at the first (one false alarm must not hide an
  opening drawn later), and then fails with all of them.

No Docker here but through the `lab` handed in; the oracle is pure.
"""

from __future__ import annotations

import re
import secrets
import shlex
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from hypothesis import strategies as st

from labwarden.errors import LabwardenError
from labwarden.realise.compose import run_sync
from labwarden.routers.nftables.model import kernel_silence
from labwarden.routers.nftables.trace import explain as tell, parse_events, shown_path, stories
from labwarden.declared.policy import Policy, Service
from labwarden.probe import NodeJob, Probe

BOUNDARY_PORTS = (0, 1, 1023, 1024, 49151, 65535)
# ranges that can never be real networks (RFC 2544, RFC 5737): the only places an
# address "next to a lab range" may be, so that a probe never leaves the lab
SAFE_RANGES = tuple(IPv4Network(n) for n in ("198.18.0.0/15", "192.0.2.0/24", "198.51.100.0/24",
                                             "203.0.113.0/24"))
OUTSIDE_SOURCES = (IPv4Address("198.51.100.77"), IPv4Address("192.0.2.77"))
TCP_FLAGS = {"SF": "SYN+FIN", "": "NULL", "FPU": "XMAS", "A": "ACK without a connection",
             "SA": "SYN-ACK without a SYN", "R": "RST without a connection", "F": "FIN"}
FRAGMENTS = {"split": "in 8-byte fragments", "tiny": "first fragment holds 8 bytes of the TCP header",
             "overlap": "overlapping fragments", "later": "later fragments only, no ports"}
OPTIONS = {"nop": "NOP padding", "rr": "record route", "ts": "timestamp", "ra": "router alert",
           "lsrr": "loose source route"}
ICMP_QUERIES = {8: "echo-request", 13: "timestamp", 15: "info-request", 17: "address-mask", 0: "echo-reply",
                10: "router-solicitation", 9: "router-advertisement"}
ICMP_ERRORS = {3: "destination-unreachable", 4: "source-quench", 5: "redirect", 11: "time-exceeded",
               12: "parameter-problem"}
ARRIVED, LOST = "arrived", "not arrived"
SILENT = frozenset({"filtered", LOST})   # outcomes that are the absence of an answer
SHOWN = 10                               # failures explained in full (traced); the rest one line each
RAW_SPORTS = range(20000, 30000)  # below the probes' ephemeral ports; one per raw flow of a batch


# ---------------------------------------------------------------- flows

@dataclass(frozen=True)
class FuzzFlow:
    """A flow from a node to an address; `odd` = (kind, value) makes it a crafted packet."""
    src: str
    dst: IPv4Address
    proto: str                           # tcp | udp | icmp
    port: int | None = None
    odd: tuple[str, str] | None = None   # flags/frag/opt/spoof/ttl/icmp, and its value

    @property
    def raw(self) -> bool:
        """Crafted and judged by arrival (port 0 cannot be probed through a socket)."""
        return self.odd is not None or self.port == 0

    @property
    def service(self) -> Service:
        return Service(self.proto, self.port)

    def what(self) -> str:
        base = self.proto if self.port is None else f"{self.proto}/{self.port}"
        if not self.odd:
            return base
        kind, value = self.odd
        if kind == "icmp":
            t, c = value.split("/")
            name = ICMP_QUERIES.get(int(t)) or ICMP_ERRORS.get(int(t)) or "type"
            return f"icmp type {t} code {c} ({name})"
        words = {"flags": lambda v: f"flags {v or '(none)'} ({TCP_FLAGS.get(v, 'odd')})",
                 "frag": lambda v: f"fragments: {FRAGMENTS[v]}", "opt": lambda v: f"IP option {OPTIONS[v]}",
                 "spoof": lambda v: f"forged source {v}", "ttl": lambda v: f"ttl {v}"}
        return f"{base} [{words[kind](value)}]"

    def label(self, policy: Policy) -> str:
        holder = policy.topology.node_at(self.dst)
        if holder is None:
            dst = str(self.dst)
        elif holder.name == policy.router:
            dst = f"{policy.router}@{policy.topology.segment_of(self.dst).name}"
        else:
            dst = policy.label(holder.name)
        return f"{policy.label(self.src)} -> {dst} {self.what()}"

    def spec(self) -> str:
        """One line that `parse` reads back: 'web 198.18.1.10 tcp/22 flags=SF'."""
        text = f"{self.src} {self.dst} {self.proto}" + ("" if self.port is None else f"/{self.port}")
        return text + (f" {self.odd[0]}={self.odd[1]}" if self.odd else "")

    @classmethod
    def parse(cls, spec: str, policy: Policy) -> FuzzFlow:
        words = spec.split()
        if len(words) not in (3, 4):
            raise ValueError(f"{spec!r}: expected 'SRC DST PROTO[/PORT] [KIND=VALUE]'")
        src, dst, what = words[:3]
        policy.zone_of(src)  # an unknown node fails here, naming the nodes
        proto, _, port = what.partition("/")
        if proto not in ("tcp", "udp", "icmp") or (port and not port.isdigit()):
            raise ValueError(f"{what!r}: expected tcp/N, udp/N or icmp")
        odd = tuple(words[3].split("=", 1)) if len(words) == 4 else None
        if odd and (len(odd) != 2 or odd[0] not in ("flags", "frag", "opt", "spoof", "ttl", "icmp")):
            raise ValueError(f"{words[3]!r}: expected flags=, frag=, opt=, spoof=, ttl= or icmp=")
        return cls(src, IPv4Address(dst), proto, int(port) if port else None, odd)

    def __repr__(self):
        return f"FuzzFlow({self.spec()!r})"


@dataclass(frozen=True)
class Expected:
    outcomes: frozenset[str]             # probe verdicts, or ARRIVED / LOST
    reason: str
    allowed: bool                        # what the policy says of the flow

    def admits(self, outcome: str) -> bool:
        return outcome in self.outcomes

    def __str__(self):
        return "|".join(sorted(self.outcomes))


@dataclass(frozen=True)
class Seen:
    outcome: str
    detail: str
    by: IPv4Address | None = None


@dataclass(frozen=True)
class Failure:
    """A flow the oracle does not admit: what it did in its batch, and re-sent alone."""
    flow: FuzzFlow
    expected: Expected
    seen: Seen                           # in its batch
    alone: Seen                          # re-sent alone, with the full timeout

    @property
    def flaky(self) -> bool:
        """It did not fail again: the batch saw an answer the re-send did not give."""
        return self.expected.admits(self.alone.outcome)

    @property
    def rank(self) -> tuple:
        """Openings first (the policy denies, and something answered), flaky ones last."""
        opening = not self.expected.allowed and self.seen.outcome not in SILENT
        return (self.flaky, not opening, self.flow.spec())

    def observed(self) -> str:
        alone = f"{self.alone.outcome} ({self.alone.detail})"
        if self.flaky:
            return (f"observed {self.seen.outcome} ({self.seen.detail}) in its batch, but {alone} "
                    "when re-sent alone")
        if self.alone != self.seen:
            return f"observed {alone} (in its batch: {self.seen.outcome}, {self.seen.detail})"
        return f"observed {alone}"

    def message(self, policy: Policy) -> str:
        flaky = "FLAKY: " if self.flaky else ""
        expected = f"expected {self.expected} ({self.expected.reason})"
        return f"{flaky}{self.flow.label(policy)}: {expected}, {self.observed()}"


# ---------------------------------------------------------------- the oracle

def _source_address(policy: Policy, src: str, dst: IPv4Address) -> IPv4Address:
    """The address a node's kernel puts on a packet to dst (on-link segment first)."""
    node = policy.topology.nodes[src]
    for segment, address in node.addresses.items():
        if dst in policy.topology.segments[segment].subnet:
            return address
    return node.addresses[node.segments[0]]


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


# ---------------------------------------------------------------- addresses and aims

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


@dataclass(frozen=True)
class Aim:
    """Flows aimed at one rule of the router's config: who it names, and what."""
    line: int
    srcs: tuple[str, ...]
    dsts: tuple[IPv4Address, ...]
    protos: tuple[str, ...]
    ports: tuple[int, ...]


_NAMES = re.compile(r'"([^"]+)"')


def _values(rule: str, keyword: str) -> str | None:
    """The text after `keyword` (a word, or a { set }), or None."""
    m = re.search(rf"(?<![\w-]){keyword}\s+(!=\s*)?(\{{[^}}]*\}}|\S+)", rule)
    if not m or m.group(1):
        return None  # negations name what is *not* meant: no aim
    return m.group(2)


def config_aims(policy: Policy, text: str) -> list[Aim]:
    """An Aim per rule of a router config: sources behind its input interfaces, addresses
    behind its output interfaces or its daddr, its protocols, its ports."""
    topology = policy.topology
    router = topology.nodes[policy.router]
    segment_of_iface = {ifname: seg for seg, ifname in router.interfaces.items()}
    defines = dict(re.findall(r"^\s*define\s+(\w+)\s*=\s*(.+?)\s*$", text, re.M))
    nodes = [n for n in topology.nodes if n != policy.router]
    addresses = {a: n for n in nodes for a in topology.nodes[n].addresses.values()}
    aims = []
    for number, line in enumerate(text.splitlines(), 1):
        rule = line.split("#", 1)[0].strip()
        if not rule or rule.startswith(("table", "chain", "type", "policy", "define", "flush", "}", "set")):
            continue
        rule = re.sub(r"\$(\w+)", lambda m: defines.get(m.group(1), m.group(0)), rule)
        srcs, dsts = nodes, list(addresses) + list(router.addresses.values())
        iif, oif = _values(rule, "iifname"), _values(rule, "oifname")
        if iif:
            segs = {segment_of_iface.get(n) for n in _NAMES.findall(iif)}
            srcs = [n for n in nodes if topology.nodes[n].segments[0] in segs]
        if oif:
            segs = {segment_of_iface.get(n) for n in _NAMES.findall(oif)}
            dsts = [a for a, n in addresses.items() if topology.nodes[n].segments[0] in segs]
        for key, pick in (("saddr", "srcs"), ("daddr", "dsts")):
            raw = _values(rule, f"ip {key}")
            if not raw:
                continue
            try:
                nets = [IPv4Network(v, strict=False) for v in re.findall(r"[\d.]+(?:/\d+)?", raw)]
            except ValueError:
                continue
            if pick == "srcs":
                srcs = [n for n in srcs if any(a in net for a in topology.nodes[n].addresses.values()
                                               for net in nets)]
            else:
                held = [a for a in [*addresses, *router.addresses.values()] if any(a in net for net in nets)]
                dsts = held or [net.network_address for net in nets if net.prefixlen == 32]
        protos = [p for p in ("tcp", "udp") if re.search(rf"\b{p}\s+dport\b", rule)]
        proto_set = _values(rule, "l4proto") or _values(rule, "protocol") or ""
        protos += [p for p in ("tcp", "udp", "icmp") if re.search(rf"\b{p}\b", proto_set) and p not in protos]
        if re.search(r"\bicmp\s+type\b", rule) and "icmp" not in protos:
            protos.append("icmp")
        ports = set()
        for raw in (_values(rule, "dport") or "",):
            for lo, hi in re.findall(r"(\d+)(?:-(\d+))?", raw):
                ports |= {int(lo)} | ({int(hi)} if hi else set())
        if not srcs or not dsts or (not iif and not oif and not ports and "ip " not in rule):
            continue
        aims.append(Aim(number, tuple(srcs), tuple(sorted(set(dsts))), tuple(protos or ("tcp", "udp", "icmp")),
                        tuple(sorted(p for p in ports if 0 <= p <= 65535))))
    return aims


# ---------------------------------------------------------------- strategies

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


def probe_destinations(policy: Policy, src: str) -> list[IPv4Address]:
    """Node addresses (weighted), the router's, the edges; not the broadcast or network
    address of a segment src sits on (that is discovery, the isolation suite's business)."""
    topology = policy.topology
    nodes = [a for n, node in topology.nodes.items() if n != policy.router for a in node.addresses.values()]
    router = list(topology.nodes[policy.router].addresses.values())
    own = [topology.segments[s].subnet for s in topology.nodes[src].segments]
    edges = [a for a in edge_addresses(policy)
             if not any(a in (net.network_address, net.broadcast_address) for net in own)]
    return _reachable(policy, src, sorted(nodes) * 3 + sorted(router) + edges)


def odd_destinations(policy: Policy, src: str) -> list[IPv4Address]:
    topology = policy.topology
    return _reachable(policy, src, sorted(a for n, node in topology.nodes.items() if n not in (policy.router, src)
                                          for a in node.addresses.values()))


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


# ---------------------------------------------------------------- raw packets

def craft(policy: Policy, flow: FuzzFlow, sport: int, marker: bytes) -> list[dict]:
    """The packets of an odd flow, as `l3` items for the agent; each carries the marker."""
    from scapy.layers.inet import (ICMP, IP, TCP, UDP, IPOption, IPOption_LSRR, IPOption_NOP,
                                   IPOption_Router_Alert, IPOption_RR, fragment)
    from scapy.packet import Raw

    kind, value = flow.odd or ("port0", "")
    src = _source_address(policy, flow.src, flow.dst)
    ip = dict(src=str(src), dst=str(flow.dst), ttl=64, id=sport)
    if kind == "spoof":
        ip["src"] = value
    if kind == "ttl":
        ip["ttl"] = int(value)
    if kind == "opt":
        router = _source_address(policy, policy.router, flow.dst)
        ip["options"] = {"nop": [IPOption_NOP()] * 4, "rr": [IPOption_RR(routers=["0.0.0.0"] * 3)],
                         "ts": [IPOption(b"\x44\x0c\x05\x00" + bytes(8))],  # room for two stamps
                         "ra": [IPOption_Router_Alert()],
                         "lsrr": [IPOption_LSRR(routers=[str(router)])]}[value]
    if kind == "icmp":
        icmp_type, code = map(int, value.split("/"))
        body = Raw(marker)
        if icmp_type in ICMP_ERRORS:  # quote a plausible header of a packet the target "sent"
            body = Raw(bytes(IP(src=str(flow.dst), dst=ip["src"], ttl=60) / UDP(sport=53, dport=sport))[:28]
                       + marker)
        return [{"l3": bytes(IP(**ip) / ICMP(type=icmp_type, code=code, id=sport, seq=1) / body).hex()}]
    if flow.proto == "tcp":
        flags = value if kind == "flags" else "S"
        l4 = TCP(sport=sport, dport=flow.port, flags=flags, seq=int.from_bytes(marker[:4], "big"))
    else:
        l4 = UDP(sport=sport, dport=flow.port)
    if kind != "frag":
        return [{"l3": bytes(IP(**ip) / l4 / Raw(marker)).hex()}]
    whole = IP(**ip) / l4 / Raw(b"." * 24 + marker)
    if value == "split":
        parts = fragment(whole, fragsize=8)
    elif value == "tiny":  # 8 bytes: ports and sequence number, no flags
        parts = fragment(whole, fragsize=8)
        parts = [parts[0]] + _merge_later(IP, whole, 8)
    elif value == "overlap":  # the second fragment rewrites bytes of the first
        data = bytes(whole.payload)
        parts = [IP(**ip, flags="MF", frag=0, proto=whole.proto) / Raw(data[:24]),
                 IP(**ip, flags=0, frag=1, proto=whole.proto) / Raw(data[8:])]
    else:  # later fragments only: the first, with the ports, never comes
        parts = fragment(whole, fragsize=8)[1:]
    return [{"l3": bytes(p).hex()} for p in parts]


def _merge_later(IP, whole, offset: int) -> list:
    from scapy.packet import Raw
    data = bytes(whole.payload)
    rest = IP(src=whole.src, dst=whole.dst, ttl=whole.ttl, id=whole.id, options=whole.options,
              flags=0, frag=offset // 8, proto=whole.proto)
    return [rest / Raw(data[offset:])]


def arrivals(captured: list[dict], markers: dict[bytes, FuzzFlow]) -> set[FuzzFlow]:
    """Flows whose marker reached the node, in one frame or in reassembled fragments."""
    found: set[FuzzFlow] = set()
    pieces: dict[tuple, list[tuple[int, bytes]]] = {}
    for frame in captured:
        if frame.get("dir") != "in":
            continue
        data = bytes.fromhex(frame["hex"])
        if len(data) < 34 or data[12:14] != b"\x08\x00":
            continue
        ip = data[14:]
        header, total = (ip[0] & 15) * 4, int.from_bytes(ip[2:4], "big")
        offset = (int.from_bytes(ip[6:8], "big") & 0x1FFF) * 8
        more = ip[6] & 0x20
        body = ip[header:total]
        if more or offset:  # a fragment may also carry the whole marker by itself
            pieces.setdefault((ip[12:20], ip[9], ip[4:6]), []).append((offset, body))
        for marker, flow in markers.items():
            if marker in body:
                found.add(flow)
    for parts in pieces.values():
        data = bytearray()
        for offset, body in sorted(parts):
            data[offset:offset + len(body)] = body
        for marker, flow in markers.items():
            if marker in bytes(data):
                found.add(flow)
    return found


# ---------------------------------------------------------------- sending

@dataclass
class FlowFuzzer:
    """Sends flows in batches, remembers what each did, re-sends what fails before it counts."""
    lab: object
    policy: Policy
    timeout: float = 0.5                 # per batch
    confirm_timeout: float = 1.0         # a flow that fails is re-sent alone with this one
    loss_retries: int = 0                # more re-sends of a silence, on a lab with lossy links
    seen: dict = field(default_factory=dict)
    expected: dict = field(default_factory=dict)
    failures: dict = field(default_factory=dict)   # flow -> Failure
    answered_alone: list = field(default_factory=list)  # silent in a batch, answered re-sent
    sent: int = 0
    batches: int = 0
    seconds: float = 0.0

    def observe(self, flows, timeout: float | None = None, trace: dict | None = None) -> dict[FuzzFlow, Seen]:
        """One agent request for every flow (probes from sources, packets crafted, targets
        capturing). `trace`: extra NodeJob fields for the router (used to explain)."""
        flows = list(dict.fromkeys(flows))
        timeout = self.timeout if timeout is None else timeout
        jobs: dict[str, NodeJob] = {}
        probes: dict[str, list[FuzzFlow]] = {}
        markers: dict[str, dict[bytes, FuzzFlow]] = {}
        first = RAW_SPORTS.start + secrets.randbelow(len(RAW_SPORTS) - len(flows))
        sport = iter(range(first, first + len(flows)))
        for flow in flows:
            job = jobs.setdefault(flow.src, NodeJob())
            if not flow.raw:
                job.probes.append(Probe(flow.proto, flow.dst, flow.port))
                probes.setdefault(flow.src, []).append(flow)
                continue
            marker = b"lwfuzz-" + secrets.token_hex(6).encode()
            job.send += self.framed(flow, craft(self.policy, flow, next(sport), marker))
            target = self.policy.topology.node_at(flow.dst).name
            jobs.setdefault(target, NodeJob()).capture_s = timeout
            markers.setdefault(target, {})[marker] = flow
        if trace:
            router = jobs.setdefault(self.policy.router, NodeJob())
            router.setup, router.trace = trace.get("setup"), True
        started = time.monotonic()
        answers = run_sync(self.lab.run(jobs, timeout=timeout, allow_extra=[str(SAFE_RANGES[0])]))
        self.seconds += time.monotonic() - started
        self.sent += len(flows)
        self.batches += 1
        out: dict[FuzzFlow, Seen] = {}
        for src, fs in probes.items():
            for flow, obs in zip(fs, answers[src].observations):
                out[flow] = Seen(obs.verdict, obs.detail, obs.by)
        for target, marked in markers.items():
            got = arrivals(answers[target].captured, marked)
            for flow in marked.values():
                out[flow] = Seen(ARRIVED, f"its marker was captured on {target}", None) if flow in got \
                    else Seen(LOST, f"nothing of it was captured on {target} within {timeout} s", None)
        if trace is not None:
            trace["answer"] = answers.get(self.policy.router)
        return out

    def framed(self, flow: FuzzFlow, items: list[dict]) -> list[dict]:
        """The packets as Ethernet frames to the next hop, sent on the source's interface:
        past the source's own IP stack, whose conntrack (Docker's DNS rules load it in every
        container) would reassemble fragments and drop odd packets before they leave."""
        topology = self.policy.topology
        node = topology.nodes[flow.src]
        target = topology.node_at(flow.dst)
        segment = next((s for s in node.segments if s in target.addresses), None)
        hop = target.name
        if segment is None:  # through the node's router for dst
            via = node.next_hop(flow.dst)
            hop = topology.node_at(via).name
            segment = topology.segment_of(via).name
        head = (bytes.fromhex(self.lab.mac(hop, segment).replace(":", ""))
                + bytes.fromhex(self.lab.mac(flow.src, segment).replace(":", "")) + b"\x08\x00")
        return [{"l2": (head + bytes.fromhex(item["l3"])).hex(), "iface": node.interfaces[segment]}
                for item in items]

    def check(self, flows) -> list[Failure]:
        """Sends the flows not sent before; returns the failures among all of them."""
        flows = list(dict.fromkeys(flows))
        new = [f for f in flows if f not in self.seen]
        if new:
            self.seen.update(self.observe(new))
            self.settle([f for f in new if not self.expect(f).admits(self.seen[f].outcome)])
        return [self.failures[f] for f in flows if f in self.failures]

    def settle(self, doubtful: list[FuzzFlow]) -> None:
        """Re-sends each flow its batch failed alone, with the full timeout, before it counts.

        A silence that then answers as the oracle says was a wait too short, or a packet
        a lossy link lost: it passes (and is counted). An answer the oracle does not admit
        is evidence: if the re-send behaves, the failure is flaky, never a pass. On a lab
        with lossy links a silence is re-sent `loss_retries` more times before it counts."""
        if not doubtful:
            return
        alone = self.observe(doubtful, self.confirm_timeout)
        for _ in range(self.loss_retries):
            lost = [f for f in doubtful if alone[f].outcome in SILENT and not self.expect(f).admits(alone[f].outcome)]
            if not lost:
                break
            alone.update({f: s for f, s in self.observe(lost, self.confirm_timeout).items()
                          if s.outcome not in SILENT})
        for f in doubtful:
            if self.seen[f].outcome in SILENT and self.expect(f).admits(alone[f].outcome):
                self.answered_alone.append(f)
                self.seen[f] = alone[f]
            else:
                self.failures[f] = Failure(f, self.expect(f), self.seen[f], alone[f])

    def expect(self, flow: FuzzFlow) -> Expected:
        if flow not in self.expected:
            self.expected[flow] = expect_flow(self.policy, flow)
        return self.expected[flow]

    def rate(self) -> str:
        per_s = self.sent / self.seconds if self.seconds else 0.0
        late = self.answered_alone
        late = f"; silent in a batch, answered when re-sent alone: {', '.join(f.spec() for f in late)}" if late else ""
        return f"{self.sent} flows in {self.batches} requests, {self.seconds:.1f} s: {per_s:.0f} flows/s{late}"


def replay_command(flow: FuzzFlow, topology: str, router_config=None, test: str = "suites/fuzz/test_replay.py") -> str:
    parts = ["python3", "-m", "pytest", test, "--fuzz-replay", flow.spec()]
    if topology != "homelab":
        parts += ["--topology", topology]
    if router_config:
        from pathlib import Path
        path = Path(router_config).resolve()
        parts += ["--router-config", str(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)]
    return " ".join(shlex.quote(p) for p in parts)


# ---------------------------------------------------------------- explaining and hunting

def explain(fuzzer: FlowFuzzer, flows: list[FuzzFlow]) -> dict[FuzzFlow, str]:
    """Per flow, 'was ACCEPTED by forward rule '...' (file:line)' from an nft trace of the
    router, when the router is ours (its config is known) and its kind can trace."""
    policy, lab = fuzzer.policy, fuzzer.lab
    config = lab.router_firewall() if hasattr(lab, "router_firewall") else None
    if config is None or not flows:
        return {}
    kind = lab.router_kind()
    if not kind.can_trace:
        return {f: f"(not traced: a router of kind {kind.name} cannot tell which rule decided)" for f in flows}
    topology = policy.topology
    keys, addresses = {}, set()
    for flow in flows:
        srcs = set(topology.nodes[flow.src].addresses.values())
        if flow.odd and flow.odd[0] == "spoof":
            srcs = {IPv4Address(flow.odd[1])}
        answerers = {flow.dst} | {topology.nodes[f.to].addresses[topology.nodes[f.to].segments[0]]
                                  for f in policy.forwards if flow.dst == policy.public}
        keys[flow] = (srcs, flow.dst, flow.proto, flow.port, answerers)
        addresses |= srcs | answerers
    trace = {"setup": kind.trace_setup(addresses)}
    try:
        fuzzer.observe(flows, fuzzer.confirm_timeout, trace=trace)
    except LabwardenError as err:
        return {f: f"(could not trace the router: {err})" for f in flows}
    finally:
        run_sync(lab.run({policy.router: NodeJob(setup=kind.untrace_setup())}))
    raw = (trace.get("answer").raw if trace.get("answer") else {}).get("trace") or {}
    told = stories(parse_events(raw.get("events", [])), keys)
    out = {}
    for flow in flows:
        fate, by = tell(told[flow], raw.get("ruleset", ""), config.read_text(), shown_path(config, topology))
        out[flow] = f"was {fate} {by}"
    return out


def describe(fuzzer: FlowFuzzer, failures: list[Failure], topology: str, router_config=None) -> str:
    """The failure text: openings first; for the first SHOWN, what the router's rules did
    with the flow (traced on one more send) and the replay command; the rest one line each."""
    failures = sorted(failures, key=lambda f: f.rank)
    shown, rest = failures[:SHOWN], failures[SHOWN:]
    told = explain(fuzzer, [f.flow for f in shown])
    policy = fuzzer.policy
    lines = []
    for f in shown:
        says = "allow" if f.expected.allowed else "deny"
        # the headline (pytest --tb=line shows it alone) names the rule that decided, or
        # for a flaky flow its two observations
        if f.flaky:
            lines.append(f"FLAKY: {f.flow.label(policy)}: {f.observed()}; policy says {says} "
                         f"({f.expected.reason}): expected {f.expected}")
            if f.flow in told:
                lines.append(f"  traced on one more send: it {told[f.flow]}")
        elif f.flow in told:
            lines.append(f"{f.flow.label(policy)} {told[f.flow]}; policy says {says} ({f.expected.reason})")
            lines.append(f"  expected {f.expected}, {f.observed()}")
        else:
            lines.append(f.message(policy))
        lines.append(f"  replay alone: {replay_command(f.flow, topology, router_config)}")
    if rest:
        lines.append(f"{len(rest)} more flow(s) failed:")
        lines += [f"  {f.message(policy)}" for f in rest]
    return "\n".join(lines)


def hunt(fuzzer: FlowFuzzer, strategy: st.SearchStrategy[Batch], settings, topology: str,
         router_config=None) -> None:
    """Let hypothesis draw every batch of its profile; a flow the policy does not admit is
    recorded, not raised, so that the search goes on (hypothesis would stop at the first,
    and a false alarm would hide an opening drawn later); then fail with all of them."""
    from hypothesis import given

    @settings
    @given(strategy)
    def check(batch: Batch):
        fuzzer.check(batch.flows)

    check()
    if fuzzer.failures:
        found = list(fuzzer.failures.values())
        flaky = sum(f.flaky for f in found)
        note = f" ({flaky} flaky: failed in a batch, not when re-sent alone)" if flaky else ""
        text = describe(fuzzer, found, topology, router_config)
        raise AssertionError(f"{text}\n{len(found)} flow(s) do not follow the policy{note}")
