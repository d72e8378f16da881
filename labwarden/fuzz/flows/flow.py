"""A fuzzed flow (`FuzzFlow`): from a node to an address, an ordinary probe or an odd
packet; its label, and the one-line spec the replay command takes (`spec`/`parse`).

The tables name the odd packets the fuzzer crafts (`labwarden.fuzz.flows.packets`);
`SAFE_RANGES` are the only places an address off the lab's ranges may be.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from labwarden.declared.policy import Policy, Service

# ranges that can never be real networks (RFC 2544, RFC 5737): the only places an
# address "next to a lab range" may be, so that a probe never leaves the lab
SAFE_RANGES = tuple(IPv4Network(n) for n in ("198.18.0.0/15", "192.0.2.0/24", "198.51.100.0/24",
                                             "203.0.113.0/24"))
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
