"""The surface of one address (IPv4 or IPv6) from one node: every TCP port and the usual UDP ports
probed in batches and judged by the oracle, or swept at full speed for what lands
inside; for what answers against the oracle, where its connection lands
(`labwarden.checks.landing`). The NAT checks scan the router's public address with it,
the tunnel checks an edge's.
"""

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address

from labwarden.probe import packets
from labwarden.checks.landing import CAPTURE_S, Landing, first_packet, locate, ports_of
from labwarden.checks.matrix import Cell, observe
from labwarden.declared.policy import Policy, Service
from labwarden.probe import NodeJob

SCAN_BATCH = 16384         # connect() probes per agent call: within the ephemeral port range (28,232)
SWEEP_BATCH = 8192         # raw packets per agent call: its request travels as one argument (128 KiB)
COMMON_UDP = (53, 67, 69, 123, 137, 161, 443, 500, 514, 1194, 1701, 1900, 3478, 4500, 5060,
              5353, 11211, 51820)


@dataclass
class Surface:
    """A scan of one address from one node: a cell per port probed, judged by the oracle,
    and where the connections that reached inside nodes landed."""
    src: str
    address: IPv4Address | IPv6Address
    cells: list[Cell]
    landings: dict = field(default_factory=dict)   # flow -> Landing

    def unexpected(self) -> list[Cell]:
        return [c for c in self.cells if not c.ok]

    def misrouted(self) -> list[Landing]:
        """Connections that landed where the policy delivers nothing (or elsewhere)."""
        return [landing for landing in self.landings.values() if not landing.ok]

    def answering(self) -> list[Cell]:
        return [c for c in self.cells if c.observed.verdict in ("open", "closed")]

    def explain(self, policy: Policy, cell: Cell) -> str:
        text = cell.message(policy)
        landing = self.landings.get(cell.flow)
        if landing is not None and landing.landed:
            text += "; the connection lands on " + landing.where(policy)
        return text

    def problems(self, policy: Policy) -> list[str]:
        wrong = self.unexpected()
        told = {c.flow for c in wrong}
        return ([self.explain(policy, c) for c in wrong]
                + [landing.explain(policy) for landing in self.misrouted() if landing.flow not in told])


async def scan(lab, policy: Policy, src: str, address, tcp_ports=range(1, 65536),
               udp_ports=COMMON_UDP, timeout: float = 1.0, batch: int = SCAN_BATCH) -> Surface:
    """Every TCP port in tcp_ports and the UDP ports of an address, from src, in batches;
    then, for each TCP port that answers against the oracle, where its connection lands."""
    flows = [policy.flow(src, address, Service("tcp", p)) for p in tcp_ports]
    flows += [policy.flow(src, address, Service("udp", p)) for p in udp_ports]
    observed = {}
    for start in range(0, len(flows), batch):
        observed.update(await observe(lab, flows[start:start + batch], timeout))
    surface = Surface(src, ip_address(address),
                      [Cell(f, policy.expect(f), observed[f]) for f in flows])
    # where an IPv6 connection lands is not located: captures and marked datagrams read IPv4
    wrong = [c.flow for c in surface.unexpected()
             if c.flow.proto == "tcp" and c.observed.verdict in ("open", "closed") and c.flow.dst.version == 4]
    if wrong:
        surface.landings = await locate(lab, policy, src, wrong, timeout)
    return surface


async def sweep(lab, policy: Policy, src: str, address, proto: str = "tcp", ports=range(1, 65536),
                batch: int = SWEEP_BATCH) -> dict:
    """A SYN (or a UDP datagram) from src to every port of address at full speed, while
    every other node captures: {port sent to: [(node, port) it landed on]}. Nothing waits
    for an answer, so a router's SYN limit (it counts the SYNs the router receives itself;
    a forwarded one is never counted) slows nothing, and a forward to a node that never
    answers is found too."""
    topology = policy.topology
    node = topology.nodes[src]
    segment = topology.segment_of(IPv4Address(address))
    own = node.addresses.get(segment.name if segment else None) or node.addresses[node.segments[0]]
    senders = {own} | set(topology.nodes[policy.router].addresses.values())  # masqueraded or not
    listeners = [n for n in topology.nodes if n not in (src, policy.router)]
    ports, landed = list(ports), {}
    for start in range(0, len(ports), batch):
        part = ports[start:start + batch]
        jobs = {n: NodeJob(capture_s=CAPTURE_S) for n in listeners}
        jobs[src] = NodeJob(send=packets.port_sweep(own, IPv4Address(address), part, proto))
        answers = await lab.run(jobs)
        sent = set(part)
        for listener in listeners:
            for seen in packets.decode(answers[listener].captured):
                if (seen.kind == proto and first_packet(seen) and seen.src in senders
                        and ports_of(seen)[0] in sent):
                    landed.setdefault(ports_of(seen)[0], []).append((listener, ports_of(seen)[1]))
    return landed
