"""What a black-box probe sees through a router running a modelled ruleset (model.py).

`predict(ruleset, world, src, dst, proto, port)` sends the flow's request through
`Ruleset.evaluate` on the hook it meets (input for the router's own addresses and
for what the kernel takes as its own broadcast, forward otherwise), then its reply
(a SYN-ACK or RST, a UDP answer, an echo reply, or the target's port-unreachable,
RELATED), and says how the agent classifies what comes back: open, closed,
rejected, filtered. IPv4 and IPv6 alike: a flow to an IPv6 address leaves from the
prober's IPv6 address, an echo is ICMPv6 (`meta l4proto ipv6-icmp`), a reject answers
in ICMPv6.

What the kernel answers whatever the rules say (measured on Linux 6.18: a router
namespace between two /24s, every reject kind, accept and drop, SYN, UDP and echo
request sent to the router's MAC address; see `kernel_silence`):
- the broadcast address of a segment the router is on (its own segment's or
  another's) and the limited broadcast 255.255.255.255 are the router's own
  broadcasts: the packet meets the *input* hook, never forward, and nothing answers:
  a reject sends no RST and no ICMP error for a packet routed as broadcast (a TCP
  listener ignores the SYN; a UDP service gets the datagram, but answers from its
  own address, which a probe does not take for the broadcast's answer);
- multicast (224.0.0.0/4, ff00::/8) is neither routed nor for the router unless it
  joined the group: prerouting sees it, input and forward do not, nothing answers;
- a segment's network address is no broadcast to Linux (no `broadcast` route for
  it in the local table): it is forwarded like any address nobody holds, and a
  reject answers it as usual. (IPv6 has no broadcast; a prefix's first address is the
  subnet-router anycast a forwarding router answers: rule fuzzing does not aim at it.)
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

from labwarden.routers.nftables.model import (EPHEMERAL_PORT, ICMP_TYPES, ICMPV6_TYPES, REJECT6_CODES, REJECT_CODES,
                                              REJECTX_CODES, Decision, Packet, Ruleset)


@dataclass(frozen=True)
class World:
    """What the prediction needs of the lab around the router."""
    router_ifaces: dict            # segment -> the router's interface on it
    router_addresses: frozenset    # IPv4Address and IPv6Address
    node_segments: dict            # node -> its segment
    node_addresses: dict           # node -> its address
    subnets: dict                  # segment -> IPv4Network
    outside: str                   # the segment of the router's default route
    listening: frozenset           # (node, proto, port): who answers
    router: str = "router"
    near: dict | None = None       # node -> addresses of its next-hop routers (0 hops away)
    node_addresses6: dict | None = None  # node -> its IPv6 address on its side (dual-stack nodes only)
    subnets6: dict | None = None   # segment -> IPv6Network (segments with a prefix only)

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
                   router_addresses=frozenset(router.all_addresses()),
                   node_segments=side,
                   node_addresses={n: node.addresses[side[n]] for n, node in nodes.items()},
                   subnets={s: seg.subnet for s, seg in topology.segments.items()},
                   outside=outside,
                   listening=frozenset((n, s.proto, s.port) for n, svcs in policy.services.items()
                                       for s in svcs),
                   router=policy.router,
                   near={n: frozenset(a for hop in [node.gateway, *node.routes.values(), node.gateway6,
                                                    *node.routes6.values()] if hop
                                      for holder in [topology.node_at(hop)] if holder
                                      for a in holder.all_addresses())
                         for n, node in nodes.items()},
                   node_addresses6={n: node.addresses6[side[n]] for n, node in nodes.items()
                                    if side[n] in node.addresses6},
                   subnets6={s: seg.subnet6 for s, seg in topology.segments.items() if seg.subnet6})

    def subnet(self, segment: str, version: int):
        """The segment's prefix of that IP version (None: it has none)."""
        return self.subnets.get(segment) if version == 4 else (self.subnets6 or {}).get(segment)

    def address_of(self, node: str, version: int):
        return self.node_addresses.get(node) if version == 4 else (self.node_addresses6 or {}).get(node)

    def segment_of(self, address: IPv4Address | IPv6Address) -> str:
        """The router's segment towards address: its own, else the default route's."""
        return next((s for s in self.router_ifaces
                     if (net := self.subnet(s, address.version)) is not None and address in net), self.outside)

    def iface_towards(self, address: IPv4Address | IPv6Address) -> str:
        return self.router_ifaces[self.segment_of(address)]

    def node_at(self, address: IPv4Address | IPv6Address) -> str | None:
        if address in self.router_addresses:
            return self.router
        held = self.node_addresses if address.version == 4 else (self.node_addresses6 or {})
        return next((n for n, a in held.items() if a == address), None)


@dataclass(frozen=True)
class Prediction:
    verdict: str                  # open | closed | rejected | filtered
    decision: Decision            # of the packet that decided
    packet: Packet

    def explain(self) -> str:
        by = self.decision.decided_by
        return f"{self.verdict}: {self.packet} -> {self.decision.verdict}" + (f" by {by}" if by else "")


def kernel_silence(dst, router_subnets) -> str | None:
    """Why no probe of dst can be answered through a router on these subnets, whatever its
    rules say (None: dst is an ordinary address). See the module's docstring."""
    dst = ip_address(dst)
    if dst.is_multicast:
        return "a multicast address: not routed, and not for the router (no group joined)"
    if dst == IPv4Address("255.255.255.255"):
        return "the limited broadcast: the router's own broadcast, and no kernel answers one"
    net = next((n for n in router_subnets
                if n.version == dst.version == 4 and dst == n.broadcast_address and n.prefixlen < 31), None)
    if net is not None:
        return (f"the broadcast address of {net}: the router takes it as its own broadcast (input hook), "
                "and the kernel answers no broadcast: no RST, no ICMP error, whatever the rule")
    return None


def predict(ruleset: Ruleset, world: World, src: str, dst, proto: str,
            port: int | None) -> Prediction:
    """What a probe from node `src` to `dst` observes through the router (src and dst on
    different segments; dst a node's or the router's address, or a segment's edge; an
    IPv6 dst needs src's IPv6 address). proto: tcp, udp or icmp (an echo, ICMPv6 on IPv6)."""
    dst = ip_address(dst)
    saddr = world.address_of(src, dst.version)
    if saddr is None:
        raise ValueError(f"{src} has no IPv{dst.version} address to probe {dst} from")
    iif = world.iface_towards(saddr)
    target = world.node_at(dst)
    silent = kernel_silence(dst, [world.subnets[s] for s in world.router_ifaces])
    local = target == world.router or silent is not None
    hook, oif = ("input", "") if local else ("forward", world.iface_towards(dst))
    types = ICMPV6_TYPES if dst.version == 6 else ICMP_TYPES
    icmp_proto = "ipv6-icmp" if dst.version == 6 else "icmp"
    wire = icmp_proto if proto == "icmp" else proto
    icmp = types["echo-request"] if proto == "icmp" else None
    request = Packet(hook, iif, oif, saddr, dst, wire, port, icmp, "new")
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
        reply = Packet("forward", oif, iif, dst, saddr, icmp_proto, None, types["echo-reply"], "established")
    elif listening or proto == "tcp":  # a SYN-ACK or a RST, a UDP answer
        reply = Packet("forward", oif, iif, dst, saddr, proto, EPHEMERAL_PORT, None, "established")
    else:  # the target's port-unreachable is RELATED to the flow
        reply = Packet("forward", oif, iif, dst, saddr, icmp_proto, None,
                       types["destination-unreachable"], "related")
    back = ruleset.evaluate(reply)
    if back.verdict != "accept":  # a reject of the reply answers the target, not the prober
        return Prediction("filtered", back, reply)
    return Prediction("open" if listening else "closed", decision, request)


def reject_code(arg: str | None, version: int) -> int:
    """The ICMP (IPv4) or ICMPv6 code a reject answers with (plain: port-unreachable)."""
    kind, _, name = (arg or "icmpx port-unreachable").partition(" ")
    if kind == "icmpx":
        return REJECTX_CODES[name][version == 6]
    return (REJECT6_CODES if kind == "icmpv6" else REJECT_CODES)[name]


def _rejected(arg: str | None, proto: str, local: bool, dst, world: World, src: str) -> str:
    """How the agent classifies the router's answer to a rejected request."""
    if arg == "tcp reset":
        return _rst_from(dst, world, src)
    port_unreachable = (REJECT6_CODES if dst.version == 6 else REJECT_CODES)["port-unreachable"]
    # for its own addresses the router answers from the probed address: a UDP
    # port-unreachable from the target itself is what a closed port looks like
    if local and proto == "udp" and reject_code(arg, dst.version) == port_unreachable:
        return "closed"
    return "rejected"


def _rst_from(dst, world: World, src: str) -> str:
    """A RST the router sends in dst's name leaves with ttl 64: the agent calls it forged
    (rejected) unless dst is on the prober's own segment or an address of its next hop,
    or other routers on the way lowered its ttl (src is not on a segment of the router)."""
    on_link = dst in (world.subnet(world.node_segments[src], dst.version) or ())
    near = dst in (world.near or {}).get(src, ())
    far = world.node_segments[src] not in world.router_ifaces
    return "closed" if on_link or near or far else "rejected"


__all__ = ["Prediction", "World", "kernel_silence", "predict", "reject_code"]
