"""labwarden probe agent: a batch of probes, run from inside nodes' network namespaces.

Standard library only (Python >= 3.11): raw packets are crafted by the engine and come
as hex. Usage: ``python3 agent.pyz REQUEST`` (the zipapp of this folder, see __main__.py;
``python3 agent.py REQUEST`` here works too; ``-``: read it from stdin), REQUEST being
base64(zlib(JSON)); prints one line of JSON. Request (every node key optional)::

    {"timeout": 1.0, "allowed": ["198.18.0.0/15", ...],
     "nodes": {"laptop": {
        "netns": "/proc/1234/ns/net",        # null: stay where the agent runs (live lab)
        "container": ID, "pid_start": N,     # what that pid must still be: see netns.py
        "setup": {"rename": {MAC: NAME}, "routes": [[PREFIX|"default", NEXTHOP]],
                  "only_these_routes": true,   # other routes of the main table go (not the default)
                  "nft": RULESET, "nft_add": TEXT,
                  "iptables": IPTABLES_RESTORE_FILE, "ip6tables": IP6TABLES_RESTORE_FILE,
                  "flush_conntrack": true, "forget_neighbours": true},
        "info": true, "capture": {"seconds": 2.0}, "trace": true,
        "start_at": EPOCH_S,                 # send from then on (live labs: agents on many hosts)
        "near": [IP],                        # off-link addresses 0 hops away (the gateway's others)
        "send": [{"l3": HEX_IPV4_PACKET}, {"l2": HEX_FRAME, "iface": NAME}],
        "probes": [{"id": 0, "proto": "tcp"|"udp"|"icmp", "dst": IP, "port": N,
                    "payload": HEX}],
        "fetch": [{"id": 0, "dst": IP, "port": N, "send": HEX, "tls": false,
                   "read_s": 2.0, "max": 65536}]}}}

Instead of "nodes", a request may hold "rounds": [{"nodes": {...}}, ...], run one after
the other in this one process (a router's ruleset per round, say); the response is then
{"rounds": [RESPONSE, ...]}, each as below.

One thread per node enters the node's namespace with setns(2) (sockets and subprocesses
made afterwards live there; only after netns.py has checked that the pid still is the
node's container's process, the one plumbed; the node's answer gets its "pid_start"),
then: setup -> info -> sniffer (and capture) starts -> a
barrier shared by all nodes, so every capture runs before anyone sends -> raw sends ->
all probes at once -> answers, for at most `timeout` after the last probe left -> end of
the capture window. A whole batch costs about one timeout, not the sum.

Guard: before anything happens anywhere, every probe and fetch dst and raw packet destination
(IPv4 dst; ARP target for an ARP frame) must lie in `allowed`, 127.0.0.0/8, 224.0.0.0/4
or 255.255.255.255, else the response is only {"error": "refused: ...", "refused": [IP]}.

Verdicts, like nmap's, come from the packets a sniffer (AF_PACKET) sees arriving for
this node; the probe's own socket is only a fallback:

- tcp: open = SYN-ACK from dst:port; closed = RST from dst; rejected = ICMP unreachable
  about the flow, or a RST forged on the way (heuristic: ttl exactly 64/128/255, i.e. 0
  hops, though dst is not on-link nor in the node's `near` list (the addresses of its
  first-hop router): `by` is then the first hop, who forged it);
- udp: open = any datagram from dst:port; closed = ICMP port-unreachable from dst
  itself; rejected = any other ICMP unreachable, or a port-unreachable from elsewhere;
- icmp: open = echo reply from dst; rejected = ICMP unreachable about the echo;
- filtered = nothing within the timeout. ICMP time-exceeded counts as rejected. For
  multicast/broadcast dsts any host may answer. A probe that cannot leave is filtered
  (EPERM: this node's own firewall) or rejected (no route), by null; other local
  failures give the verdict "error".

No evidence is lost silently. An answer the sniffer missed but a TCP probe's socket saw is
classified from the socket (the detail says the sniffer missed it): an ICMP error from its
error queue (IP_RECVERR: type, code and sender) is rejected; a refusal without one is a RST,
closed when only dst can send it (dst on-link, local or `near`), else an "error" (dst's RST or
a router's forged one: only the packet's ttl would tell). "filtered" becomes "error" when the
kernel dropped frames for the node's sniffer, or when the sniffer had not read up to the
end of the window; a capture that lost frames says so (`capture_truncated`,
`sniffer_drops`), and the engine refuses to read it.

Without root (no AF_PACKET sniffer, e.g. a live host reached as a plain user) the agent
probes with connect() and ping sockets (net.ipv4.ping_group_range) instead, and says so
("mode": "connect"): open = connected / a reply; closed = ECONNREFUSED (taken to come from
dst: a router's forged RST or port-unreachable looks the same); rejected = another ICMP
error as an errno; `by` is a guess. Captures and raw sends need root and fail the node.

Response::

    {"nodes": {"laptop": {"error": null, "elapsed_s": 0.5, "sent": 0,
        "results": [{"id": 0, "verdict": "open", "by": "198.18.10.10", "ttl": 63,
                     "rtt_ms": 0.41, "detail": "SYN-ACK from 198.18.10.10 (ttl 63)"}],
        "info": {"interfaces": [{"name", "mac", "up", "addrs": ["IP/LEN"]}],
                 "routes": [{"dst", "via", "dev"}]},
        "captured": [{"iface": "eth0", "dir": "in"|"out", "hex": FRAME}],
        "capture_truncated": N,              # only when frames beyond MAX_FRAMES were not kept
        "sniffer_drops": N}},                # only when the kernel dropped frames for the sniffer
     "elapsed_s": 0.6, "rusage": {"maxrss_kb": N, "cpu_s": S, "children_cpu_s": S}}

trace: `nft -a monitor trace` runs in the node from before the barrier (the agent waits
until it has joined the trace group) until the end of the capture window; the node's
answer gets {"trace": {"events": [LINE], "ruleset": TEXT of `nft -a list ruleset` then}}.
Only packets some rule marked with `meta nftrace set 1` are traced.

latency, traceroute: after the fetches, timed samples (ICMP echo, TCP connect, HTTP page
load) and traceroutes, all at once; the request and answer are described in timing.py
beside this file; their destinations pass the same guard.

fetch: after the probes, each item is one short TCP exchange of its own (all at once, a
thread each): connect (within `timeout`), optionally TLS (no certificate check), send
`send`, read until the peer closes, `read_s` (default: `timeout`) passes or `max` bytes
came. The node's answer gets {"fetched": [{"id", "sport", "connected": bool,
"error": null|"refused"|"timeout"|"unreachable"|"reset"|TEXT, "eof": bool, "reply": HEX,
"connect_ms", "ms"}]}: what a client of the service gets (an HTTP page, a banner).
info also lists the node's TCP and UDP sockets: "tcp": [{"local": "IP:PORT", "remote": "IP:PORT",
"state": "LISTEN"|"ESTABLISHED"|...}], "udp": [the same; a bound, unconnected one is "CLOSE"],
and "tcp6", "udp6" (endpoints "[IP]:PORT").

A node whose setns, setup command or raw send fails, or whose namespace is refused (its pid
is no longer its container's), has an `error` naming the node, the pid or command, and why;
the other nodes go on. A request the agent cannot read or
accept gets {"error": "bad request: ..."}.

nft: the node's whole ruleset is replaced by RULESET in one transaction (`flush ruleset`
first, whatever the file flushes itself), then `nft list tables` must name exactly the tables
the file declares, else the node fails. nft_add: TEXT is loaded on top of what is there (a
table of the engine's own, such as a trace's), after `nft`.

iptables: the node's whole firewall is replaced by an iptables-restore file: once
`iptables-restore --test` has parsed it (a broken file changes nothing), the nft ruleset
is flushed (iptables-nft tables are nft tables), `iptables-restore` commits every table of the
file in one transaction, then `nft list tables` must name exactly the file's tables (`ip
filter`, ...) and `iptables-save` as many rules per table as the file appends, else the node
fails. (An `ip6tables` key would do the same with ip6tables-restore, family ip6.)

sysctls are not the agent's: it never writes under /proc or mounts anything (a container's
/proc/sys is read-only, and Docker's default AppArmor profile denies writing or remounting
it). A node's sysctls come from its compose `sysctls:` (labwarden.realise.sysctls); a setup
with a "sysctls" key fails the node, saying so.
"""

import base64
import ctypes
import errno
import ipaddress
import json
import os
import random
import re
import resource
import select
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

import netns  # beside this file, as timing is: entering a node's namespace, checked
import timing  # beside this file (the zipapp's root): latency samples and traceroutes

ETH_P_ALL, ETH_P_IP, ETH_P_ARP, ETH_P_8021Q, ETH_P_IPV6 = 0x0003, 0x0800, 0x0806, 0x8100, 0x86DD
PACKET_OUTGOING = 4
SOL_PACKET, PACKET_STATISTICS, SO_ATTACH_FILTER = 263, 6, 26
# classic BPF: keep incoming IP frames only (pkttype != OUTGOING, protocol == 0x0800 or 0x86dd)
INCOMING_IP = [(0x20, 0, 0, 0xFFFFF004), (0x15, 4, 0, PACKET_OUTGOING), (0x20, 0, 0, 0xFFFFF000),
               (0x15, 1, 0, ETH_P_IP), (0x15, 0, 1, ETH_P_IPV6), (0x06, 0, 0, 0x40000), (0x06, 0, 0, 0)]
SO_RCVBUFFORCE, SO_TIMESTAMPNS = 33, 35
SOL_RAW, ICMP_FILTER = 255, 1
IP_RECVERR, SO_EE_ORIGIN_ICMP = 11, 2
IPV6_RECVERR, SO_EE_ORIGIN_ICMP6, ICMP6_FILTER = 25, 3, 1
IPV6_EXTENSIONS = (0, 43, 60)  # hop-by-hop, routing, destination options: skipped to the payload
MAX_FRAMES = 5000
SNIFFER_TICK_S = 0.005    # an idle sniffer says every 5 ms that it has caught up
SNIFFER_BUFFER = 64 << 20  # ~50,000 small frames: room for bursts while Python catches up
ALWAYS_ALLOWED = ("127.0.0.0/8", "224.0.0.0/4", "255.255.255.255/32", "::1/128", "ff02::/16")
ICMP_UNREACH = {0: "net-unreachable", 1: "host-unreachable", 2: "prot-unreachable",
                3: "port-unreachable", 4: "frag-needed", 6: "net-unknown", 7: "host-unknown",
                9: "net-prohibited", 10: "host-prohibited", 13: "admin-prohibited"}
ICMP6_UNREACH = {0: "no-route", 1: "admin-prohibited", 2: "beyond-scope", 3: "addr-unreachable",
                 4: "port-unreachable", 5: "policy-fail", 6: "reject-route"}
DEFAULT_PAYLOADS = {
    53: struct.pack("!6H", 0x4c57, 0x0100, 1, 0, 0, 0) + b"\x03lab\x04test\x00\x00\x01\x00\x01",
    5353: struct.pack("!6H", 0, 0, 1, 0, 0, 0)
    + b"\x09_services\x07_dns-sd\x04_udp\x05local\x00\x00\x0c\x80\x01",  # PTR, unicast reply
    1900: b'M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: "ssdp:discover"\r\n'
          b"MX: 1\r\nST: ssdp:all\r\n\r\n",
}


class AgentError(Exception):
    """A failure worth one line in a node's `error`."""


# ---------------------------------------------------------------- request and guard

def encode_request(request: dict) -> str:
    return base64.b64encode(zlib.compress(json.dumps(request).encode())).decode()


def decode_request(arg: str) -> dict:
    text = sys.stdin.read() if arg == "-" else arg
    return json.loads(zlib.decompress(base64.b64decode(text.strip())))


def raw_destination(item: dict) -> str:
    """The IP address a raw packet is meant for (for ARP: the address asked about)."""
    if "l3" in item:
        data = bytes.fromhex(item["l3"])
        if len(data) >= 40 and data[0] >> 4 == 6:
            return socket.inet_ntop(socket.AF_INET6, data[24:40])
        if len(data) < 20 or data[0] >> 4 != 4:
            raise ValueError("the l3 packet is neither IPv4 nor IPv6")
        return socket.inet_ntoa(data[16:20])
    frame = bytes.fromhex(item["l2"])
    off, ethertype = 14, int.from_bytes(frame[12:14], "big")
    if ethertype == ETH_P_8021Q:
        off, ethertype = 18, int.from_bytes(frame[16:18], "big")
    if ethertype == ETH_P_IP and len(frame) >= off + 20:
        return socket.inet_ntoa(frame[off + 16:off + 20])
    if ethertype == ETH_P_IPV6 and len(frame) >= off + 40:
        return socket.inet_ntop(socket.AF_INET6, frame[off + 24:off + 40])
    if ethertype == ETH_P_ARP and len(frame) >= off + 28:
        return socket.inet_ntoa(frame[off + 24:off + 28])
    raise ValueError(f"the l2 frame (ethertype {ethertype:#06x}) is neither IPv4, IPv6 nor ARP")


def guard(request: dict) -> dict | None:
    """The refusal to answer if anything would go outside the lab's ranges, else None."""
    ranges = [ipaddress.ip_network(n) for n in (*request.get("allowed", []), *ALWAYS_ALLOWED)]
    refused, reasons = [], []
    for name, node in request.get("nodes", {}).items():
        targets = [(p.get("dst"), f"probe {p.get('id')} of node {name}") for p in node.get("probes", [])]
        targets += [(f.get("dst"), f"fetch {f.get('id')} of node {name}") for f in node.get("fetch", [])]
        targets += [(t.get("dst"), f"{key} {t.get('id')} of node {name}")
                    for key in ("latency", "traceroute") for t in node.get(key, [])]
        for i, item in enumerate(node.get("send", [])):
            try:
                targets.append((raw_destination(item), f"raw packet {i} of node {name}"))
            except (ValueError, KeyError) as e:
                refused.append("?")
                reasons.append(f"raw packet {i} of node {name}: {e}, so its destination is unknown")
        for dst, where in targets:
            try:
                inside = in_nets(ipaddress.ip_address(dst), ranges)
            except ValueError:
                inside = False  # a name: never looked up
            if not inside:
                refused.append(str(dst))
                reasons.append(f"{dst} ({where}) is outside the lab's ranges")
    if not refused:
        return None
    more = f"; and {len(reasons) - 5} more" if len(reasons) > 5 else ""
    return {"error": "refused: " + "; ".join(reasons[:5]) + more + ". Allowed: "
                     + ", ".join(map(str, ranges)) + ". Nothing was sent.",
            "refused": sorted(set(refused))}


# ---------------------------------------------------------------- rulesets

NFT_FAMILIES = ("ip", "ip6", "inet", "arp", "bridge", "netdev")
TABLE_STATEMENT = re.compile(r"^\s*(?:(add|create|delete|destroy)\s+)?table\s+(?:(%s)\s+)?([\w.$-]+)"
                             % "|".join(NFT_FAMILIES))
TABLE_LINE = re.compile(r"^table (\S+) (\S+)$", re.M)  # `nft list tables`
XTABLES = [("iptables", "iptables", "ip"), ("ip6tables", "ip6tables", "ip6")]  # setup key, tool, nft family
XT_TABLE = re.compile(r"^\*(\w+)\s*$(.*?)^COMMIT\s*$", re.M | re.S)  # iptables-restore: *TABLE ... COMMIT
XT_RULE = re.compile(r"^-[AI] ", re.M)


def declared_tables(text: str) -> set[tuple[str, str]]:
    """(family, name) of every table an nft file leaves behind after `flush ruleset`: made by
    `table` / `add table` / `create table`, unless a later `delete` / `destroy` removes it."""
    tables = set()
    for line in text.splitlines():
        for statement in line.split("#", 1)[0].split(";"):
            match = TABLE_STATEMENT.match(statement)
            if match:
                verb, family, name = match.groups()
                (tables.discard if verb in ("delete", "destroy") else tables.add)((family or "ip", name))
    return tables


# ---------------------------------------------------------------- packets and the namespace

def checksum(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def parse_ipv4(data: bytes):
    """(src, dst, proto, ttl, l4 bytes) of an IPv4 packet, or None."""
    if len(data) < 20 or data[0] >> 4 != 4:
        return None
    return (socket.inet_ntoa(data[12:16]), socket.inet_ntoa(data[16:20]), data[9], data[8],
            data[(data[0] & 15) * 4:])


def parse_ipv6(data: bytes):
    """(src, dst, next header, hop limit, payload) of an IPv6 packet, past the extension
    headers that come before a payload (a fragment's next header is 44: not parsed), or None."""
    if len(data) < 40 or data[0] >> 4 != 6:
        return None
    nh, off = data[6], 40
    while nh in IPV6_EXTENSIONS and len(data) >= off + 8:
        nh, off = data[off], off + (data[off + 1] + 1) * 8
    return (socket.inet_ntop(socket.AF_INET6, data[8:24]), socket.inet_ntop(socket.AF_INET6, data[24:40]),
            nh, data[7], data[off:])


def parse_ip(data: bytes):
    return parse_ipv6(data) if data[:1] and data[0] >> 4 == 6 else parse_ipv4(data)


def in_nets(ip, nets) -> bool:
    """ip in any of nets, of its own family only (ipaddress would compare the integers)."""
    return any(ip.version == net.version and ip in net for net in nets)


def family_of(dst: str) -> int:
    return socket.AF_INET6 if ":" in dst else socket.AF_INET


def is_group(ip: str) -> bool:
    try:
        return ip == "255.255.255.255" or ipaddress.ip_address(ip).is_multicast
    except ValueError:
        return False


# /proc/thread-self/net shows the calling thread's namespace; /proc/self, the main thread's.
def local_addresses() -> set[str]:
    addrs, last = set(), None
    with open("/proc/thread-self/net/fib_trie") as f:
        for line in f:
            text = line.strip()
            if text.startswith("|--"):
                last = text[4:]
            elif text == "/32 host LOCAL":
                addrs.add(last)
    if os.path.exists("/proc/thread-self/net/if_inet6"):  # absent when the kernel has no IPv6
        with open("/proc/thread-self/net/if_inet6") as f:
            addrs |= {socket.inet_ntop(socket.AF_INET6, bytes.fromhex(line.split()[0])) for line in f if line.strip()}
    return addrs


def connected_subnets() -> list:
    with open("/proc/thread-self/net/route") as f:
        rows = [[socket.inet_ntoa(struct.pack("<I", int(row[i], 16))) for i in (1, 2, 7)]
                for row in (line.split() for line in f.read().splitlines()[1:])]
    nets = [ipaddress.ip_network(f"{dst}/{mask}", strict=False)
            for dst, gw, mask in rows if gw == "0.0.0.0" and mask != "0.0.0.0"]
    if os.path.exists("/proc/thread-self/net/ipv6_route"):  # dst, len, src, len, next hop, ..., flags, dev
        with open("/proc/thread-self/net/ipv6_route") as f:
            for cols in (line.split() for line in f):
                dst, length, hop, flags = bytes.fromhex(cols[0]), int(cols[1], 16), cols[4], int(cols[8], 16)
                if 0 < length < 128 and set(hop) == {"0"} and not flags & 0x2 and dst[0] != 0xFF \
                        and cols[9] != "lo":
                    nets.append(ipaddress.IPv6Network((dst, length), strict=False))
    return nets


# ---------------------------------------------------------------- probes and their verdicts

class Probe:
    def __init__(self, spec: dict, timeout: float):
        self.id, self.proto, self.dst, self.port = spec["id"], spec["proto"], spec["dst"], spec.get("port")
        self.addr = self.dst.split("%")[0]  # as answers name it: a link-local dst without its zone
        self.payload = (bytes.fromhex(spec["payload"]) if spec.get("payload") is not None
                        else DEFAULT_PAYLOADS.get(self.port, b"lw-probe"))
        self.timeout, self.sent, self.sock, self.result = timeout, None, None, None
        self.socket_saw = None  # what the probe's own socket learnt: a fallback
        self.socket_icmp = None  # (type, code, sender) of an ICMP error in its error queue
        self.seen_at = None     # and when
        if self.proto not in ("tcp", "udp", "icmp"):
            raise AgentError(f"probe {self.id}: unknown proto {self.proto!r} (known: tcp udp icmp)")
        if self.proto != "icmp" and not isinstance(self.port, int):
            raise AgentError(f"probe {self.id}: {self.proto} needs a port")

    def silent(self) -> bool:
        """Settled as "filtered" because nothing came back (not: refused before it left)."""
        return bool(self.result) and self.result["verdict"] == "filtered" and self.result["detail"] \
            .startswith("no answer")

    def settle(self, verdict, by=None, ttl=None, when=None, detail=None):
        self.result = {"id": self.id, "verdict": verdict, "by": by, "ttl": ttl,
                       "rtt_ms": round((when - self.sent) * 1000, 3) if when and self.sent else None,
                       "detail": detail or f"no answer within {self.timeout} s"}


class Book:
    """One node's pending probes, keyed by what their answers carry; fed by the sniffer."""

    connect_only = False  # no sniffer (no root): verdicts come from the probes' own sockets

    def __init__(self, probes: list[Probe], wake_fd: int, near=()):
        self.lock, self.keys, self.pending, self.wake_fd = threading.Lock(), {}, len(probes), wake_fd
        self.local, self.onlink = local_addresses(), connected_subnets()
        self.broadcasts = {str(net.broadcast_address) for net in self.onlink}
        self.near = {ipaddress.ip_address(a) for a in near}  # off-link, yet 0 hops away
        self.hops: dict[str, str | None] = {}

    def expect(self, key, probe: Probe):
        with self.lock:
            self.keys[key] = probe

    def settle(self, probe: Probe, *args, **kw):
        with self.lock:
            if probe.result is None:
                probe.settle(*args, **kw)
                self.pending -= 1
                if self.pending == 0:
                    os.write(self.wake_fd, b"!")

    def answers(self, probe: Probe, src: str) -> bool:
        return src == probe.addr or is_group(probe.addr) or probe.dst in self.broadcasts

    def feed(self, pkt, iface: str, when: float):
        src, dst, proto, ttl, l4 = pkt
        if dst not in self.local or len(l4) < 8:  # e.g. traffic a router forwards
            return
        if proto in (6, 17):
            sport, dport = struct.unpack_from("!HH", l4)
            probe = self.keys.get(("tcp" if proto == 6 else "udp", dport))
            if not probe or probe.port != sport or not self.answers(probe, src):
                return
            if proto == 17:
                self.settle(probe, "open", src, ttl, when,
                            f"UDP reply of {len(l4) - 8} bytes from {src}:{sport} (ttl {ttl})")
            elif len(l4) >= 14 and l4[13] & 0x12 == 0x12:
                self.settle(probe, "open", src, ttl, when, f"SYN-ACK from {src} (ttl {ttl})")
            elif len(l4) >= 14 and l4[13] & 0x04:
                self.judge_rst(probe, src, ttl, iface, when)
        elif proto == 1 and l4[0] == 0:
            probe = self.keys.get(("icmp",) + struct.unpack_from("!HH", l4, 4))
            if probe and self.answers(probe, src):
                self.settle(probe, "open", src, ttl, when, f"echo reply from {src} (ttl {ttl})")
        elif proto == 1 and l4[0] in (3, 11):
            self.judge_icmp_error(src, ttl, l4[0], l4[1], parse_ipv4(l4[8:]), when)
        elif proto == 58 and l4[0] == 129:
            probe = self.keys.get(("icmp6",) + struct.unpack_from("!HH", l4, 4))
            if probe and self.answers(probe, src):
                self.settle(probe, "open", src, ttl, when, f"echo reply from {src} (hop limit {ttl})")
        elif proto == 58 and l4[0] in (1, 3):  # destination unreachable, time exceeded
            self.judge_icmp_error(src, ttl, l4[0], l4[1], parse_ipv6(l4[8:]), when, v6=True)

    def first_hop(self, dst: str) -> str | None:
        """The next hop the node routes dst through (cached `ip route get`)."""
        if dst not in self.hops:
            try:
                route = json.loads(subprocess.run(["ip", "-j", "route", "get", dst], capture_output=True,
                                                  text=True, timeout=5).stdout or "[{}]")[0]
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                route = {}
            self.hops[dst] = route.get("gateway")
        return self.hops[dst]

    def judge_rst(self, probe, src, ttl, iface, when):
        dst = ipaddress.ip_address(probe.addr)
        if ttl in (64, 128, 255) and iface != "lo" and dst not in self.near \
                and not in_nets(dst, self.onlink):
            hop = self.first_hop(probe.dst)
            self.settle(probe, "rejected", hop, ttl, when,
                        f"RST in the name of {src} with ttl {ttl} (0 hops) although {src} is not "
                        f"on-link: forged by the first hop {hop or '(unknown)'} (heuristic)")
        else:
            self.settle(probe, "closed", src, ttl, when, f"RST from {src} (ttl {ttl})")

    def judge_icmp_error(self, src, ttl, kind, code, inner, when, v6=False):
        """An ICMP (ICMPv6) error quotes the header of what it is about: find that probe."""
        if not inner or inner[0] not in self.local or len(inner[4]) < 8:
            return
        _, about, proto, _, l4 = inner
        if proto == 1 and l4[0] == 8:
            probe = self.keys.get(("icmp",) + struct.unpack_from("!HH", l4, 4))
        elif proto == 58 and l4[0] == 128:
            probe = self.keys.get(("icmp6",) + struct.unpack_from("!HH", l4, 4))
        elif proto in (6, 17):
            sport, dport = struct.unpack_from("!HH", l4)
            probe = self.keys.get(("tcp" if proto == 6 else "udp", sport))
            probe = probe if probe and probe.port == dport else None
        else:
            return
        if not probe or probe.addr != about:
            return
        name, hops = ("ICMPv6 " + icmp6_name(kind, code), "hop limit") if v6 else ("ICMP " + icmp_name(kind, code), "ttl")
        port_unreachable = (kind, code) == ((1, 4) if v6 else (3, 3))
        if probe.proto == "udp" and port_unreachable and src == probe.addr:
            self.settle(probe, "closed", src, ttl, when, f"{name} from {src} ({hops} {ttl})")
        else:
            self.settle(probe, "rejected", src, ttl, when, f"{name} from {src} ({hops} {ttl})")

    def zero_hops(self, dst: str) -> bool:
        """Whether only dst itself can answer in its name: on-link, ours, or our first hop's."""
        ip = ipaddress.ip_address(dst.split("%")[0])
        return ip.is_link_local or dst in self.local or ip in self.near or in_nets(ip, self.onlink)


def unprove_silences(probes: list[Probe], drops: int):
    """After the kernel dropped frames for the sniffer, "nothing came back" is unproven."""
    for probe in probes:
        if probe.silent():
            probe.result.update(verdict="error", detail=(
                f"{probe.result['detail']}, but the kernel dropped {drops} frame(s) for this "
                "node's sniffer: the answer may be one of them"))


def icmp_name(kind: int, code: int) -> str:
    return ICMP_UNREACH.get(code, f"unreachable (code {code})") if kind == 3 else \
        "time-exceeded" if kind == 11 else f"type {kind} code {code}"


def icmp6_name(kind: int, code: int) -> str:
    return ICMP6_UNREACH.get(code, f"unreachable (code {code})") if kind == 1 else \
        "time-exceeded" if kind == 3 else f"type {kind} code {code}"


def socket_icmp_error(sock) -> tuple | None:
    """(type, code, sender) of the ICMP error a socket with IP_RECVERR queued, if any; ICMPv6's
    (IPV6_RECVERR) too, its type and code then named as ICMP's would be (rejected either way)."""
    try:
        _, anc, _, _ = sock.recvmsg(1, 512, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
    except OSError:
        return None
    for level, kind, data in anc:
        # struct sock_extended_err (16 bytes), then the offender's sockaddr_in
        if level == socket.IPPROTO_IP and kind == IP_RECVERR and len(data) >= 24 \
                and data[4] == SO_EE_ORIGIN_ICMP:
            return data[5], data[6], socket.inet_ntoa(data[20:24])
        if level == socket.IPPROTO_IPV6 and kind == IPV6_RECVERR and len(data) >= 40 \
                and data[4] == SO_EE_ORIGIN_ICMP6:  # the offender's sockaddr_in6: address at 8
            return data[5], data[6], socket.inet_ntop(socket.AF_INET6, data[24:40])
    return None


def local_failure(book: Book, probe: Probe, err: OSError):
    if err.errno in (errno.EPERM, errno.EACCES):
        book.settle(probe, "filtered", detail=f"not sent: dropped by this node's own firewall ({err})")
    elif err.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        book.settle(probe, "rejected", detail=f"not sent: no route from this node ({err})")
    else:
        book.settle(probe, "error", detail=f"not sent: {err}")


def _connected(sock) -> bool:
    try:
        sock.getpeername()
        return True
    except OSError:
        return False


def connect_verdict(probe, book: Book, err: int):
    """Without a sniffer: what a socket error says (who answered is not known, only guessed)."""
    why = os.strerror(err)
    if err == errno.ECONNREFUSED:
        kind = "a RST" if probe.proto == "tcp" else "an ICMP port-unreachable"
        book.settle(probe, "closed", probe.dst, when=probe.seen_at, detail=f"{why}: {kind}, taken to be from {probe.dst} "
                    "(without root a router's forged answer looks the same)")
    elif err in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES, errno.EPERM, errno.EPROTO,
                 errno.ENOPROTOOPT, errno.EHOSTDOWN):
        book.settle(probe, "rejected", when=probe.seen_at,
                    detail=f"{why}: an ICMP error (sender unknown without root)")
    elif err in (errno.ETIMEDOUT,):
        book.settle(probe, "filtered", detail=f"{why}")
    else:
        book.settle(probe, "error", detail=f"socket error: {why}")


def bound_socket(kind: int, family: int = socket.AF_INET) -> socket.socket:
    """A socket whose local port is known (and expected) before anything leaves.

    A TCP port that bind() chose itself is given back as soon as the connection is
    refused, and the next probe may get it while the answer to the first is still on
    its way. A port named explicitly is kept until close(): so name one.
    """
    s = socket.socket(family, kind)
    s.setblocking(False)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    anywhere = "::" if family == socket.AF_INET6 else "0.0.0.0"
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    if kind == socket.SOCK_STREAM:  # an ICMP error about the SYN is kept with its sender
        s.setsockopt(*((socket.IPPROTO_IPV6, IPV6_RECVERR) if family == socket.AF_INET6
                       else (socket.IPPROTO_IP, IP_RECVERR)), 1)
    for _ in range(64 if kind == socket.SOCK_STREAM else 0):
        try:
            s.bind((anywhere, random.randrange(32768, 61000)))
            return s
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
    s.bind((anywhere, 0))
    return s


class TcpProber:
    def launch(self, probe, book, sel):
        s = probe.sock = bound_socket(socket.SOCK_STREAM, family_of(probe.dst))
        book.expect(("tcp", s.getsockname()[1]), probe)
        probe.sent = time.time()
        err = s.connect_ex((probe.dst, probe.port))
        if err not in (0, errno.EINPROGRESS):
            return local_failure(book, probe, OSError(err, os.strerror(err)))
        sel.register(s, selectors.EVENT_WRITE, probe)

    def on_event(self, probe, sel):
        sel.unregister(probe.sock)
        probe.socket_saw = probe.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        probe.seen_at = time.time()
        if probe.socket_saw:
            probe.socket_icmp = socket_icmp_error(probe.sock)

    def fallback(self, probe, book):
        """What the socket saw and the sniffer did not (or, without root, all there is): an
        answer all the same, never "filtered"."""
        missed = "" if book.connect_only else "; the sniffer missed it"
        if probe.socket_saw == 0:
            book.settle(probe, "open", probe.dst, when=probe.seen_at,
                        detail="connected (seen by the socket, not the sniffer)")
        elif probe.socket_icmp:
            kind, code, src = probe.socket_icmp
            book.settle(probe, "rejected", src, when=probe.seen_at,
                        detail=f"ICMP {icmp_name(kind, code)} from {src} (read from the socket's error queue{missed})")
        elif probe.socket_saw and book.connect_only:
            connect_verdict(probe, book, probe.socket_saw)
        elif probe.socket_saw == errno.ECONNREFUSED and book.zero_hops(probe.dst):
            book.settle(probe, "closed", probe.dst, when=probe.seen_at,
                        detail=f"RST from {probe.dst} (connection refused, seen by the socket{missed})")
        elif probe.socket_saw == errno.ECONNREFUSED:  # its ttl would have told: the packet is lost
            book.settle(probe, "error", when=probe.seen_at,
                        detail=f"connection refused by a RST the sniffer missed: from {probe.dst} (closed) "
                               "or forged by a router on the way (rejected), which only the packet tells")
        elif probe.socket_saw:
            book.settle(probe, "rejected", when=probe.seen_at,
                        detail=f"{os.strerror(probe.socket_saw)}: refused before it left or by an ICMP "
                               f"error whose sender is unknown (seen by the socket{missed})")


class UdpProber:
    def launch(self, probe, book, sel):
        s = probe.sock = bound_socket(socket.SOCK_DGRAM, family_of(probe.dst))
        book.expect(("udp", s.getsockname()[1]), probe)
        probe.sent = time.time()
        try:
            if book.connect_only and not is_group(probe.dst):
                s.connect((probe.dst, probe.port))  # so that ICMP errors come back as socket errors
            s.sendto(probe.payload, (probe.dst, probe.port))
        except OSError as e:
            return local_failure(book, probe, e)
        sel.register(s, selectors.EVENT_READ, probe)

    def on_event(self, probe, sel):
        try:
            _, probe.socket_saw = probe.sock.recvfrom(65535)
            probe.seen_at = time.time()
            sel.unregister(probe.sock)
        except OSError as e:
            if _connected(probe.sock):
                probe.socket_saw, probe.seen_at = e.errno, time.time()  # connect mode: an ICMP error
                sel.unregister(probe.sock)

    def fallback(self, probe, book):
        if isinstance(probe.socket_saw, int) and book.connect_only:
            return connect_verdict(probe, book, probe.socket_saw)
        src, port = (probe.socket_saw or (None, None))[:2]  # an IPv6 sockaddr has 4 fields
        if port == probe.port and book.answers(probe, src):
            book.settle(probe, "open", src, when=probe.seen_at,
                        detail=f"UDP reply from {src} (seen by the socket, not the sniffer)")


class IcmpProber:
    """Echo requests from one raw socket: the id is the node's, the sequence the probe's.
    ICMPv6 echo from a second one (the kernel fills in its checksum)."""

    def __init__(self):
        self.sock, self.ident, self.seq = None, random.randrange(1, 0xFFFF), 0
        self.sock6 = None

    def launch(self, probe, book, sel):
        if book.connect_only:
            return self.launch_unprivileged(probe, book, sel)
        if ":" in probe.dst:
            return self.launch6(probe, book)
        if self.sock is None:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            self.sock.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("I", 0xFFFFFFFF))  # never read
        self.seq += 1
        book.expect(("icmp", self.ident, self.seq), probe)
        body = b"labwarden-probe".ljust(48, b".")
        header = struct.pack("!BBHHH", 8, 0, 0, self.ident, self.seq)
        packet = header[:2] + struct.pack("!H", checksum(header + body)) + header[4:] + body
        probe.sent = time.time()
        try:
            self.sock.sendto(packet, (probe.dst, 0))
        except OSError as e:
            local_failure(book, probe, e)

    def launch6(self, probe, book):
        if self.sock6 is None:
            self.sock6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            self.sock6.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, b"\xff" * 32)  # never read
        self.seq += 1
        book.expect(("icmp6", self.ident, self.seq), probe)
        body = b"labwarden-probe".ljust(48, b".")
        probe.sent = time.time()
        try:
            self.sock6.sendto(struct.pack("!BBHHH", 128, 0, 0, self.ident, self.seq) + body, (probe.dst, 0))
        except OSError as e:
            local_failure(book, probe, e)

    def launch_unprivileged(self, probe, book, sel):
        """A ping socket per probe (no root: net.ipv4.ping_group_range); the kernel picks the id."""
        try:
            v6 = ":" in probe.dst
            s = probe.sock = socket.socket(family_of(probe.dst), socket.SOCK_DGRAM,
                                           socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
        except OSError as e:
            return book.settle(probe, "error", detail=f"ICMP without root needs net.ipv4.ping_group_range "
                               f"to include this user's group ({e})")
        s.setblocking(False)
        body = b"labwarden-probe".ljust(48, b".")
        probe.sent = time.time()
        try:
            s.sendto(struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, 0, 1) + body, (probe.dst, 0))
        except OSError as e:
            return local_failure(book, probe, e)
        sel.register(s, selectors.EVENT_READ, probe)

    def on_event(self, probe, sel):
        try:
            data = probe.sock.recv(2048)
            probe.socket_saw = ("reply", time.time()) if data[:1] in (b"\0", b"\x81") else None
        except OSError as e:
            probe.socket_saw = e.errno
        sel.unregister(probe.sock)

    def fallback(self, probe, book):
        if isinstance(probe.socket_saw, tuple):
            book.settle(probe, "open", probe.dst, when=probe.socket_saw[1],
                        detail=f"echo reply from {probe.dst} (ping socket: no root, ttl unknown)")
        elif isinstance(probe.socket_saw, int) and probe.socket_saw:
            connect_verdict(probe, book, probe.socket_saw)

    def close(self):
        for sock in (self.sock, self.sock6):
            if sock:
                sock.close()


# ---------------------------------------------------------------- sniffer

class Sniffer:
    """Every frame of the namespace (AF_PACKET), drained by its own thread."""

    def __init__(self, book: Book | None, capture: bool):
        self.book, self.frames, self.failure, self.drops = book, [], None, 0
        self.over_cap = 0  # frames of the capture window not kept: beyond MAX_FRAMES
        # capture from now, before the barrier, so that no frame of a fast sender is missed
        self.window = (time.time(), float("inf")) if capture else (0.0, 0.0)
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SNIFFER_BUFFER)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SNIFFER_BUFFER)
        if not capture:  # the kernel drops what classification never needs
            code = b"".join(struct.pack("HBBI", *op) for op in INCOMING_IP)
            prog = ctypes.create_string_buffer(code)
            self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                                 struct.pack("HL", len(INCOMING_IP), ctypes.addressof(prog)))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.setblocking(False)
        self.wake_r, self.wake_w = os.pipe()  # stop() wakes the loop at once
        self.stop_at, self.seen = float("inf"), 0.0  # seen: every frame until then is handled
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def capture_until(self, end: float):
        self.window = (self.window[0], min(self.window[1], end))

    def loop(self):
        buf = bytearray(1 << 18)  # room for GRO-merged frames
        while True:
            idle_since = time.time()
            try:
                n, anc, _, addr = self.sock.recvmsg_into([buf], 64)
            except BlockingIOError:  # nothing queued: every frame until idle_since is handled
                self.seen = idle_since
                if idle_since > self.stop_at:
                    return
                select.select([self.sock, self.wake_r], [], [], SNIFFER_TICK_S)
                continue
            except OSError as e:
                self.failure = f"the sniffer failed: {e}"
                return
            when = time.time()
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", data[:16])
                    when = sec + nsec / 1e9  # the kernel's arrival time: exact rtt
            if when > self.stop_at:
                return
            iface, proto, pkttype, hatype = addr[:4]
            frame = bytes(buf[:n])
            if self.window[0] <= when <= self.window[1]:
                if len(self.frames) < MAX_FRAMES:
                    self.frames.append((iface, pkttype, frame))
                else:
                    self.over_cap += 1
            if self.book and pkttype != PACKET_OUTGOING and proto in (ETH_P_IP, ETH_P_IPV6):
                pkt = parse_ip(frame[14:] if hatype in (1, 772) else frame)  # Ethernet, loopback
                if pkt:
                    self.book.feed(pkt, iface, when)
            self.seen = when

    def catch_up(self, until: float, limit: float):
        """Wait until every frame that arrived before `until` is handled (Python lags the kernel)."""
        while self.seen < until and time.time() < limit and self.thread.is_alive():
            time.sleep(0.005)

    def stop(self) -> list[dict]:
        self.stop_at = time.time()  # drain what arrived until now, then stop
        os.write(self.wake_w, b"x")
        self.thread.join()
        os.close(self.wake_r), os.close(self.wake_w)
        self.drops = struct.unpack("II", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))[1]
        self.sock.close()
        return [{"iface": i, "dir": "out" if t == PACKET_OUTGOING else "in", "hex": f.hex()}
                for i, t, f in self.frames]


# ---------------------------------------------------------------- nft trace

NETLINK_NETFILTER, NFNLGRP_NFTRACE = 12, 9
TRACE_DRAIN_S = 0.05  # trace events reach the monitor within a millisecond


class Tracer:
    """`nft -a monitor trace` in the calling thread's namespace, until stop()."""

    def __init__(self, node: str):
        self.node = node
        try:
            self.proc = subprocess.Popen(["nft", "-a", "monitor", "trace"], stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True)
        except FileNotFoundError:
            raise AgentError(f"node {node}: `nft` is not installed where the agent runs") from None
        deadline = time.time() + 3.0
        while not self.subscribed():
            if self.proc.poll() is not None or time.time() > deadline:
                self.proc.kill()
                err = self.proc.communicate()[1].strip()
                raise AgentError(f"node {node}: `nft monitor trace` did not start: {err or 'timeout'}")
            time.sleep(0.005)

    def subscribed(self) -> bool:
        """Whether the monitor's netlink socket has joined the trace group (no event is lost)."""
        with open("/proc/thread-self/net/netlink") as f:
            for line in f.read().splitlines()[1:]:
                cols = line.split()
                if (int(cols[1]) == NETLINK_NETFILTER and int(cols[2]) == self.proc.pid
                        and int(cols[3], 16) & (1 << (NFNLGRP_NFTRACE - 1))):
                    return True
        return False

    def stop(self) -> dict:
        time.sleep(TRACE_DRAIN_S)
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        listing = subprocess.run(["nft", "-a", "list", "ruleset"], capture_output=True, text=True)
        return {"events": out.splitlines(), "ruleset": listing.stdout}


# ---------------------------------------------------------------- fetch: short TCP exchanges

TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
              6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}


def fetch_error(err: OSError) -> str:
    if isinstance(err, ConnectionRefusedError):
        return "refused"
    if isinstance(err, (TimeoutError, socket.timeout)):
        return "timeout"
    if isinstance(err, ConnectionResetError):
        return "reset"
    if err.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable"
    return f"{type(err).__name__}: {err}"


def fetch_one(spec: dict, timeout: float) -> dict:
    out = {"id": spec["id"], "sport": None, "connected": False, "error": None, "eof": False,
           "reply": "", "connect_ms": None, "ms": None}
    started = time.time()
    v6 = ":" in str(spec["dst"])
    sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("::" if v6 else "0.0.0.0", 0))
        out["sport"] = sock.getsockname()[1]
        sock.settimeout(timeout)
        sock.connect((spec["dst"], int(spec["port"])))
        out["connected"], out["connect_ms"] = True, round((time.time() - started) * 1000, 3)
        if spec.get("tls"):
            import ssl  # only here: most batches never need it
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            sock = ctx.wrap_socket(sock)
        if spec.get("send"):
            sock.sendall(bytes.fromhex(spec["send"]))
        reply, limit = bytearray(), int(spec.get("max", 65536))
        deadline = time.time() + float(spec.get("read_s", timeout))
        while len(reply) < limit and (remaining := deadline - time.time()) > 0:
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, socket.timeout):
                break
            if not chunk:
                out["eof"] = True
                break
            reply += chunk
        out["reply"] = bytes(reply[:limit]).hex()
    except OSError as e:  # ssl.SSLError is one too
        out["error"] = fetch_error(e)
    finally:
        out["ms"] = round((time.time() - started) * 1000, 3)
        sock.close()
    return out


def fetch_all(specs: list[dict], timeout: float) -> list[dict]:
    """Every fetch at once, a thread each (threads are born in their creator's namespace)."""
    results = [None] * len(specs)

    def run(i, spec):
        results[i] = fetch_one(spec, timeout)

    threads = [threading.Thread(target=run, args=(i, spec)) for i, spec in enumerate(specs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def sockets(proto: str) -> list[dict]:
    """The namespace's sockets of /proc/thread-self/net/PROTO (tcp, udp, tcp6, udp6); a UDP
    socket bound and not connected is in state CLOSE. IPv6 endpoints read "[IP]:PORT"."""
    def endpoint(text):
        addr, port = text.split(":")
        raw = bytes.fromhex(addr)
        if len(raw) == 4:
            return f"{socket.inet_ntoa(raw[::-1])}:{int(port, 16)}"
        words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))  # four host-order words
        return f"[{socket.inet_ntop(socket.AF_INET6, words)}]:{int(port, 16)}"
    if not os.path.exists(f"/proc/thread-self/net/{proto}"):
        return []  # no IPv6 in this kernel
    with open(f"/proc/thread-self/net/{proto}") as f:
        rows = [line.split() for line in f.read().splitlines()[1:]]
    return [{"local": endpoint(r[1]), "remote": endpoint(r[2]),
             "state": TCP_STATES.get(int(r[3], 16), r[3])} for r in rows]


# ---------------------------------------------------------------- one node

class NodeRun:
    def __init__(self, name: str, spec: dict, timeout: float, barrier: threading.Barrier):
        self.name, self.spec, self.timeout, self.barrier = name, spec, timeout, barrier
        self.probes = [Probe(p, timeout) for p in spec.get("probes", [])]
        self.out, self.errors = {"error": None, "results": [], "sent": 0}, []
        self.sniffer = self.book = self.tracer = None

    def run(self):
        started, spec = time.monotonic(), self.spec
        sel, (wake_r, wake_w) = selectors.DefaultSelector(), os.pipe()
        try:
            try:
                self.enter(spec)
                self.setup(spec.get("setup") or {})
                if spec.get("info"):
                    self.out["info"] = self.info()
                if self.probes:
                    self.book = Book(self.probes, wake_w, spec.get("near", ()))
                if self.probes or spec.get("capture"):
                    try:
                        self.sniffer = Sniffer(self.book, bool(spec.get("capture")))
                    except PermissionError:  # no root: connect()-based probes, no captures
                        if spec.get("capture") or not self.book:
                            raise AgentError(f"node {self.name}: capturing needs root (CAP_NET_RAW)") from None
                        self.book.connect_only, self.out["mode"] = True, "connect"
                if spec.get("trace"):
                    self.tracer = Tracer(self.name)
            finally:
                self.barrier.wait(timeout=120)  # also when this node failed: the others go on
            if spec.get("start_at"):  # the barrier of agents on several hosts: a shared clock
                self.out["late_s"] = round(max(0.0, time.time() - spec["start_at"]), 3)
                time.sleep(max(0.0, spec["start_at"] - time.time()))
            capture_end = time.time() + float((spec.get("capture") or {}).get("seconds", 0))
            if self.sniffer:
                self.sniffer.capture_until(capture_end)
            self.send(spec.get("send", []))
            self.probe(sel, wake_r)
            if spec.get("fetch"):
                self.out["fetched"] = fetch_all(spec["fetch"], self.timeout)
            if spec.get("latency") or spec.get("traceroute"):
                self.out.update(timing.measure(spec.get("latency"), spec.get("traceroute")))
            time.sleep(max(0.0, capture_end - time.time()))
        except AgentError as e:
            self.errors.append(str(e))
        except Exception as e:  # a bug or a broken node must not take the other nodes down
            self.errors.append(f"node {self.name}: {type(e).__name__}: {e}")
        finally:
            if self.tracer:
                try:
                    self.out["trace"] = self.tracer.stop()
                except (OSError, subprocess.SubprocessError) as e:
                    self.errors.append(f"node {self.name}: the trace failed: {e}")
            if self.sniffer:
                captured = self.sniffer.stop()
                if spec.get("capture"):
                    self.out["captured"] = captured
                    if self.sniffer.over_cap:  # the engine refuses to read such a capture
                        self.out["capture_truncated"] = self.sniffer.over_cap
                if self.sniffer.failure:
                    self.errors.append(f"node {self.name}: {self.sniffer.failure}")
                if self.sniffer.drops:  # so is a capture missing those, and a silence proves nothing
                    self.out["sniffer_drops"] = self.sniffer.drops
                    unprove_silences(self.probes, self.sniffer.drops)
            for probe in self.probes:
                if probe.sock:
                    probe.sock.close()
            sel.close()
            os.close(wake_r), os.close(wake_w)
            self.out.update(results=[p.result for p in self.probes if p.result],
                            error="; ".join(self.errors) or None,
                            elapsed_s=round(time.monotonic() - started, 3))

    def enter(self, spec: dict):
        """Into the node's namespace, only while it still is the node's (netns.py)."""
        try:
            started = netns.enter(spec)
        except netns.Refused as e:
            raise AgentError(f"node {self.name}: {e}") from None
        if started is not None:
            self.out["pid_start"] = started  # the engine sends it back with every later request

    def sh(self, *argv: str, stdin: str | None = None) -> str:
        try:
            done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
        except FileNotFoundError:
            raise AgentError(f"node {self.name}: `{argv[0]}` is not installed where the agent runs") from None
        if done.returncode != 0:
            raise AgentError(f"node {self.name}: `{' '.join(argv)}` failed (exit {done.returncode}): "
                             f"{done.stderr.strip()}")
        return done.stdout

    def ip_batch(self, commands: list[list[str]]):
        """`ip` commands in one process (`ip -batch -`): plumbing a node costs one `ip`, not
        one per command (a lab's up time); a failure names the command that failed."""
        if not commands:
            return
        try:
            self.sh("ip", "-batch", "-", stdin="".join(" ".join(c) + "\n" for c in commands))
        except AgentError as e:
            line = re.search(r"Command failed -:(\d+)", str(e))
            failed = commands[int(line.group(1)) - 1] if line and int(line.group(1)) <= len(commands) else None
            if failed is None:
                raise
            raise AgentError(f"node {self.name}: `ip {' '.join(failed)}` failed: {e}") from None

    def setup(self, setup: dict):
        if setup.get("sysctls"):
            raise AgentError(f"node {self.name}: the agent does not write sysctls ({', '.join(setup['sysctls'])}): "
                             "set them in the node's compose `sysctls:` (or `docker run --sysctl`)")
        commands = []
        if setup.get("rename"):
            links = {link.get("address"): link["ifname"] for link in json.loads(self.sh("ip", "-j", "link"))}
            for mac, new in setup["rename"].items():
                old = links.get(mac.lower())
                if old is None:
                    raise AgentError(f"node {self.name}: no interface has MAC {mac} (to be named {new}); "
                                     f"interfaces: {sorted(links.values())}")
                if old != new:
                    commands += [["link", "set", old, "down"], ["link", "set", old, "name", new],
                                 ["link", "set", new, "up"]]
        if setup.get("only_these_routes"):  # as plumbed: what a run added (an attacker's route) goes
            net = lambda prefix: prefix if prefix == "default" else ipaddress.ip_network(prefix, strict=False)
            wanted = {net(prefix) for prefix, _ in setup.get("routes", [])} | {"default"}
            commands += [["route", "del", r["dst"], *(["via", r["gateway"]] if "gateway" in r else [])]
                         for r in json.loads(self.sh("ip", "-j", "route", "show", "table", "main") or "[]")
                         if r.get("protocol") != "kernel" and net(r["dst"]) not in wanted]
        # after renames: a link down drops routes
        routes = {6: [], 4: []}
        for prefix, nexthop in setup.get("routes", []):
            routes[6 if ":" in nexthop else 4].append(["route", "replace", prefix, "via", nexthop])
        # IPv6 (labwarden's own addresses, not Docker's) after the IPv4 routes, its routes after
        # its addresses (a next hop must be on a link); no `-6`: `ip -batch` refuses options on
        # its lines, and `ip` takes the family from the addresses
        commands += routes[4] + [["addr", "replace", cidr, "dev", ifname, "nodad"]
                                 for ifname, cidr in setup.get("addrs", [])] + routes[6]
        self.ip_batch(commands)
        if setup.get("nft") is not None:
            self.load_ruleset(setup["nft"])
        if setup.get("nft_add"):
            self.sh("nft", "-f", "-", stdin=setup["nft_add"])
        if setup.get("iptables") is not None or setup.get("ip6tables") is not None:
            self.load_xtables([(setup[key], tool, family) for key, tool, family in XTABLES
                               if setup.get(key) is not None])
        if setup.get("flush_conntrack"):
            self.flush_conntrack()
        if setup.get("forget_neighbours"):  # as a new lab's: one that ran before has learnt them
            self.sh("ip", "neigh", "flush", "all")

    def load_ruleset(self, text: str):
        """Replace the whole ruleset with the file's, in one transaction, and read it back.

        Without the flush a file that flushes nothing (or only its own table, as firewall4's
        does) would run beside what an earlier load left, whose drops could hide its holes.
        The flush shares the file's first line, so nft's line numbers stay the file's."""
        self.sh("nft", "-f", "-", stdin="flush ruleset; " + text)
        have = set(TABLE_LINE.findall(self.sh("nft", "list", "tables")))
        want = declared_tables(text)
        if have != want:
            show = lambda tables: ", ".join(f"{f} {n}" for f, n in sorted(tables)) or "none"
            raise AgentError(f"node {self.name}: after loading the ruleset the node holds the tables "
                             f"{show(have)}, but the file declares {show(want)} (extra: "
                             f"{show(have - want)}; missing: {show(want - have)}); a table made by "
                             "an include, or by something running in the node, is not allowed")

    def load_xtables(self, files: list[tuple[str, str, str]]):
        """Replace the whole firewall with iptables-restore files (iptables-nft), and read it back.

        files: [(text, tool, nft family)]: ("...", "iptables", "ip"), ("...", "ip6tables", "ip6").
        Each file is parsed first (`--test`), so a broken one leaves the old rules in place.
        Then the whole nft ruleset is flushed once and every file restored: a family without
        a file has no rules (accepts everything). Between the flush and the restores the node
        has no rules for a moment: a loader that cares empties conntrack afterwards
        (flush_conntrack runs after this)."""
        for text, tool, _ in files:
            self.sh(f"{tool}-restore", "--test", stdin=text)
        self.sh("nft", "flush", "ruleset")
        for text, tool, _ in files:
            self.sh(f"{tool}-restore", stdin=text)
        want, saved_all, rules_all = set(), {}, {}
        for text, tool, family in files:
            rules = {}
            for table, body in XT_TABLE.findall(text):
                want.add((family, table))
                rules[table] = rules.get(table, 0) + len(XT_RULE.findall(body))
            rules_all[tool] = rules
            saved_all[tool] = {table: len(XT_RULE.findall(body))
                               for table, body in XT_TABLE.findall(self.sh(f"{tool}-save"))}
        have = set(TABLE_LINE.findall(self.sh("nft", "list", "tables")))
        if have != want or saved_all != rules_all:
            show = lambda tables: ", ".join(f"{f} {n}" for f, n in sorted(tables)) or "none"
            tools = "/".join(f"{tool}-restore" for _, tool, _ in files)
            raise AgentError(f"node {self.name}: after {tools} the node holds the tables {show(have)} "
                             f"with rules {saved_all}, but the files declare {show(want)} with rules {rules_all}")

    def flush_conntrack(self):
        """Forget every tracked connection, so a new ruleset inherits none an earlier one let in.

        (A SYN-ACK still on its way for a connection some fuzzed ruleset accepted would
        otherwise pass the next ruleset's `ct state established` as a reply.) Netlink
        IPCTNL_MSG_CT_DELETE without attributes is `conntrack -F`, which nodes need not have.
        """
        netlink_netfilter, ctnetlink, ct_delete, request, ack = 12, 1, 2, 1, 4
        body = struct.pack("BBH", socket.AF_UNSPEC, 0, 0)  # every family: IPv4 and IPv6 connections
        message = struct.pack("=IHHII", 16 + len(body), ctnetlink << 8 | ct_delete, request | ack, 1, 0) + body
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, netlink_netfilter) as nl:
            nl.settimeout(5)
            nl.sendto(message, (0, 0))
            reply = nl.recv(4096)
        (kind,), (err,) = struct.unpack_from("=H", reply, 4), struct.unpack_from("=i", reply, 16)
        if kind != 2 or err not in (0, -errno.ENOENT):
            raise AgentError(f"node {self.name}: flushing conntrack failed: "
                             f"{os.strerror(-err) if err else f'netlink message type {kind}'}")

    def info(self) -> dict:
        links, routes = json.loads(self.sh("ip", "-j", "addr")), json.loads(self.sh("ip", "-j", "route"))
        routes6 = json.loads(self.sh("ip", "-j", "-6", "route") or "[]")
        return {"interfaces": [{"name": link["ifname"], "mac": link.get("address"),
                                "up": "UP" in link.get("flags", []),
                                "addrs": [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
                                          if a.get("family") == "inet"],
                                "addrs6": [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
                                           if a.get("family") == "inet6"]} for link in links],
                "routes": [{"dst": r["dst"], "via": r.get("gateway"), "dev": r.get("dev")} for r in routes],
                "routes6": [{"dst": r["dst"], "via": r.get("gateway"), "dev": r.get("dev")} for r in routes6],
                **{proto: sockets(proto) for proto in ("tcp", "udp", "tcp6", "udp6")}}

    def send(self, items: list[dict]):
        # one socket per interface: binding an AF_PACKET socket costs ~10 ms (an RCU grace period)
        sockets: dict[str, socket.socket] = {}
        try:
            for i, item in enumerate(items):
                try:
                    if "l3" in item:  # IPPROTO_RAW: the packet is sent with its own IP header
                        dst = raw_destination(item)
                        key = "l3:" + str(family_of(dst))
                        if key not in sockets:
                            sockets[key] = socket.socket(family_of(dst), socket.SOCK_RAW, socket.IPPROTO_RAW)
                            sockets[key].setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                        sockets[key].sendto(bytes.fromhex(item["l3"]), (dst, 0))
                    else:
                        key = "l2:" + item["iface"]
                        if key not in sockets:
                            sockets[key] = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
                            sockets[key].bind((item["iface"], 0))
                        sockets[key].send(bytes.fromhex(item["l2"]))
                    self.out["sent"] += 1
                except (OSError, KeyError) as e:
                    self.errors.append(f"node {self.name}: raw packet {i} not sent: {e!r}")
        finally:
            for sock in sockets.values():
                sock.close()

    def probe(self, sel, wake_r):
        if not self.probes:
            return
        probers = {"tcp": TcpProber(), "udp": UdpProber(), "icmp": IcmpProber()}
        sel.register(wake_r, selectors.EVENT_READ)
        last_sent = time.time()
        try:
            for probe in self.probes:
                try:
                    probers[probe.proto].launch(probe, self.book, sel)
                except OSError as e:  # e.g. out of file descriptors: say so, never "filtered"
                    local_failure(self.book, probe, e)
                last_sent = probe.sent or last_sent
            deadline = last_sent + self.timeout
            while self.book.pending and (remaining := deadline - time.time()) > 0:
                for key, _ in sel.select(remaining):
                    if key.data:
                        probers[key.data.proto].on_event(key.data, sel)
            if self.book.pending and self.sniffer:
                self.sniffer.catch_up(deadline, limit=deadline + max(2.0, self.timeout))
        finally:
            probers["icmp"].close()
        behind = self.sniffer and self.sniffer.seen < deadline  # frames it has not read yet
        for probe in self.probes:
            if probe.result is None:
                probers[probe.proto].fallback(probe, self.book)
            if probe.result is None and behind:
                self.book.settle(probe, "error", detail=f"no answer seen, but the sniffer had not read "
                                 f"the frames of the last {deadline - self.sniffer.seen:.1f} s (overloaded)")
            self.book.settle(probe, "filtered")


# ---------------------------------------------------------------- main

def handle(request: dict) -> dict:
    """One request, or with `rounds` each round's nodes in turn; the guard first, for all."""
    if "rounds" not in request:
        return guard(request) or run_batch(request)
    common = {k: v for k, v in request.items() if k != "rounds"}
    rounds = [{**common, "nodes": r.get("nodes", {})} for r in request["rounds"]]
    return next(filter(None, map(guard, rounds)), None) or {"rounds": [run_batch(r) for r in rounds]}


def run_batch(request: dict) -> dict:
    """Every node of a request that passed the guard, all at once."""
    started = time.monotonic()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a socket per tcp/udp probe
    nodes, timeout = request.get("nodes", {}), float(request.get("timeout", 1.0))
    barrier, runs = threading.Barrier(max(1, len(nodes))), {}
    for name, spec in nodes.items():
        try:
            runs[name] = NodeRun(name, spec, timeout, barrier)
        except (AgentError, KeyError, TypeError, ValueError) as e:
            return {"error": f"bad request: node {name}: {type(e).__name__}: {e}"}
    threads = [threading.Thread(target=run.run, name=name) for name, run in runs.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"nodes": {name: run.out for name, run in runs.items()},
            "elapsed_s": round(time.monotonic() - started, 3)}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(json.dumps({"error": "usage: agent.py REQUEST|-  (REQUEST: base64 of zlib of JSON)"}))
        return 2
    try:
        request = decode_request(argv[1])
    except (ValueError, zlib.error) as e:
        print(json.dumps({"error": f"bad request: cannot decode it: {e}"}))
        return 0
    answer = handle(request)
    if "error" not in answer:  # a refusal is the error alone
        answer["rusage"] = rusage()
    print(json.dumps(answer, separators=(",", ":")))
    return 0


def rusage() -> dict:
    """What this call cost the agent: its peak memory and its CPU time (the commands it ran
    apart), the figures benchmarks/scale.py reports."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"maxrss_kb": own.ru_maxrss, "cpu_s": round(own.ru_utime + own.ru_stime, 3),
            "children_cpu_s": round(kids.ru_utime + kids.ru_stime, 3)}


if __name__ == "__main__":
    sys.exit(main(sys.argv))
