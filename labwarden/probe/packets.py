"""Raw packets, crafted and read with scapy on the engine's side.

The probe agent stays standard-library only: it sends the bytes made here
(`l2` frames on a named interface, `l3` IPv4 packets routed by the node's
kernel) and returns captured frames as bytes, which are decoded here.
"""

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from scapy.config import conf

# Every packet made here names its addresses (and frames their MACs): the host's routing
# tables are never asked, so scapy does not read them when it loads. Reading them (one
# netlink dump per interface) took 3-5 s of every pytest's start on a CI host with a hundred
# Docker interfaces, and each mutant's run is a pytest of its own.
conf.route_autoload = conf.route6_autoload = False

from scapy.layers.dns import DNS, DNSQR  # noqa: E402 (after the switch above)
from scapy.layers.inet import IP, UDP  # noqa: E402
from scapy.layers.l2 import ARP, Ether  # noqa: E402
from scapy.packet import Raw  # noqa: E402

BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"


def arp_sweep(iface: str, mac: str, ip: IPv4Address, network: IPv4Network) -> list[dict]:
    """One ARP who-has per host address of `network`, sent from (mac, ip) on iface."""
    template = bytes(Ether(src=mac, dst=BROADCAST_MAC) /
                     ARP(op="who-has", hwsrc=mac, psrc=str(ip), pdst="0.0.0.0"))
    # the target address is the frame's last four bytes: patch it rather than
    # build hundreds of frames with scapy (about a millisecond each)
    return [{"l2": (template[:-4] + target.packed).hex(), "iface": iface}
            for target in network.hosts()]


def discovery_queries(iface: str, mac: str, ip: IPv4Address) -> list[dict]:
    """Broadcast and multicast discovery: mDNS, SSDP and a broadcast to both ports."""
    mdns = DNS(rd=0, qd=DNSQR(qname="_services._dns-sd._udp.local", qtype="PTR"))
    ssdp = Raw(b'M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: "ssdp:discover"\r\n'
               b"MX: 1\r\nST: ssdp:all\r\n\r\n")
    frames = [
        Ether(src=mac, dst="01:00:5e:00:00:fb") / IP(src=str(ip), dst="224.0.0.251", ttl=255) /
        UDP(sport=5353, dport=5353) / mdns,
        Ether(src=mac, dst="01:00:5e:7f:ff:fa") / IP(src=str(ip), dst="239.255.255.250", ttl=4) /
        UDP(sport=41900, dport=1900) / ssdp,
        Ether(src=mac, dst=BROADCAST_MAC) / IP(src=str(ip), dst="255.255.255.255") /
        UDP(sport=45353, dport=5353) / mdns,
        Ether(src=mac, dst=BROADCAST_MAC) / IP(src=str(ip), dst="255.255.255.255") /
        UDP(sport=41901, dport=1900) / ssdp,
    ]
    return [{"l2": bytes(f).hex(), "iface": iface} for f in frames]


def marked_udp(src: IPv4Address, dst: IPv4Address, marker: bytes, sport: int, dport: int = 9999) -> dict:
    """An IPv4/UDP packet with any source address, carrying a marker to look for.

    Give each sender its own source port: flows that differ only in their inside
    source, masqueraded at once, race for one NAT tuple and the loser is dropped."""
    return {"l3": bytes(IP(src=str(src), dst=str(dst), ttl=64) /
                        UDP(sport=sport, dport=dport) / Raw(marker)).hex()}


def port_sweep(src: IPv4Address, dst: IPv4Address, ports, proto: str = "tcp") -> list[dict]:
    """An IPv4 TCP SYN (or an empty UDP datagram) from src to each port of dst, its source
    port the same as its destination port: wherever one is captured (after any DNAT), its
    source port names the port it was sent to. Made from one template with the ports and
    checksum patched in (scapy takes about a millisecond a packet, and a sweep is 65,535)."""
    number, length = {"tcp": (6, 20), "udp": (17, 8)}[proto]
    ip = bytes(IP(src=str(src), dst=str(dst), ttl=64, id=0x4C57, proto=number) / Raw(bytes(length)))[:20]
    if proto == "udp":  # checksum 0: none, which IPv4 allows
        return [{"l3": (ip + struct.pack("!HHHH", port, port, 8, 0)).hex()} for port in ports]
    head = struct.pack("!IIBBHHH", 0x4C57_0001, 0, 5 << 4, 0x02, 64240, 0, 0)  # after the ports
    pseudo = IPv4Address(src).packed + IPv4Address(dst).packed + struct.pack("!BBH", 0, 6, 20)
    base = sum(struct.unpack("!16H", pseudo + b"\0\0\0\0" + head))
    out = []
    for port in ports:
        total = base + 2 * port
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        tcp = struct.pack("!HH", port, port) + head[:12] + struct.pack("!H", ~total & 0xFFFF) + head[14:]
        out.append({"l3": (ip + tcp).hex()})
    return out


@dataclass(frozen=True)
class Seen:
    """One captured frame, reduced to what isolation checks look at."""
    iface: str
    direction: str
    src: IPv4Address | None       # IPv4 source, or the ARP sender address
    dst: IPv4Address | None
    kind: str                     # 'arp-request', 'arp-reply', 'udp', 'tcp', 'icmp', 'ip', 'other'
    payload: bytes

    def __str__(self):
        return f"{self.kind} {self.src} -> {self.dst} on {self.iface} ({self.direction})"


IP_KINDS = {1: "icmp", 6: "tcp", 17: "udp"}


def decode(captured: list[dict]) -> list[Seen]:
    """Reduce captured frames to `Seen` (plain struct parsing: captures run to thousands
    of frames, and scapy takes about a millisecond per frame)."""
    seen = []
    for frame in captured:
        data = bytes.fromhex(frame["hex"])
        iface, direction = frame.get("iface", "?"), frame.get("dir", "in")
        ethertype = int.from_bytes(data[12:14], "big") if len(data) >= 14 else 0
        if ethertype == 0x0806 and len(data) >= 42:
            kind = "arp-reply" if data[21] == 2 else "arp-request"
            seen.append(Seen(iface, direction, IPv4Address(data[28:32]), IPv4Address(data[38:42]), kind, b""))
        elif ethertype == 0x0800 and len(data) >= 34:
            header = (data[14] & 0x0F) * 4
            seen.append(Seen(iface, direction, IPv4Address(data[26:30]), IPv4Address(data[30:34]),
                             IP_KINDS.get(data[23], "ip"), data[14 + header:]))
        else:
            seen.append(Seen(iface, direction, None, None, "other", b""))
    return seen
