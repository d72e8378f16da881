"""A model of nftables: the rulesets rule fuzzing generates, and what probes see through them.

Pure logic, no Docker: a `Ruleset` is plain data that renders itself as an
`nft -f` file, `Ruleset.evaluate(packet)` says what the kernel does with one
packet (the verdict and the rules that decided it), and `predict(ruleset,
world, flow)` says what a black-box probe of a flow observes through a router
running that ruleset (open, closed, rejected, filtered), request and reply
path included. Rule fuzzing (suites/fuzz/test_rules.py) loads the same
rulesets into the lab's router and compares; every difference it found is a
unit test in tests/unit/test_nft_model.py.

The grammar is the rule primitives real configs use: input/output interface
(name or set, negated or not), source/destination prefix (single, anonymous
set or named set), protocol (`meta l4proto` or `ip protocol`), destination
port (single, range, set, named set, via `tcp`, `udp` or `th`), ICMP type,
`ct state`, `counter`, and the statements accept, drop, reject (plain, with an
ICMP type, with a TCP reset), jump, goto, return and continue; base chains on
the input and forward hooks with a policy, several base chains on one hook,
regular chains. Not modelled: NAT, marks, sets with timeouts, meters, the
output hook, IPv6.

The semantics that surprise people, and that the model keeps:
- a match on a transport field carries its protocol: `tcp dport != 22` never
  matches a UDP packet;
- `accept` ends one base chain only: the packet then meets the next base
  chain on the same hook (a higher priority number), where it may still be dropped;
- `goto` does not come back: when the chain gone to ends, evaluation resumes
  after the last `jump`, or ends with the base chain's policy;
- `oifname` on the input hook compares an empty name: `oifname != "wan"` matches;
- replies meet the same forward chain as requests: without `ct state
  established` they are judged by the rules like anything else.

What the kernel answers whatever the rules say (measured on Linux 6.18: a router
namespace between two /24s, every reject kind, accept and drop, SYN, UDP and echo
request sent to the router's MAC address; see `kernel_silence`):
- the broadcast address of a segment the router is on (its own segment's or
  another's) and the limited broadcast 255.255.255.255 are the router's own
  broadcasts: the packet meets the *input* hook, never forward, and nothing answers:
  a reject sends no RST and no ICMP error for a packet routed as broadcast (a TCP
  listener ignores the SYN; a UDP service gets the datagram, but answers from its
  own address, which a probe does not take for the broadcast's answer);
- multicast (224.0.0.0/4) is neither routed nor for the router unless it joined the
  group: prerouting sees it, input and forward do not, nothing answers;
- a segment's network address is no broadcast to Linux (no `broadcast` route for
  it in the local table): it is forwarded like any address nobody holds, and a
  reject answers it as usual.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

ICMP_TYPES = {"echo-reply": 0, "destination-unreachable": 3, "echo-request": 8, "time-exceeded": 11}
REJECT_CODES = {"port-unreachable": 3, "host-unreachable": 1, "net-unreachable": 0,
                "host-prohibited": 10, "net-prohibited": 9, "admin-prohibited": 13}
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
    if isinstance(v, IPv4Network):
        return str(v.network_address) if v.prefixlen == 32 else str(v)
    if key in ("iifname", "oifname"):
        return f'"{v}"'
    return str(v)


@dataclass(frozen=True)
class Match:
    """One expression of a rule.

    key: iifname | oifname | saddr | daddr | l4proto | dport | icmp_type | ct_state;
    values: interface names, IPv4Networks, protocol names, (low, high) port
    ranges, ICMP type names or ct states; proto: for dport the header it is read
    from (tcp, udp, th), for l4proto its spelling (meta, ip).
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
            return f"ip {self.key} {op}{value}"
        if self.key == "l4proto":
            return f"{'ip protocol' if self.proto == 'ip' else 'meta l4proto'} {op}{value}"
        if self.key == "dport":
            prefix = "meta l4proto { tcp, udp } th" if self.proto == "th" else self.proto
            return f"{prefix} dport {op}{value}"
        if self.key == "icmp_type":
            return f"icmp type {op}{value}"
        if self.key == "ct_state":
            return f"ct state {op}{value}"
        raise ValueError(f"unknown match key {self.key!r}")

    def matches(self, packet: Packet) -> bool:
        if self.key == "dport":
            protos = ("tcp", "udp") if self.proto == "th" else (self.proto,)
            if packet.proto not in protos or packet.dport is None:
                return False  # the dependency on the protocol is part of the match
            hit = any(lo <= packet.dport <= hi for lo, hi in self.values)
        elif self.key == "icmp_type":
            if packet.proto != "icmp":
                return False
            hit = any(ICMP_TYPES[t] == packet.icmp_type for t in self.values)
        elif self.key == "iifname":
            hit = packet.iif in self.values
        elif self.key == "oifname":
            hit = packet.oif in self.values
        elif self.key in ("saddr", "daddr"):
            address = packet.saddr if self.key == "saddr" else packet.daddr
            hit = any(address in net for net in self.values)
        elif self.key == "l4proto":
            hit = packet.proto in self.values
        elif self.key == "ct_state":
            hit = packet.ct in self.values
        else:
            raise ValueError(f"unknown match key {self.key!r}")
        return hit != self.negate


@dataclass(frozen=True)
class Rule:
    matches: tuple[Match, ...]
    verdict: str                  # accept drop reject jump goto return continue
    arg: str | None = None        # reject: None, "icmp TYPE" or "tcp reset"; jump/goto: the chain
    counter: bool = False

    def render(self) -> str:
        parts = [m.render() for m in self.matches]
        if self.counter:
            parts.append("counter")
        if self.verdict == "reject" and self.arg:
            parts.append(f"reject with {'icmp type ' + self.arg[5:] if self.arg.startswith('icmp ') else self.arg}")
        elif self.verdict in ("jump", "goto"):
            parts.append(f"{self.verdict} {self.arg}")
        else:
            parts.append(self.verdict)
        return " ".join(parts)

    def applies(self, packet: Packet) -> bool:
        return all(m.matches(packet) for m in self.matches)


@dataclass(frozen=True)
class Chain:
    name: str
    rules: tuple[Rule, ...]
    hook: str | None = None       # input | forward; None: a regular chain, reached by jump/goto
    priority: int = 0
    policy: str = "accept"

    def render(self) -> str:
        lines = [f"\tchain {self.name} {{"]
        if self.hook:
            lines.append(f"\t\ttype filter hook {self.hook} priority {self.priority}; policy {self.policy};")
        lines += [f"\t\t{rule.render()}" for rule in self.rules]
        return "\n".join(lines + ["\t}"])


@dataclass(frozen=True)
class NamedSet:
    name: str
    kind: str                     # ipv4_addr | inet_service
    elements: tuple

    def render(self) -> str:
        key = "saddr" if self.kind == "ipv4_addr" else "dport"
        elements = ", ".join(render_element(e, key) for e in self.elements)
        return (f"\tset {self.name} {{\n\t\ttype {self.kind}\n\t\tflags interval\n"
                f"\t\telements = {{ {elements} }}\n\t}}")


@dataclass(frozen=True)
class Packet:
    """One packet as a hook of the router sees it."""
    hook: str                     # input | forward
    iif: str
    oif: str                      # "" on the input hook
    saddr: IPv4Address
    daddr: IPv4Address
    proto: str                    # tcp | udp | icmp
    dport: int | None = None
    icmp_type: int | None = None
    ct: str = "new"

    def __str__(self):
        what = f"icmp type {self.icmp_type}" if self.proto == "icmp" else f"{self.proto} dport {self.dport}"
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
        body = [s.render() for s in self.sets] + [c.render() for c in self.chains]
        return "flush ruleset\n\ntable inet " + self.table + " {\n" + "\n\n".join(body) + "\n}\n"

    def chain(self, name: str) -> Chain:
        return next(c for c in self.chains if c.name == name)

    def evaluate(self, packet: Packet) -> Decision:
        """Every base chain of the packet's hook in priority order: an accept passes the
        packet on to the next one, a drop or reject ends it."""
        steps: list[Step] = []
        bases = sorted((c for c in self.chains if c.hook == packet.hook), key=lambda c: c.priority)
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
                frames.append([self.chain(rule.arg), 0])
            elif rule.verdict == "goto":
                frames[-1] = [self.chain(rule.arg), 0]
        else:
            raise RuntimeError(f"chain {base.name}: a jump loop")
        steps.append(Step(base.name, None, f"policy {base.policy}"))
        return base.policy, None


# ---------------------------------------------------------------- what probes see

@dataclass(frozen=True)
class World:
    """What the prediction needs of the lab around the router."""
    router_ifaces: dict            # segment -> the router's interface on it
    router_addresses: frozenset    # IPv4Address
    node_segments: dict            # node -> its segment
    node_addresses: dict           # node -> its address
    subnets: dict                  # segment -> IPv4Network
    outside: str                   # the segment of the router's default route
    listening: frozenset           # (node, proto, port): who answers
    router: str = "router"
    near: dict | None = None       # node -> addresses of its next-hop routers (0 hops away)

    @classmethod
    def of(cls, policy) -> World:
        topology, router = policy.topology, policy.topology.nodes[policy.router]
        default = router.gateway
        outside = topology.segment_of(default).name if default else next(iter(router.interfaces))
        nodes = {n: node for n, node in topology.nodes.items() if n != policy.router}
        # a node's side: the segment it shares with the router (the source address its kernel
        # picks towards the router), not whichever segment its compose file happens to list first
        side = {n: next((s for s in node.segments if s in router.addresses), node.segments[0])
                for n, node in nodes.items()}
        return cls(router_ifaces=dict(router.interfaces),
                   router_addresses=frozenset(router.addresses.values()),
                   node_segments=side,
                   node_addresses={n: node.addresses[side[n]] for n, node in nodes.items()},
                   subnets={s: seg.subnet for s, seg in topology.segments.items()},
                   outside=outside,
                   listening=frozenset((n, s.proto, s.port) for n, svcs in policy.services.items()
                                       for s in svcs),
                   router=policy.router,
                   near={n: frozenset(a for hop in [node.gateway, *node.routes.values()] if hop
                                      for holder in [topology.node_at(hop)] if holder
                                      for a in holder.addresses.values())
                         for n, node in nodes.items()})

    def segment_of(self, address: IPv4Address) -> str:
        """The router's segment towards address: its own, else the default route's."""
        return next((s for s, net in self.subnets.items() if address in net and s in self.router_ifaces),
                    self.outside)

    def iface_towards(self, address: IPv4Address) -> str:
        return self.router_ifaces[self.segment_of(address)]

    def node_at(self, address: IPv4Address) -> str | None:
        if address in self.router_addresses:
            return self.router
        return next((n for n, a in self.node_addresses.items() if a == address), None)


@dataclass(frozen=True)
class Prediction:
    verdict: str                  # open | closed | rejected | filtered
    decision: Decision            # of the packet that decided
    packet: Packet

    def explain(self) -> str:
        by = self.decision.decided_by
        return f"{self.verdict}: {self.packet} -> {self.decision.verdict}" + (f" by {by}" if by else "")


def kernel_silence(dst: IPv4Address, router_subnets) -> str | None:
    """Why no probe of dst can be answered through a router on these subnets, whatever its
    rules say (None: dst is an ordinary address). See the module's docstring."""
    dst = IPv4Address(dst)
    if dst.is_multicast:
        return "a multicast address: not routed, and not for the router (no group joined)"
    if dst == IPv4Address("255.255.255.255"):
        return "the limited broadcast: the router's own broadcast, and no kernel answers one"
    net = next((n for n in router_subnets if dst == n.broadcast_address and n.prefixlen < 31), None)
    if net is not None:
        return (f"the broadcast address of {net}: the router takes it as its own broadcast (input hook), "
                "and the kernel answers no broadcast: no RST, no ICMP error, whatever the rule")
    return None


def predict(ruleset: Ruleset, world: World, src: str, dst: IPv4Address, proto: str,
            port: int | None) -> Prediction:
    """What a probe from node `src` to `dst` observes through the router (src and dst on
    different segments; dst a node's or the router's address, or a segment's edge)."""
    dst = IPv4Address(dst)
    saddr = world.node_addresses[src]
    iif = world.iface_towards(saddr)
    target = world.node_at(dst)
    silent = kernel_silence(dst, [world.subnets[s] for s in world.router_ifaces])
    local = target == world.router or silent is not None
    hook, oif = ("input", "") if local else ("forward", world.iface_towards(dst))
    icmp = ICMP_TYPES["echo-request"] if proto == "icmp" else None
    request = Packet(hook, iif, oif, saddr, dst, proto, port, icmp, "new")
    decision = ruleset.evaluate(request)
    if silent:  # judged by the input hook, answered by nobody
        return Prediction("filtered", decision, request)
    if decision.verdict == "drop":
        return Prediction("filtered", decision, request)
    if decision.verdict == "reject":
        return Prediction(_rejected(decision.arg, proto, local, dst, world, src), decision, request)
    if target is None:
        return Prediction("filtered", decision, request)
    listening = proto == "icmp" or (target, proto, port) in world.listening
    if local:  # the router's own answer leaves by the output hook, which the model leaves open
        if listening:
            return Prediction("open", decision, request)
        if proto == "tcp":
            return Prediction(_rst_from(dst, world, src), decision, request)
        return Prediction("closed", decision, request)
    if proto == "icmp":
        reply = Packet("forward", oif, iif, dst, saddr, "icmp", None, ICMP_TYPES["echo-reply"], "established")
    elif listening or proto == "tcp":  # a SYN-ACK or a RST, a UDP answer
        reply = Packet("forward", oif, iif, dst, saddr, proto, EPHEMERAL_PORT, None, "established")
    else:  # the target's port-unreachable is RELATED to the flow
        reply = Packet("forward", oif, iif, dst, saddr, "icmp", None,
                       ICMP_TYPES["destination-unreachable"], "related")
    back = ruleset.evaluate(reply)
    if back.verdict != "accept":  # a reject of the reply answers the target, not the prober
        return Prediction("filtered", back, reply)
    return Prediction("open" if listening else "closed", decision, request)


def _rejected(arg: str | None, proto: str, local: bool, dst: IPv4Address, world: World, src: str) -> str:
    """How the agent classifies the router's answer to a rejected request."""
    if arg == "tcp reset":
        return _rst_from(dst, world, src)
    code = REJECT_CODES[arg[5:]] if arg else REJECT_CODES["port-unreachable"]
    # for its own addresses the router answers from the probed address: a UDP
    # port-unreachable from the target itself is what a closed port looks like
    if local and proto == "udp" and code == REJECT_CODES["port-unreachable"]:
        return "closed"
    return "rejected"


def _rst_from(dst: IPv4Address, world: World, src: str) -> str:
    """A RST the router sends in dst's name leaves with ttl 64: the agent calls it forged
    (rejected) unless dst is on the prober's own segment or an address of its next hop,
    or other routers on the way lowered its ttl (src is not on a segment of the router)."""
    on_link = dst in world.subnets[world.node_segments[src]]
    near = dst in (world.near or {}).get(src, ())
    far = world.node_segments[src] not in world.router_ifaces
    return "closed" if on_link or near or far else "rejected"


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


__all__ = ["Chain", "Decision", "Match", "NamedSet", "Packet", "Prediction", "Rule", "Ruleset",
           "Step", "World", "kernel_silence", "predict", "port_constants"]
