"""A lab's intent (the value types of policy.yaml) and the oracle: the expected verdict of any flow.

Pure logic over a Topology: no Docker, no packets; labwarden.declared.policy_file reads
policy.yaml into a Policy. ``Policy.expect(flow)``
says what a black-box probe must observe (open, closed, rejected, filtered),
which node the flow reaches, and which part of the policy decided it.

The model: zones are sets of segments; the router is the zone ``router``;
nodes on one segment reach each other directly and are not judged by the
rules; everything crossing the router is denied unless an ``allow`` rule
covers it; replies to flows that pass come back (stateful); forwards send
traffic for the router's public address (or, with `daddr: any`, for any address
the outside zone sends through the router) on to an inside node. A router that
rejects refuses a flow to one of its own addresses in that address's name, which
no observer can tell from a closed port: such flows are expected "closed".

Both address families: a node's IPv6 addresses are judged by the same zones and rules
(an allow may name `family: ipv4|ipv6` to hold for one only). There is no NAT66: on
IPv6 a forward is a *pinhole*, the outside zone reaching the target's own IPv6 address
on the target port; the router's public address and `daddr: any` are IPv4's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from labwarden.errors import LabwardenError
from labwarden.declared.budgets import Budget
from labwarden.declared.topology import Topology, as_address

VERDICTS = frozenset({"open", "closed", "filtered", "rejected"})
BLOCKED = {"drop": frozenset({"filtered"}), "reject": frozenset({"rejected"}),
           "any": frozenset({"filtered", "rejected"})}
ROUTER_ZONE = "router"
PORT_FORMS = "tcp/N or udp/N (N in 1..65535), or icmp"
FAMILIES = {"ipv4": 4, "ipv6": 6}


@dataclass(frozen=True, order=True)
class Service:
    """A port: tcp/22, udp/53, or icmp (echo)."""
    proto: str
    port: int | None = None

    def __str__(self):
        return self.proto if self.port is None else f"{self.proto}/{self.port}"

    @classmethod
    def parse(cls, text) -> Service:
        if isinstance(text, Service):
            return text
        if text == "icmp":
            return cls("icmp")
        proto, _, port = str(text).partition("/")
        if proto in ("tcp", "udp") and port.isdigit() and 1 <= int(port) <= 65535:
            return cls(proto, int(port))
        raise ValueError(f"{text!r} is not a port: use {PORT_FORMS}")


@dataclass(frozen=True)
class Rule:
    """allow: new connections from zones to zones on these ports (any: every port and icmp)."""
    name: str
    sources: frozenset[str]
    targets: frozenset[str]
    ports: frozenset[Service]
    any: bool = False
    family: int | None = None  # 4 or 6: the rule holds for that IP version only; None: both

    def covers(self, src_zone: str, dst_zone: str, service: Service, version: int | None = None) -> bool:
        return (src_zone in self.sources and dst_zone in self.targets
                and (self.any or service in self.ports)
                and (self.family is None or version is None or self.family == version))


@dataclass(frozen=True)
class Forward:
    """forward: `public` on the router's public address goes on to `to`:`port`.

    daddr "any": the router matches the port only, so the forward takes traffic from
    the outside zone to any address it sends through the router (any of the router's
    addresses, any inside address), as an OpenWrt redirect without src_dip does. A flow
    already addressed to the target's address and port has nothing rewritten: it is a
    direct flow, judged by the allow rules like any other.
    """
    name: str
    public: Service
    to: str
    port: int
    daddr: str = "public"
    family: int | None = None  # 4: a DNAT only (no IPv6 pinhole); 6: a pinhole only; None: both

    @property
    def target(self) -> Service:
        return Service(self.public.proto, self.port)


@dataclass(frozen=True)
class Tunnel:
    """tunnel: `client` publishes its `local` port through an outbound-only connection
    to `edge`, which serves it on `public` at its own addresses (cloudflared, ssh -R).
    `page`, if given, is the file a visitor must get there, byte for byte. `host`, if
    given, is the name visitors send as Host: an edge that carries many tunnels on one
    port (cloudflared's, PageKite's) tells them apart by it; None: the edge's address."""
    name: str
    client: str
    local: Service
    edge: str
    public: Service
    page: Path | None = None
    host: str | None = None


@dataclass(frozen=True)
class SynLimit:
    """The router accepts at most `rate` new TCP connections per second to its own
    addresses, summed over every source, after a `burst`; it drops the excess SYNs
    (OpenWrt's syn_flood). Not part of the oracle: the prober paces itself under it."""
    rate: float
    burst: int


@dataclass(frozen=True)
class Flow:
    """A new connection (or echo request) from a node to an address (IPv4 or IPv6)."""
    src: str
    dst: IPv4Address | IPv6Address
    proto: str
    port: int | None
    dst_node: str | None = None

    @property
    def service(self) -> Service:
        return Service(self.proto, self.port)

    def label(self, policy: Policy) -> str:
        """The flow's id everywhere: 'servers/web -> personal/laptop tcp/22', and for an IPv6
        address 'servers/web -> personal/laptop tcp/22 (2001:db8:0:1::10)'."""
        if self.dst_node == policy.router:
            dst = f"{policy.router}@{policy.topology.segment_of(self.dst).name}"
        elif self.dst_node is not None:
            dst = policy.label(self.dst_node)
        else:
            return f"{policy.label(self.src)} -> {self.dst} {self.service}"
        family = f" ({self.dst})" if self.dst.version == 6 else ""
        return f"{policy.label(self.src)} -> {dst} {self.service}{family}"


@dataclass(frozen=True)
class Expectation:
    """What a probe of a flow may observe, whom the flow reaches, and why."""
    verdicts: frozenset[str]
    reached: str | None
    reason: str

    def admits(self, verdict: str) -> bool:
        return verdict in self.verdicts

    def __str__(self):
        return "|".join(sorted(self.verdicts))


@dataclass(eq=False)
class Policy:
    file: Path
    topology: Topology
    router: str
    zones: dict[str, list[str]]
    blocked: str = "drop"
    services: dict[str, frozenset[Service]] = field(default_factory=dict)
    allow: list[Rule] = field(default_factory=list)
    forwards: list[Forward] = field(default_factory=list)
    public: IPv4Address | None = None
    masquerade: list[str] = field(default_factory=list)
    hairpin: bool = False
    antispoof: bool = False
    syn_limit: SynLimit | None = None
    tunnels: list[Tunnel] = field(default_factory=list)
    budgets: list[Budget] = field(default_factory=list)  # per path, what latency must hold
    # zones whose segments get no IPv6 neighbour discovery from the router (its input chain
    # refuses their ICMPv6 NS/NA): on IPv6 nothing there reaches the router, nor through it
    nd_blocked: frozenset[str] = frozenset()
    _expected: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # expect()'s answers

    def zone_of(self, node: str) -> str:
        if node == self.router:
            return ROUTER_ZONE
        if node not in self.topology.nodes:
            raise LabwardenError(f"unknown node {node!r}; nodes: {', '.join(self.topology.nodes)}")
        return self.zone_of_segment(self.topology.nodes[node].segments[0])

    def zone_of_segment(self, segment: str) -> str:
        return next(zone for zone, segments in self.zones.items() if segment in segments)

    @property
    def outside(self) -> str | None:
        """The zone forwards accept traffic from: the one holding the public address."""
        if self.public is None:
            return None
        return self.zone_of_segment(self.topology.segment_of(self.public).name)

    def label(self, node: str) -> str:
        return node if node == self.router else f"{self.zone_of(node)}/{node}"

    def flow(self, src: str, dst_address, service: Service | str) -> Flow:
        self.zone_of(src)  # an unknown node fails here, with the list of nodes
        service = Service.parse(service)
        dst = as_address(dst_address)
        holder = self.topology.node_at(dst)
        return Flow(src, dst, service.proto, service.port, holder.name if holder else None)

    def declared_services(self) -> set[Service]:
        """Every port named anywhere in the policy."""
        named = set().union(*self.services.values(), *(rule.ports for rule in self.allow))
        named |= {t.public for t in self.tunnels} | {t.local for t in self.tunnels}
        return named | {f.public for f in self.forwards} | {f.target for f in self.forwards}

    def listening(self, node: str, version: int | None = None) -> frozenset[Service]:
        """What answers on the node's addresses: its services, and the public side of
        the tunnels it is the edge of. A tunnel publishes on the edge's IPv4 addresses only
        (`ssh -R 0.0.0.0:PORT`, PageKite's --host=0.0.0.0): none of it on IPv6 (version 6)."""
        tunnels = {t.public for t in self.tunnels if t.edge == node} if version != 6 else set()
        return frozenset(self.services.get(node, ())) | tunnels

    # -- the oracle -------------------------------------------------------

    def expect(self, flow: Flow) -> Expectation:
        """What the policy says of the flow; asked once per flow (a matrix asks about each cell
        about four times: 0.3 s of the home lab's matrix). A loaded policy does not change."""
        if flow not in self._expected:
            self._expected[flow] = self._expect(flow)
        return self._expected[flow]

    def _expect(self, flow: Flow) -> Expectation:
        topology, service = self.topology, flow.service
        segment = topology.segment_of(flow.dst)
        holder = topology.node_at(flow.dst)
        dst_node = holder.name if holder else None
        if dst_node == flow.src:
            return self._reached(dst_node, service, "same node", flow.dst.version)
        unresolved = self._unresolved(flow, segment)
        if unresolved is not None:
            return Expectation(BLOCKED["any"], None, unresolved)
        forward = self._forward(flow)  # `daddr: any` takes any address sent through the router
        if forward is not None:
            return self._reached(forward.to, forward.target, f"forward '{forward.name}'")
        pinhole = self._pinhole(flow)
        if pinhole is not None:
            return self._reached(pinhole.to, pinhole.target, f"pinhole '{pinhole.name}'", 6)
        if segment is None:
            return Expectation(frozenset({"filtered"}), None, "not a lab address")
        if dst_node == self.router:
            return self._to_router(flow, service)
        if topology.on_link(topology.nodes[flow.src], flow.dst):
            if holder is None:
                return Expectation(frozenset({"filtered"}), None, "no such host")
            return self._reached(dst_node, service, "same segment", flow.dst.version)
        rule = self._rule(self.zone_of(flow.src), self.zone_of_segment(segment.name), service, flow.dst.version)
        if rule is None:
            return self._blocked()
        if holder is None:
            return Expectation(frozenset({"filtered"}), None, "no such host")
        return self._reached(dst_node, service, f"allow '{rule.name}'", flow.dst.version)

    def return_allowed(self, flow: Flow) -> bool:
        """Replies pass for every flow that reached its node (the router is stateful)."""
        return self.expect(flow).reached is not None

    def may_initiate(self, src_node: str, dst_node: str, service: Service | str) -> bool:
        """Whether src_node may open a new connection to dst_node (on-link address preferred)."""
        address = self.topology.nearest_address(src_node, dst_node)
        return self.expect(self.flow(src_node, address, service)).reached == dst_node

    def delivery(self, flow: Flow) -> tuple[str, Service] | None:
        """Where a flow that passes arrives, as a capture there sees it: the node, and the
        port on it (a forward's target port); None if it must arrive nowhere."""
        reached = self.expect(flow).reached
        if reached is None:
            return None
        forward = self._forward(flow)
        return reached, forward.target if forward is not None and forward.to == reached else flow.service

    def syn_limited(self, flow: Flow) -> bool:
        """Whether the flow's SYN counts against the router's syn_limit: a new TCP
        connection to one of the router's own addresses that no forward sends on."""
        return (self.syn_limit is not None and flow.proto == "tcp" and flow.src != self.router
                and flow.dst_node == self.router and self._forward(flow) is None)

    def _forward(self, flow: Flow) -> Forward | None:
        """The forward that sends this flow on to an inside node, if any."""
        forwards = [f for f in self.forwards if f.family != 6]
        if flow.src == self.router or not forwards or flow.dst.version == 6:
            return None  # IPv6 has no NAT: its forwards are pinholes (_pinhole)
        from_outside = self.zone_of(flow.src) == self.outside
        if flow.dst == self.public and (from_outside or self.hairpin):
            return next((f for f in forwards if f.public == flow.service), None)
        through_router = flow.dst_node == self.router or not self.topology.on_link(flow.src, flow.dst)
        if not (from_outside and through_router):
            return None
        forward = next((f for f in forwards if f.daddr == "any" and f.public == flow.service), None)
        if forward is not None and flow.dst_node == forward.to and flow.port == forward.port:
            return None  # already addressed to the target: nothing to rewrite, so a direct flow
        return forward

    def _unresolved(self, flow: Flow, segment) -> str | None:
        """Why an IPv6 flow dies at neighbour discovery (nd_blocked), or None: its source
        cannot resolve the router on its segment, or the router cannot resolve its target."""
        if flow.dst.version != 6 or not self.nd_blocked or segment is None:
            return None
        through = flow.src == self.router or not self.topology.on_link(flow.src, flow.dst)
        src_zone = self.zone_of(flow.src)
        if src_zone in self.nd_blocked and (through or flow.dst_node == self.router):
            return f"nd_blocked: {src_zone} cannot resolve the router's IPv6 address (neighbour discovery refused)"
        dst_zone = self.zone_of_segment(segment.name)
        if dst_zone in self.nd_blocked and through and flow.dst_node != self.router:
            return f"nd_blocked: the router cannot resolve {flow.dst} in {dst_zone} (neighbour discovery refused)"
        return None

    def _pinhole(self, flow: Flow) -> Forward | None:
        """On IPv6 a forward lets the outside zone reach the target's own address on the
        target port through the router (no address is rewritten)."""
        if flow.dst.version != 6 or flow.src == self.router or flow.dst_node is None \
                or self.zone_of(flow.src) != self.outside or self.topology.on_link(flow.src, flow.dst):
            return None
        return next((f for f in self.forwards
                     if f.family != 4 and f.to == flow.dst_node and f.target == flow.service), None)

    def _to_router(self, flow: Flow, service: Service) -> Expectation:
        rule = self._rule(self.zone_of(flow.src), ROUTER_ZONE, service, flow.dst.version)
        if rule is None:
            expected = self._blocked()
            if self.blocked != "drop" and service.proto != "icmp":
                # The router rejects a flow to its own address with a TCP reset or an ICMP
                # port-unreachable in that address's name: what a closed port sends.
                verdicts = expected.verdicts | {"closed"}
                if self.blocked == "reject":
                    verdicts -= {"rejected"}
                expected = Expectation(verdicts, None, "default deny (refused by the router itself: "
                                       "looks closed)")
        else:
            expected = self._reached(self.router, service, f"allow '{rule.name}'", flow.dst.version)
        return expected

    def _rule(self, src_zone: str, dst_zone: str, service: Service, version: int | None = None) -> Rule | None:
        return next((r for r in self.allow if r.covers(src_zone, dst_zone, service, version)), None)

    def _reached(self, node: str, service: Service, reason: str, version: int | None = None) -> Expectation:
        # hosts answer ping; a port answers only if something listens on it
        listening = service.proto == "icmp" or service in self.listening(node, version)
        return Expectation(frozenset({"open" if listening else "closed"}), node, reason)

    def _blocked(self) -> Expectation:
        return Expectation(BLOCKED[self.blocked], None, "default deny")
