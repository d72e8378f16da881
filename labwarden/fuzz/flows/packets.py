"""The odd packets of flow fuzzing: crafted with scapy, each carrying a marker, and
found again in what the target node captured (in one frame or in reassembled fragments).
"""

from __future__ import annotations

from ipaddress import IPv4Address

from labwarden.declared.policy import Policy
from labwarden.fuzz.flows.flow import ICMP_ERRORS, FuzzFlow


def _source_address(policy: Policy, src: str, dst: IPv4Address) -> IPv4Address:
    """The address a node's kernel puts on a packet to dst (on-link segment first)."""
    node = policy.topology.nodes[src]
    for segment, address in node.addresses.items():
        if dst in policy.topology.segments[segment].subnet:
            return address
    return node.addresses[node.segments[0]]


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
