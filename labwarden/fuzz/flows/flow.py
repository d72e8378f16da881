"""A fuzzed flow (`FuzzFlow`): from a node to an address, an ordinary probe or an odd
packet; its label, and the one-line spec the replay command takes (`spec`/`parse`).

The tables name the odd packets the fuzzer crafts (`labwarden.fuzz.flows.packets`);
`SAFE_RANGES` are the only places an address off the lab's ranges may be.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, ip_address

from labwarden.declared.fields import within
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
    dst: IPv4Address | IPv6Address          # IPv6: ordinary probes only (crafted packets are IPv4)
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
        """The flow of a spec (as `spec` writes it); a malformed one is a ValueError saying
        what is wrong, so the replay option is refused before any lab starts."""
        words = str(spec).split()
        if len(words) not in (3, 4):
            raise ValueError(f"{spec!r}: expected 'SRC DST PROTO[/PORT] [KIND=VALUE]'")
        src, dst, what = words[:3]
        if src not in policy.topology.nodes:
            raise ValueError(f"{src!r} is not a node; nodes: {', '.join(policy.topology.nodes)}")
        try:
            address = ip_address(dst)
        except ValueError:
            raise ValueError(f"{dst!r} is not an IPv4 or IPv6 address") from None
        ranges = list(dict.fromkeys([*policy.topology.lab_ranges(), *SAFE_RANGES, *policy.topology.lab_ranges6()]))
        # (`in` does not check the family: an IPv6 address may look inside an IPv4 range)
        if not within(address, ranges):  # stays in the lab
            raise ValueError(f"{dst} is outside the lab's segments and the reserved test ranges "
                             f"({', '.join(map(str, ranges))})")
        proto, slash, port = what.partition("/")
        if proto not in ("tcp", "udp", "icmp") or (proto == "icmp") == bool(slash) \
                or (port and not (port.isascii() and port.isdigit() and int(port) <= 65535)):
            raise ValueError(f"{what!r}: expected tcp/N, udp/N (N in 0..65535) or icmp")
        odd = tuple(words[3].split("=", 1)) if len(words) == 4 else None
        if address.version == 6 and (odd or port == "0"):
            raise ValueError(f"{spec!r}: crafted packets (KIND=VALUE, port 0) are IPv4 only; "
                             f"to {dst} only tcp/N (N > 0), udp/N or icmp")
        if odd and (len(odd) != 2 or not _odd_value_ok(*odd)):
            raise ValueError(f"{words[3]!r}: expected flags=F (letters of {TCP_FLAG_LETTERS}), "
                             f"frag={'|'.join(FRAGMENTS)}, opt={'|'.join(OPTIONS)}, spoof=ADDRESS, "
                             "ttl=0..255 or icmp=TYPE/CODE (0..255 each)")
        return cls(src, address, proto, int(port) if port else None, odd)

    def __repr__(self):
        return f"FuzzFlow({self.spec()!r})"


TCP_FLAG_LETTERS = "FSRPAUEC"


def _odd_value_ok(kind: str, value: str) -> bool:
    def byte(text):
        return text.isascii() and text.isdigit() and int(text) <= 255
    if kind == "flags":
        return all(c in TCP_FLAG_LETTERS for c in value)
    if kind == "spoof":
        try:
            IPv4Address(value)
        except ValueError:
            return False
        return True
    if kind == "icmp":
        return value.count("/") == 1 and all(byte(v) for v in value.split("/"))
    return {"frag": value in FRAGMENTS, "opt": value in OPTIONS, "ttl": byte(value)}.get(kind, False)
