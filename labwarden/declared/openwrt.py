"""What an OpenWrt router's UCI config says about its lab: the segments, nodes and draft
intent that `labwarden init --openwrt` writes out (labwarden.declared.openwrt_files renders
them as compose.yaml, policy.yaml and router/ruleset.nft).

- a **segment** per network of a firewall zone that has an IPv4 address (bridges and VLAN
  devices resolved to the device name firewall4 matches on, which becomes the router's
  interface name in the lab); the outside zone (masq '1', else the zone named wan) gets the
  lab's wan subnet when its address comes from the ISP (dhcp, pppoe);
- a **node** on every address a redirect or rule targets (dest_ip), serving the port it
  targets, and probe hosts so that each segment has two nodes;
- the **draft policy**: zone defaults, forwardings, rules and redirects, each entry with the
  UCI section it came from; firewall4's stock rules marked for review.

Pure: no file is read here (the caller passes parsed UciFiles), nothing is started.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from labwarden.errors import ConfigError
from labwarden.declared.fields import valid_ifname
from labwarden.declared.uci import Section, UciFile

# The rules of OpenWrt's stock /etc/config/firewall: there on every router, rarely known.
STOCK_RULES = ("Allow-DHCP-Renew", "Allow-Ping", "Allow-IGMP", "Allow-DHCPv6", "Allow-MLD",
               "Allow-ICMPv6-Input", "Allow-ICMPv6-Forward", "Allow-IPSec-ESP", "Allow-ISAKMP")
ISP_PROTOS = ("dhcp", "pppoe", "pppoa", "3g", "qmi", "ncm", "wwan", "mbim", "dslite", "none")
MAX_RANGE = 32  # a dest_port range wider than this is not expanded into single ports


@dataclass
class Segment:
    name: str                  # the UCI interface's name (a compose network)
    device: str                # what fw4 matches on: the router's interface name in the lab
    zone: str
    subnet: IPv4Network
    router: IPv4Address
    source: str                # file:line of the interface section
    outside: bool = False


@dataclass
class Node:
    name: str
    segment: str
    address: IPv4Address
    words: list[str] = field(default_factory=list)   # lab-services words: ssh:22, http:8080
    why: str = "probe host"


@dataclass
class Entry:
    """One line of the draft policy, with where it came from."""
    kind: str                  # allow | forward | note
    text: str                  # YAML flow mapping, or the note's words
    source: str                # "firewall:42 rule 'Allow-DNS-Servers'"
    review: str | None = None  # why a person should look at it
    disabled: bool = False     # written commented out


@dataclass
class Draft:
    segments: dict[str, Segment]
    nodes: dict[str, Node]
    zones: dict[str, list[str]]
    entries: list[Entry]
    blocked: str
    blocked_note: str
    outside: str
    masquerade: list[str]
    hairpin: bool
    syn_limit: tuple[int, int] | None
    skipped: list[str]          # networks and zones the lab leaves out, and why

    @property
    def router_public(self) -> IPv4Address:
        return next(s.router for s in self.segments.values() if s.outside)


def _where(uci: UciFile, section: Section) -> str:
    kind = section.type if section.get("name") is None else f"{section.type} '{section.get('name')}'"
    return f"{uci.path.rsplit('/', 1)[-1]}:{section.line} {kind}"


def _l3_device(network: UciFile, iface: Section) -> str | None:
    device = iface.get("device") or iface.get("ifname")
    if iface.get("type") == "bridge":  # OpenWrt 19.07 and older: the interface made the bridge
        return f"br-{iface.name}"
    return device.split()[0] if device else None


def _address(network: UciFile, iface: Section) -> IPv4Interface | None:
    raw = iface.values("ipaddr")
    if iface.get("proto") != "static" or not raw:
        return None
    try:
        if "/" in raw[0]:
            return IPv4Interface(raw[0])
        return IPv4Interface(f"{raw[0]}/{iface.get('netmask') or '255.255.255.0'}")
    except ValueError:
        raise ConfigError(network.path, f"line {iface.line}", f"interface {iface.label}: "
                          f"{raw[0]!r} with netmask {iface.get('netmask')!r} is not an IPv4 address") from None


def _node_name(segment: str, address: IPv4Address) -> str:
    return f"{segment}-{str(address).rsplit('.', 1)[1]}"


def _service_words(proto: str, port: int) -> list[str]:
    if proto == "udp":
        return ["dns:53"] if port == 53 else []
    return [{22: "ssh:22", 443: "https:443", 53: "dns:53", 9418: "git:9418"}.get(port, f"http:{port}")]


def _ports(raw: list[str]) -> list[int] | None:
    """dest_port's words as port numbers (ranges a-b or a:b expanded); None when too wide."""
    ports: list[int] = []
    for word in raw:
        lo, _, hi = word.replace(":", "-").partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            return None
        lo_n, hi_n = int(lo), int(hi or lo)
        if hi_n - lo_n >= MAX_RANGE:
            return None
        ports.extend(range(lo_n, hi_n + 1))
    return ports


def draft(network: UciFile, firewall: UciFile, wan_subnet: IPv4Network) -> Draft:
    """The lab and draft policy of one router's network and firewall config."""
    zones = [z for z in firewall.of_type("zone") if z.enabled and z.get("name")]
    if not zones:
        raise ConfigError(firewall.path, "config zone", "no enabled zone with a name: nothing to segment")
    masq = [z for z in zones if z.get("masq") == "1"]
    outside = (masq or [z for z in zones if z.get("name") == "wan"] or [None])[0]
    if outside is None:
        raise ConfigError(firewall.path, "config zone", "no outside zone: none has option masq '1' "
                          "and none is named wan")
    segments: dict[str, Segment] = {}
    skipped: list[str] = []
    if outside.get("name") != "wan" and not any(z.get("name") == "wan" for z in zones):
        old = outside.get("name")  # the suites know the outside zone as wan: renamed everywhere
        for section in firewall.sections:
            for key in ("src", "dest") if section is not outside else ("name",):
                if section.options.get(key) == old:
                    section.options[key] = "wan"
        skipped.append(f"firewall zone {old!r} is zone wan in the lab (the suites know the outside by that name)")
    for zone in zones:
        zname = zone.get("name")
        for iface in network.of_type("interface"):
            device = _l3_device(network, iface)
            if iface.name is None or not (iface.name in zone.values("network") or device in zone.values("device")):
                continue
            where = _where(network, iface).replace(" interface", f" interface '{iface.name}'")
            addr = _address(network, iface)
            if device is None or not valid_ifname(device):
                skipped.append(f"left out: {where}: device {device!r} is not a Linux interface name the lab can give")
                continue
            if any(s.device == device for s in segments.values()):
                continue  # wan6 on wan's device: one segment
            if addr is None and zone is outside and (iface.get("proto") or "none") in ISP_PROTOS:
                hosts = list(wan_subnet.hosts())
                segments[iface.name] = Segment(iface.name, device, zname, wan_subnet, hosts[1], where, True)
            elif addr is None:
                skipped.append(f"left out: {where}: no static IPv4 address (proto {iface.get('proto')})")
            else:
                if wan_subnet.overlaps(addr.network):
                    raise ConfigError(network.path, f"line {iface.line}", f"interface {iface.name}'s "
                                      f"{addr.network} overlaps the lab's wan {wan_subnet}: pick another --wan-subnet")
                segments[iface.name] = Segment(iface.name, device, zname, addr.network, addr.ip, where,
                                               zone is outside)
    if not any(s.outside for s in segments.values()):
        raise ConfigError(network.path, "config interface", f"no network of the outside zone "
                          f"{outside.get('name')!r} found (zone networks {outside.values('network')}, "
                          f"devices {outside.values('device')})")
    zone_segments = {z.get("name"): [s.name for s in segments.values() if s.zone == z.get("name")] for z in zones}
    for zname, segs in zone_segments.items():
        if not segs:
            skipped.append(f"left out: zone {zname}: no network with an IPv4 address in the lab")
    zone_segments = {z: s for z, s in zone_segments.items() if s}
    out = Draft(segments, {}, zone_segments, [], "drop", "", outside.get("name"), [], False, None, skipped)
    _policy(out, firewall, zones)
    probe_hosts(out)
    return out


def target(out: Draft, address: str, proto: str, port: int, why: str) -> str | None:
    """The node at `address` (made if new) now serving proto/port; None: not a lab address."""
    try:
        ip = IPv4Address(address)
    except ValueError:
        return None
    seg = next((s for s in out.segments.values() if ip in s.subnet and not s.outside), None)
    if seg is None or ip in (seg.router, seg.subnet.network_address, seg.subnet.broadcast_address):
        return None
    name = _node_name(seg.name, ip)
    node = out.nodes.setdefault(name, Node(name, seg.name, ip, why=why))
    for word in _service_words(proto, port):
        if word not in node.words:
            node.words.append(word)
    return name


def probe_hosts(out: Draft) -> None:
    for seg in out.segments.values():
        if seg.outside:
            hosts = list(seg.subnet.hosts())
            out.nodes["visitor"] = Node("visitor", seg.name, hosts[9], ["http:80"],
                                        "a host on the internet (the router's upstream gateway)")
            out.nodes["scanner"] = Node("scanner", seg.name, hosts[19], [], "a host on the internet")
            continue
        have = [n for n in out.nodes.values() if n.segment == seg.name]
        for offset in range(100, 254):
            if len(have) >= 2:
                break
            ip = seg.subnet.network_address + offset
            if ip not in seg.subnet or ip in (seg.router, seg.subnet.broadcast_address):
                break
            if any(n.address == ip for n in have):
                continue
            node = Node(_node_name(seg.name, ip), seg.name, ip)
            out.nodes[node.name] = node
            have.append(node)


def _blocked(out: Draft, firewall: UciFile, zones: list[Section]) -> None:
    defaults = (firewall.of_type("defaults") or [None])[0]
    verdicts = [v for z in zones for v in (z.get("input") or (defaults and defaults.get("input")),
                                           z.get("forward") or (defaults and defaults.get("forward")))
                if v and v.upper() != "ACCEPT"]
    rejects, drops = verdicts.count("REJECT"), verdicts.count("DROP")
    out.blocked = "reject" if rejects >= drops else "drop"
    out.blocked_note = (f"{rejects} zone input/forward REJECT, {drops} DROP" +
                        ("; REVIEW: mixed, the policy has one answer for every denied flow"
                         if rejects and drops else ""))


def _policy(out: Draft, firewall: UciFile, zones: list[Section]) -> None:
    _blocked(out, firewall, zones)
    known = set(out.zones)
    defaults = (firewall.of_type("defaults") or [None])[0]
    if defaults is not None and (defaults.get("syn_flood") or defaults.get("synflood_protect")) == "1":
        rate = (defaults.get("synflood_rate") or "25").split("/")[0]
        burst = defaults.get("synflood_burst") or "50"
        if rate.isdigit() and burst.isdigit():
            out.syn_limit = (int(rate), int(burst))
    for zone in zones:
        zname = zone.get("name")
        if zname in known and (zone.get("input") or (defaults and defaults.get("input")) or "").upper() == "ACCEPT":
            out.entries.append(Entry("allow", f"{{name: {zname} input ACCEPT, from: {zname}, to: router, ports: any}}",
                                     _where(firewall, zone)))
        if zone.get("masq") == "1":
            out.masquerade = [z for z in out.zones if z != zname]
    for fwd in firewall.of_type("forwarding"):
        src, dest, where = fwd.get("src"), fwd.get("dest"), _where(firewall, fwd)
        if src not in known or dest not in known:
            out.entries.append(Entry("note", f"forwarding {src}->{dest}: a zone with no network in the lab", where))
            continue
        out.entries.append(Entry("allow", f"{{name: forwarding {src}->{dest}, from: {src}, to: {dest}, ports: any}}",
                                 where, disabled=not fwd.enabled))
    for rule in firewall.of_type("rule"):
        _rule(out, firewall, rule, known)
    for redirect in firewall.of_type("redirect"):
        _redirect(out, firewall, redirect)


def _rule(out: Draft, firewall: UciFile, rule: Section, known: set[str]) -> None:
    where, name = _where(firewall, rule), rule.get("name") or rule.label
    stock = (f"firewall4 stock rule {name}: on every OpenWrt router, rarely known; "
             "keep it only if you mean it") if name in STOCK_RULES else None

    def note(text, review=None):
        out.entries.append(Entry("note", f"{name}: {text}", where, review or stock, not rule.enabled))

    target = (rule.get("target") or "DROP").upper()
    if target != "ACCEPT":
        return note(f"target {target}: a policy lists what is allowed; this narrows an allow",
                    review="check that the allows below leave out what it blocks")
    if rule.get("family") == "ipv6":
        return note("IPv6 only: not part of this IPv4 lab")
    src, dest = rule.get("src"), rule.get("dest")
    if src is None:
        return note("no src: the router's own output, which the policy does not judge")
    froms = sorted(known) if src == "*" else [src]
    tos = ["router"] if dest is None else sorted(known) if dest == "*" else [dest]
    missing = [z for z in froms + tos if z != "router" and z not in known]
    if missing:
        return note(f"zone {', '.join(missing)} has no network in the lab")
    protos = rule.values("proto") or ["tcp", "udp"]
    protos = ["tcp", "udp"] if protos in (["tcpudp"], ["all"]) and rule.values("dest_port") else protos
    odd = [p for p in protos if p not in ("tcp", "udp", "icmp", "all", "tcpudp")]
    if odd:
        return note(f"proto {' '.join(odd)}: labwarden probes tcp, udp and icmp only; "
                    f"{'from ' + src + ' to ' + (dest or 'router')} is not probed for it")
    review = stock
    if "all" in protos or not rule.values("dest_port") and set(protos) - {"icmp"}:
        ports = "any"
        review = review or "every port: narrow it if the rule is meant for a few"
    else:
        numbers = _ports(rule.values("dest_port"))
        if numbers is None:
            return note(f"dest_port {rule.get('dest_port')!r}: more than {MAX_RANGE} ports or not numbers",
                        review="write the ports this rule is for into an allow")
        services = [f"{p}/{n}" for p in protos if p != "icmp" for n in numbers]
        services += ["icmp"] if "icmp" in protos else []
        ports = "[" + ", ".join(services) + "]"
        for ip in rule.values("dest_ip"):
            for p in protos:
                for n in numbers:
                    target(out, ip, p, n, f"the target of rule {name}")
        if rule.values("dest_ip") and dest is not None:
            review = review or f"only to {rule.get('dest_ip')}: the policy allows the whole zone {dest}"
    narrow = [k for k in ("src_ip", "src_mac", "src_port", "icmp_type", "limit") if rule.get(k)]
    if narrow and not review:
        review = f"the rule also matches {', '.join(f'{k} {rule.get(k)!r}' for k in narrow)}, which the policy does not"
    from_ = froms[0] if len(froms) == 1 else "[" + ", ".join(froms) + "]"
    to = tos[0] if len(tos) == 1 else "[" + ", ".join(tos) + "]"
    out.entries.append(Entry("allow", f"{{name: {name}, from: {from_}, to: {to}, ports: {ports}}}",
                             where, review, not rule.enabled))


def _redirect(out: Draft, firewall: UciFile, redirect: Section) -> None:
    where, name = _where(firewall, redirect), redirect.get("name") or redirect.label

    def note(text, review="write it into the policy by hand"):
        out.entries.append(Entry("note", f"{name}: {text}", where, review, not redirect.enabled))

    if (redirect.get("target") or "DNAT").upper() != "DNAT":
        return note(f"target {redirect.get('target')}: only DNAT port-forwards are drafted")
    if redirect.get("src") != out.outside:
        return note(f"from zone {redirect.get('src')!r}: forwards are drafted from {out.outside} only")
    if redirect.get("family") == "ipv6":
        return note("IPv6 only: not part of this IPv4 lab", review=None)
    public = _ports(redirect.values("src_dport"))
    if not public or len(public) != 1:
        return note(f"src_dport {redirect.get('src_dport')!r}: one port is drafted, not a range or none")
    port = int(redirect.get("dest_port") or public[0]) if (redirect.get("dest_port") or "").isdigit() \
        or not redirect.get("dest_port") else None
    if port is None:
        return note(f"dest_port {redirect.get('dest_port')!r}: one port is drafted")
    daddr = "public" if redirect.get("src_dip") else "any"
    for proto in [p for p in (redirect.values("proto") or ["tcp", "udp"]) if p in ("tcp", "udp")]:
        to = target(out, redirect.get("dest_ip") or "", proto, port, f"the target of redirect {name}")
        if to is None:
            return note(f"dest_ip {redirect.get('dest_ip')!r} is not on a network of the lab")
        out.entries.append(Entry("forward", f"{{name: {name}, public: {proto}/{public[0]}, to: {to}, "
                                 f"port: {port}, daddr: {daddr}}}", where, None, not redirect.enabled))
    if redirect.enabled and redirect.get("reflection") != "0":
        out.hairpin = True
