"""Raw packets, crafted and read with scapy on the engine's side.

The probe agent stays standard-library only: it sends the bytes made here
(`l2` frames on a named interface, `l3` IPv4 packets routed by the node's
kernel; IPv4 or IPv6) and returns captured frames as bytes, which are decoded here.
"""

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, ip_address

from scapy.config import conf

# Every packet made here names its addresses (and frames their MACs): the host's routing
# tables are never asked, so scapy does not read them when it loads. Reading them (one
# netlink dump per interface) took 3-5 s of every pytest's start on a CI host with a hundred
# Docker interfaces, and each mutant's run is a pytest of its own.
conf.route_autoload = conf.route6_autoload = False

from scapy.layers.dns import DNS, DNSQR  # noqa: E402 (after the switch above)
from scapy.layers.inet import IP, UDP  # noqa: E402
from scapy.layers.dhcp6 import DHCP6_Reply, DHCP6OptServerId  # noqa: E402
from scapy.layers.inet6 import (ICMPv6EchoRequest, ICMPv6ND_NS, ICMPv6ND_RA,  # noqa: E402
                                ICMPv6NDOptSrcLLAddr, IPv6)
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


def _ip(src, dst, ttl: int = 64):
    """An IPv4 or IPv6 header for the pair (both of one family)."""
    if ip_address(str(dst)).version == 6:
        return IPv6(src=str(src), dst=str(dst), hlim=ttl)
    return IP(src=str(src), dst=str(dst), ttl=ttl)


def marked_udp(src, dst, marker: bytes, sport: int, dport: int = 9999) -> dict:
    """An IPv4/UDP or IPv6/UDP packet with any source address, carrying a marker to look for.

    Give each sender its own source port: flows that differ only in their inside
    source, masqueraded at once, race for one NAT tuple and the loser is dropped."""
    return {"l3": bytes(_ip(src, dst) / UDP(sport=sport, dport=dport) / Raw(marker)).hex()}


# ---------------------------------------------------------------- IPv6 on a link

ALL_NODES6 = "ff02::1"


def _multicast_mac(group: IPv6Address) -> str:
    """33:33 and the group's last four bytes (RFC 2464)."""
    return "33:33:" + ":".join(f"{b:02x}" for b in group.packed[-4:])


def _checksum(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def nd_sweep(iface: str, mac: str, ip: IPv6Address, targets) -> list[dict]:
    """One neighbour solicitation per target address, sent from (mac, ip) on iface to the
    target's solicited-node group: the IPv6 ARP sweep. Made from one template with the
    target, group and checksum patched in (scapy takes about a millisecond a frame)."""
    template = bytes(Ether(src=mac, dst="33:33:ff:00:00:00") /
                     IPv6(src=str(ip), dst="ff02::1:ff00:0", hlim=255) /
                     ICMPv6ND_NS(tgt="::") / ICMPv6NDOptSrcLLAddr(lladdr=mac))
    head, icmp = template[:54], bytearray(template[54:])  # Ethernet 14 + IPv6 40
    out = []
    for target in targets:
        group = IPv6Address("ff02::1:ff00:0").packed[:13] + target.packed[13:]
        icmp[8:24], icmp[2:4] = target.packed, b"\0\0"
        pseudo = ip.packed + group + struct.pack("!IxxxB", len(icmp), 58)
        icmp[2:4] = struct.pack("!H", _checksum(pseudo + bytes(icmp)))
        frame = (bytes.fromhex(_multicast_mac(IPv6Address(group)).replace(":", "")) + head[6:38]
                 + group + bytes(icmp))
        out.append({"l2": frame.hex(), "iface": iface})
    return out


def all_nodes_echo(iface: str, mac: str, ip: IPv6Address) -> dict:
    """An echo request to ff02::1 on the own link: every IPv6 host there answers."""
    return {"l2": bytes(Ether(src=mac, dst=_multicast_mac(IPv6Address(ALL_NODES6))) /
                        IPv6(src=str(ip), dst=ALL_NODES6, hlim=1) /
                        ICMPv6EchoRequest(id=0x4C57, seq=1, data=b"labwarden")).hex(), "iface": iface}


def rogue_router(src: IPv6Address, dst, marker: bytes, link: tuple[str, str] | None = None) -> list[dict]:
    """What a rogue router sends: a router advertisement and a DHCPv6 reply (server port 547
    to client port 546), both carrying the marker; with `link` (iface, mac) as frames on that
    link (for dst ff02::1), else routed. The advertisement offers no prefix, has a router
    lifetime of 0 and a source that is not link-local, so a host that gets it ignores it
    (RFC 4861 6.1.2): sending it changes no node's routes."""
    ra = IPv6(src=str(src), dst=str(dst), hlim=255) / ICMPv6ND_RA(routerlifetime=0) / Raw(marker)
    dhcp = (IPv6(src=str(src), dst=str(dst), hlim=64) / UDP(sport=547, dport=546) /
            DHCP6_Reply(trid=0x4C57) / DHCP6OptServerId() / Raw(marker))
    if link is None:
        return [{"l3": bytes(ra).hex()}, {"l3": bytes(dhcp).hex()}]
    iface, mac = link
    ether = Ether(src=mac, dst=_multicast_mac(IPv6Address(str(dst))))
    return [{"l2": bytes(ether / ra).hex(), "iface": iface}, {"l2": bytes(ether / dhcp).hex(), "iface": iface}]
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
    src: IPv4Address | IPv6Address | None  # IP source, or the ARP sender address
    dst: IPv4Address | IPv6Address | None
    kind: str     # 'arp-request', 'arp-reply', 'udp', 'tcp', 'icmp', 'ip', 'other', and ICMPv6's:
    payload: bytes  # 'echo6-request', 'echo6-reply', 'rs', 'ra', 'ns', 'na', 'icmp6' (the rest)

    def nd_target(self) -> IPv6Address | None:
        """The address a neighbour solicitation asks about, or an advertisement answers for."""
        if self.kind in ("ns", "na") and len(self.payload) >= 24:
            return IPv6Address(self.payload[8:24])
        return None

    def __str__(self):
        return f"{self.kind} {self.src} -> {self.dst} on {self.iface} ({self.direction})"


IP_KINDS = {1: "icmp", 6: "tcp", 17: "udp"}
ICMP6_KINDS = {128: "echo6-request", 129: "echo6-reply", 133: "rs", 134: "ra", 135: "ns", 136: "na"}
IPV6_EXTENSIONS = (0, 43, 60)  # hop-by-hop, routing, destination options: skipped to the payload


def _ipv6(iface, direction, packet: bytes) -> "Seen":
    next_header, at = packet[6], 40
    while next_header in IPV6_EXTENSIONS and len(packet) >= at + 8:
        next_header, at = packet[at], at + 8 * (packet[at + 1] + 1)
    payload = packet[at:]
    if next_header == 58:
        kind = ICMP6_KINDS.get(payload[0], "icmp6") if payload else "icmp6"
    else:
        kind = IP_KINDS.get(next_header, "ip")
    return Seen(iface, direction, IPv6Address(packet[8:24]), IPv6Address(packet[24:40]), kind, payload)


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
        elif ethertype == 0x86DD and len(data) >= 54:
            seen.append(_ipv6(iface, direction, data[14:]))
        else:
            seen.append(Seen(iface, direction, None, None, "other", b""))
    return seen
