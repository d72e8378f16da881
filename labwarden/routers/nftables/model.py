"""A model of nftables: the rulesets rule fuzzing generates, and how the kernel judges one packet.

Pure logic, no Docker: a `Ruleset` is plain data that renders itself as an
`nft -f` file and `Ruleset.evaluate(packet)` says what the kernel does with one
packet (the verdict and the rules that decided it); `verdicts.predict(ruleset,
world, flow)` says what a black-box probe of a flow observes through a router
running that ruleset (open, closed, rejected, filtered), request and reply
path included. Rule fuzzing (suites/fuzz/test_rules.py) loads the same
rulesets into the lab's router and compares; every difference it found is a
unit test in tests/unit/test_nft_model.py.

The grammar is the rule primitives real configs use: input/output interface
(name or set, negated or not), source/destination prefix (`ip` or `ip6`; single,
anonymous set or named set), protocol (`meta l4proto`, `ip protocol` or
`ip6 nexthdr`), `meta nfproto`, destination port (single, range, set, named set,
via `tcp`, `udp` or `th`), ICMP and ICMPv6 type, `ct state`, `counter`, and the
statements accept, drop, reject (plain, with an ICMP, ICMPv6 or ICMPx type, with a
TCP reset), jump, goto, return and continue; base chains on the input and forward
hooks with a policy, several base chains on one hook, regular chains; chains in
tables of the families `ip`, `ip6` and `inet`. Not modelled: NAT, marks, sets with
timeouts, meters, the output hook, IPv6 extension headers.

The semantics that surprise people, and that the model keeps:
- a match on a transport field carries its protocol: `tcp dport != 22` never
  matches a UDP packet; a match on a network field carries its family: `ip saddr !=
  10.0.0.0/8`, `ip protocol tcp`, `icmp type` never match an IPv6 packet, `ip6 ...`
  and `icmpv6 type` never an IPv4 one;
- an `ip` table sees no IPv6 packet, an `ip6` table no IPv4 packet, an `inet` table
  both: the base chains of one hook from every table that sees the packet run in
  priority order;
- `reject with icmp type X` in an `inet` table is about IPv4 packets only (nft adds
  `meta nfproto ipv4`), `reject with icmpv6 type X` about IPv6 only; `icmpx` and
  plain `reject` answer each family in its own ICMP;
- ICMPv6 is also `meta l4proto ipv6-icmp`: `meta l4proto icmp` does not match it;
- `accept` ends one base chain only: the packet then meets the next base
  chain on the same hook (a higher priority number), where it may still be dropped;
- `goto` does not come back: when the chain gone to ends, evaluation resumes
  after the last `jump`, or ends with the base chain's policy;
- `oifname` on the input hook compares an empty name: `oifname != "wan"` matches;
- replies meet the same forward chain as requests: without `ct state
  established` they are judged by the rules like anything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

ICMP_TYPES = {"echo-reply": 0, "destination-unreachable": 3, "echo-request": 8, "time-exceeded": 11}
ICMPV6_TYPES = {"destination-unreachable": 1, "packet-too-big": 2, "time-exceeded": 3, "echo-request": 128,
                "echo-reply": 129, "nd-router-solicit": 133, "nd-router-advert": 134,
                "nd-neighbor-solicit": 135, "nd-neighbor-advert": 136}
REJECT_CODES = {"port-unreachable": 3, "host-unreachable": 1, "net-unreachable": 0,
                "host-prohibited": 10, "net-prohibited": 9, "admin-prohibited": 13}
REJECT6_CODES = {"no-route": 0, "admin-prohibited": 1, "addr-unreachable": 3, "port-unreachable": 4,
                 "policy-fail": 5, "reject-route": 6}
# icmpx: one name for both families (what the kernel sends: an ICMP or an ICMPv6 code)
REJECTX_CODES = {"port-unreachable": (3, 4), "admin-prohibited": (13, 1), "no-route": (0, 0),
                 "host-unreachable": (1, 3)}
FAMILIES = ("ip", "ip6", "inet")
NFPROTO = {4: "ipv4", 6: "ipv6"}
CT_STATES = ("new", "established", "related", "invalid")
TERMINAL = ("accept", "drop", "reject")
# Probes leave from an ephemeral port the model cannot know: port constants of
# generated rules stay outside this range, so any port in it decides alike.
EPHEMERAL = range(32768, 61000)
EPHEMERAL_PORT = 40000


# ---------------------------------------------------------------- the ruleset

def render_element(v, key: str) -> str:
    if isinstance(v, tuple):
        return str(v[0]) if v[0] == v[1] else f"{v[0]}-{v[1]}"
    if isinstance(v, (IPv4Network, IPv6Network)):
        return str(v.network_address) if v.prefixlen == v.max_prefixlen else str(v)
    if key in ("iifname", "oifname"):
        return f'"{v}"'
    return str(v)


@dataclass(frozen=True)
class Match:
    """One expression of a rule.

    key: iifname | oifname | saddr | daddr | l4proto | nfproto | dport | icmp_type | ct_state;
    values: interface names, IPv4Networks or IPv6Networks, protocol names, ipv4/ipv6,
    (low, high) port ranges, ICMP type names or ct states; proto: for dport the header
    it is read from (tcp, udp, th), for l4proto its spelling (meta, ip, ip6), for
    saddr/daddr the family's header (ip, ip6; "" is ip), for icmp_type icmp or icmpv6.
    """
    key: str
    values: tuple
    negate: bool = False
    proto: str = ""
    set_name: str | None = None

    def render(self) -> str:
        op = "!= " if self.negate else ""
        if self.set_name:
            value = f"@{self.set_name}"
        elif len(self.values) == 1:
            value = render_element(self.values[0], self.key)
        else:
            value = "{ " + ", ".join(render_element(v, self.key) for v in self.values) + " }"
        if self.key in ("iifname", "oifname"):
            return f"{self.key} {op}{value}"
        if self.key in ("saddr", "daddr"):
            return f"{self.proto or 'ip'} {self.key} {op}{value}"
        if self.key == "l4proto":
            spelling = {"ip": "ip protocol", "ip6": "ip6 nexthdr"}.get(self.proto, "meta l4proto")
            return f"{spelling} {op}{value}"
        if self.key == "nfproto":
            return f"meta nfproto {op}{value}"
        if self.key == "dport":
            prefix = "meta l4proto { tcp, udp } th" if self.proto == "th" else self.proto
            return f"{prefix} dport {op}{value}"
        if self.key == "icmp_type":
            return f"{self.proto or 'icmp'} type {op}{value}"
        if self.key == "ct_state":
            return f"ct state {op}{value}"
        raise ValueError(f"unknown match key {self.key!r}")

    def family(self) -> int | None:
        """The IP version this match is only about (its header's dependency), None: both."""
        if self.key in ("saddr", "daddr"):
            return 6 if self.proto == "ip6" else 4
        if self.key == "l4proto" and self.proto in ("ip", "ip6"):
            return 6 if self.proto == "ip6" else 4
        if self.key == "icmp_type":
            return 6 if self.proto == "icmpv6" else 4
        return None

    def matches(self, packet: Packet) -> bool:
        if self.family() not in (None, packet.version):
            return False  # the dependency on the family is part of the match, negated or not
        if self.key == "dport":
            protos = ("tcp", "udp") if self.proto == "th" else (self.proto,)
            if packet.proto not in protos or packet.dport is None:
                return False  # the dependency on the protocol is part of the match
            hit = any(lo <= packet.dport <= hi for lo, hi in self.values)
        elif self.key == "icmp_type":
            icmpv6 = self.proto == "icmpv6"
            if packet.proto != ("ipv6-icmp" if icmpv6 else "icmp"):
                return False
            hit = any((ICMPV6_TYPES if icmpv6 else ICMP_TYPES)[t] == packet.icmp_type for t in self.values)
        elif self.key == "iifname":
            hit = packet.iif in self.values
        elif self.key == "oifname":
            hit = packet.oif in self.values
        elif self.key in ("saddr", "daddr"):
            address = packet.saddr if self.key == "saddr" else packet.daddr
            hit = any(address in net for net in self.values)
        elif self.key == "l4proto":
            hit = packet.proto in self.values
        elif self.key == "nfproto":
            hit = NFPROTO[packet.version] in self.values
        elif self.key == "ct_state":
            hit = packet.ct in self.values
        else:
            raise ValueError(f"unknown match key {self.key!r}")
        return hit != self.negate


@dataclass(frozen=True)
class Rule:
    matches: tuple[Match, ...]
    verdict: str                  # accept drop reject jump goto return continue
    arg: str | None = None        # reject: None, "icmp TYPE", "icmpv6 TYPE", "icmpx TYPE" or "tcp reset";
    #                               jump/goto: the chain
    counter: bool = False

    def render(self) -> str:
        parts = [m.render() for m in self.matches]
        if self.counter:
            parts.append("counter")
        if self.verdict == "reject" and self.arg:
            kind, _, name = self.arg.partition(" ")
            parts.append(f"reject with {self.arg if kind == 'tcp' else f'{kind} type {name}'}")
        elif self.verdict in ("jump", "goto"):
            parts.append(f"{self.verdict} {self.arg}")
        else:
            parts.append(self.verdict)
        return " ".join(parts)

    def family(self) -> int | None:
        """The IP version the rule's statement is only about: nft adds `meta nfproto ipv4` to
        `reject with icmp type X` (and ipv6 to icmpv6) in an inet table."""
        if self.verdict == "reject" and self.arg and self.arg.split()[0] in ("icmp", "icmpv6"):
            return 6 if self.arg.startswith("icmpv6") else 4
        return None

    def applies(self, packet: Packet) -> bool:
        return self.family() in (None, packet.version) and all(m.matches(packet) for m in self.matches)


@dataclass(frozen=True)
class Chain:
    name: str
    rules: tuple[Rule, ...]
    hook: str | None = None       # input | forward; None: a regular chain, reached by jump/goto
    priority: int = 0
    policy: str = "accept"
    family: str = "inet"          # its table's: ip | ip6 | inet

    def sees(self, packet: Packet) -> bool:
        return self.family == "inet" or self.family == ("ip6" if packet.version == 6 else "ip")

    def render(self) -> str:
        lines = [f"\tchain {self.name} {{"]
        if self.hook:
            lines.append(f"\t\ttype filter hook {self.hook} priority {self.priority}; policy {self.policy};")
        lines += [f"\t\t{rule.render()}" for rule in self.rules]
        return "\n".join(lines + ["\t}"])


@dataclass(frozen=True)
class NamedSet:
    name: str
    kind: str                     # ipv4_addr | ipv6_addr | inet_service
    elements: tuple

    def render(self) -> str:
        key = "dport" if self.kind == "inet_service" else "saddr"
        elements = ", ".join(render_element(e, key) for e in self.elements)
        return (f"\tset {self.name} {{\n\t\ttype {self.kind}\n\t\tflags interval\n"
                f"\t\telements = {{ {elements} }}\n\t}}")


@dataclass(frozen=True)
class Packet:
    """One packet as a hook of the router sees it."""
    hook: str                     # input | forward
    iif: str
    oif: str                      # "" on the input hook
    saddr: IPv4Address | IPv6Address
    daddr: IPv4Address | IPv6Address
    proto: str                    # tcp | udp | icmp | ipv6-icmp
    dport: int | None = None
    icmp_type: int | None = None
    ct: str = "new"

    @property
    def version(self) -> int:
        return self.saddr.version

    def __str__(self):
        what = (f"{'icmpv6' if self.proto == 'ipv6-icmp' else 'icmp'} type {self.icmp_type}"
                if self.proto in ("icmp", "ipv6-icmp") else f"{self.proto} dport {self.dport}")
        return (f"{self.hook} iif {self.iif or '-'} oif {self.oif or '-'} {self.saddr} -> {self.daddr} "
                f"{what} ct {self.ct}")


@dataclass(frozen=True)
class Step:
    """A rule that matched on the way (rule None: the base chain's policy)."""
    chain: str
    rule: int | None
    text: str

    def __str__(self):
        return f"{self.chain} {'policy' if self.rule is None else 'rule'} '{self.text}'"


@dataclass(frozen=True)
class Decision:
    verdict: str                  # accept | drop | reject
    arg: str | None = None        # reject's kind
    steps: tuple[Step, ...] = ()

    @property
    def decided_by(self) -> Step | None:
        return self.steps[-1] if self.steps else None


@dataclass(frozen=True)
class Ruleset:
    chains: tuple[Chain, ...]
    sets: tuple[NamedSet, ...] = ()
    table: str = "fuzz"

    def render(self) -> str:
        """One table per family its chains are in (in the order they first come), each with
        every named set (a set of any type may live in a table of any family)."""
        tables = []
        for family in dict.fromkeys(c.family for c in self.chains):
            body = [s.render() for s in self.sets] + [c.render() for c in self.chains if c.family == family]
            tables.append(f"table {family} {self.table} {{\n" + "\n\n".join(body) + "\n}\n")
        return "flush ruleset\n\n" + "\n".join(tables)

    def chain(self, name: str, family: str = "inet") -> Chain:
        """A chain by name in a table (a jump never leaves its table)."""
        return next(c for c in self.chains if c.name == name and c.family == family)

    def evaluate(self, packet: Packet) -> Decision:
        """Every base chain of the packet's hook in priority order: an accept passes the
        packet on to the next one, a drop or reject ends it."""
        steps: list[Step] = []
        bases = sorted((c for c in self.chains if c.hook == packet.hook and c.sees(packet)),
                       key=lambda c: c.priority)
        for base in bases:
            verdict, arg = self._run(base, packet, steps)
            if verdict != "accept":
                return Decision(verdict, arg, tuple(steps))
        return Decision("accept", None, tuple(steps))

    def _run(self, base: Chain, packet: Packet, steps: list[Step]) -> tuple[str, str | None]:
        frames = [[base, 0]]
        for _ in range(10_000):  # generated rulesets jump forward only: this never runs out
            chain, index = frames[-1]
            if index >= len(chain.rules):
                frames.pop()
                if not frames:
                    break
                continue
            frames[-1][1] += 1
            rule = chain.rules[index]
            if not rule.applies(packet):
                continue
            steps.append(Step(chain.name, index, rule.render()))
            if rule.verdict in TERMINAL:
                return rule.verdict, rule.arg
            if rule.verdict == "return":
                frames.pop()
                if not frames:
                    break
            elif rule.verdict == "jump":
                frames.append([self.chain(rule.arg, base.family), 0])
            elif rule.verdict == "goto":
                frames[-1] = [self.chain(rule.arg, base.family), 0]
        else:
            raise RuntimeError(f"chain {base.name}: a jump loop")
        steps.append(Step(base.name, None, f"policy {base.policy}"))
        return base.policy, None


def port_constants(ruleset: Ruleset) -> set[int]:
    """Every port a rule or set of the ruleset names (range ends included)."""
    ports = set()
    for chain in ruleset.chains:
        for rule in chain.rules:
            for m in rule.matches:
                if m.key == "dport":
                    ports |= {p for lo, hi in m.values for p in (lo, hi)}
    for s in ruleset.sets:
        if s.kind == "inet_service":
            ports |= {p for lo, hi in s.elements for p in (lo, hi)}
    return ports


def outside_ephemeral(lo: int, hi: int) -> bool:
    return hi < EPHEMERAL.start or lo >= EPHEMERAL.stop


__all__ = ["Chain", "Decision", "Match", "NamedSet", "Packet", "Rule", "Ruleset", "Step", "port_constants"]
