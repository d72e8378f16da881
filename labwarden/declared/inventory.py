"""A live lab's inventory: which real host is each node, and the real addresses and names.

An inventory (YAML; annotated example: topologies/homelab/live.example.yaml) maps
every node of the topology to a testinfra host spec and may give the real subnets,
addresses and interface names, the ``ranges`` every probe must stay inside and the
pace (``max_pps``). Declared data only: labwarden.realise.live connects to the hosts.

IPv6: a segment's entry and a node's address may be a list of one IPv4 and one IPv6 value
(``servers: [192.168.10.0/24, fd00:10::/64]``) or an IPv6 value alone; the topology must
declare IPv6 there (x-labwarden.ipv6). The live lab is probed on IPv6 when ``ranges``
lists an IPv6 prefix; then every IPv6 address of the topology must be inside one. With
no IPv6 range the live topology has no IPv6 (as an IPv4-only live lab).
"""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from pathlib import Path

from labwarden.errors import ConfigError
from labwarden.declared.fields import (IFNAME_RULE, address, address6, among, as_mapping, check_keys, network,
                                      network6, read_yaml, valid_ifname, within)
from labwarden.declared.hostspec import masked, parse_spec
from labwarden.declared.topology import Node, Segment, Topology

KEYS = ("topology", "ranges", "max_pps", "ssh_config", "segments", "public", "nodes")
NODE_KEYS = ("host", "addresses", "interfaces", "check_host_key")
RANGE_KEYS = ("range", "public_ok")
DEFAULT_MAX_PPS = 100
MAX_SWEEP = 4096  # addresses in one segment (a /20): a sweep of it takes 41 s at 100 probes/s
# Address space nobody can own on the internet: private (RFC 1918), shared/CGNAT (RFC 6598),
# loopback, link-local, the documentation and benchmarking blocks. ipaddress's is_private
# is not enough: IPv4Network("0.0.0.0/0").is_private is True (both its ends are "private").
NOT_PUBLIC = tuple(ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "198.18.0.0/15",
    # IPv6: unique local (RFC 4193), link-local, loopback, documentation (RFC 3849, 9637), benchmarking
    "fc00::/7", "fe80::/10", "::1/128", "2001:db8::/32", "3fff::/20", "2001:2::/48"))


@dataclasses.dataclass(frozen=True)
class Inventory:
    file: Path
    hosts: dict[str, str]                      # node -> testinfra spec
    ranges: list[IPv4Network]
    max_pps: int = DEFAULT_MAX_PPS
    ssh_config: str | None = None
    segments: dict[str, IPv4Network] = dataclasses.field(default_factory=dict)
    addresses: dict[str, dict[str, IPv4Address]] = dataclasses.field(default_factory=dict)
    interfaces: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    public: IPv4Address | None = None
    unchecked_host_keys: tuple[str, ...] = ()  # nodes whose host key is not checked (check_host_key: false)
    segments6: dict[str, IPv6Network] = dataclasses.field(default_factory=dict)
    addresses6: dict[str, dict[str, IPv6Address]] = dataclasses.field(default_factory=dict)

    @property
    def ipv6(self) -> bool:
        """Whether the live lab is probed on IPv6: an IPv6 prefix among the ranges."""
        return any(r.version == 6 for r in self.ranges)

    def shown(self, node: str) -> str:
        """A node's host spec as messages show it: without its password."""
        return masked(self.hosts[node])


def load_inventory(path, topology: Topology) -> Inventory:
    """Read and check an inventory against the topology; mistakes name file, field and problem."""
    file = Path(path)
    f = str(file)
    if not file.is_file():
        raise ConfigError(f, "--lw-inventory", "no such file")
    doc = read_yaml(file, f)
    check_keys(f, "", doc, KEYS)
    if not among(doc.get("topology"), (None, topology.name)):
        raise ConfigError(f, "topology", f"the inventory is for {doc['topology']!r}, the run for {topology.name!r}")
    raw_ranges = doc.get("ranges")
    if not isinstance(raw_ranges, list) or not raw_ranges:
        raise ConfigError(f, "ranges", "missing: list the subnets probes may go to, e.g. [192.168.1.0/24]")
    ranges = [_range(f, f"ranges[{i}]", r) for i, r in enumerate(raw_ranges)]
    max_pps = doc.get("max_pps", DEFAULT_MAX_PPS)
    if isinstance(max_pps, bool) or not isinstance(max_pps, int) or max_pps < 1:
        raise ConfigError(f, "max_pps", f"{max_pps!r} is not a positive number of packets per second")
    segments, segments6 = {}, {}
    for name, raw in as_mapping(f, "segments", doc.get("segments"), "a mapping of segments to subnets").items():
        if name not in topology.segments:
            raise ConfigError(f, f"segments.{name}", f"unknown segment; segments of {topology.name}: "
                              f"{', '.join(topology.segments)}")
        for where, value in _per_family(f, f"segments.{name}", raw, "subnet"):
            if _version(value) == 6:
                if topology.segments[name].subnet6 is None:
                    raise ConfigError(f, where, f"segment {name} has no IPv6 in {topology.name} "
                                      "(x-labwarden.ipv6 of its network): nothing there to re-address")
                segments6[name] = network6(f, where, value)
            else:
                segments[name] = network(f, where, value)
    for name, seg in topology.segments.items():
        subnet = segments.get(name, seg.subnet)
        if subnet.num_addresses > MAX_SWEEP:
            raise ConfigError(f, f"segments.{name}", f"{subnet} has {subnet.num_addresses} addresses; live sweeps "
                              f"are capped at {MAX_SWEEP} (a /{33 - MAX_SWEEP.bit_length()}): give the "
                              "segment's real, smaller subnet")
    nodes = doc.get("nodes")
    if not isinstance(nodes, dict):
        raise ConfigError(f, "nodes", "missing: map every node of the topology to {host: SPEC}")
    missing = [n for n in topology.nodes if n not in nodes]
    if missing:
        raise ConfigError(f, "nodes", f"no host for {', '.join(missing)}: every node of "
                          f"{topology.name} needs one (nodes: {', '.join(topology.nodes)})")
    hosts, addresses, addresses6, interfaces, unchecked = {}, {}, {}, {}, []
    for name, spec in nodes.items():
        where = f"nodes.{name}"
        if name not in topology.nodes:
            raise ConfigError(f, where, f"{name!r} is not a node of {topology.name} "
                              f"(nodes: {', '.join(topology.nodes)})")
        spec = {"host": spec} if isinstance(spec, str) else spec
        if not isinstance(spec, dict) or not isinstance(spec.get("host"), str):
            raise ConfigError(f, f"{where}.host", "missing: a testinfra host spec such as ssh://admin@192.168.1.10")
        check_keys(f, where, spec, NODE_KEYS)
        check = spec.get("check_host_key", True)
        if not isinstance(check, bool):
            raise ConfigError(f, f"{where}.check_host_key", f"{check!r} is not true or false")
        hosts[name] = parse_spec(f, f"{where}.host", spec["host"]).spec
        if not check:
            unchecked.append(name)
        node = topology.nodes[name]
        for seg, raw in as_mapping(f, f"{where}.addresses", spec.get("addresses"),
                                     "a mapping of segments to addresses").items():
            if seg not in node.addresses:
                raise ConfigError(f, f"{where}.addresses.{seg}", f"{name} is not attached to {seg} "
                                  f"(attached: {', '.join(node.segments)})")
            for at, value in _per_family(f, f"{where}.addresses.{seg}", raw, "address"):
                if _version(value) == 6:
                    if seg not in node.addresses6:
                        raise ConfigError(f, at, f"{name} has no IPv6 address on {seg} in {topology.name} "
                                          "(x-labwarden.ipv6): the policy judges declared addresses only")
                    addresses6.setdefault(name, {})[seg] = address6(f, at, value)
                else:
                    addresses.setdefault(name, {})[seg] = address(f, at, value)
        for seg, ifname in as_mapping(f, f"{where}.interfaces", spec.get("interfaces"),
                                        "a mapping of segments to interface names").items():
            if seg not in node.addresses:
                raise ConfigError(f, f"{where}.interfaces.{seg}", f"{name} is not attached to {seg} "
                                  f"(attached: {', '.join(node.segments)})")
            if not valid_ifname(ifname):
                raise ConfigError(f, f"{where}.interfaces.{seg}", f"{ifname!r} is not a valid Linux "
                                  f"interface name ({IFNAME_RULE})")
            interfaces.setdefault(name, {})[seg] = ifname
    public = address(f, "public", doc["public"]) if doc.get("public") is not None else None
    if doc.get("ssh_config") is not None and not isinstance(doc["ssh_config"], str):
        raise ConfigError(f, "ssh_config", f"{doc['ssh_config']!r} is not a path to an ssh_config file")
    ssh_config = str(Path(doc["ssh_config"]).expanduser()) if doc.get("ssh_config") else None
    inventory = Inventory(file.resolve(), hosts, ranges, max_pps, ssh_config, segments, addresses,
                          interfaces, public, tuple(unchecked), segments6, addresses6)
    _check_addresses(f, inventory, topology)
    return inventory


def _version(raw) -> int:
    """The IP version a value is written in (a colon: IPv6); its parser names the mistake."""
    return 6 if ":" in str(raw) else 4


def _per_family(f, where: str, raw, what: str) -> list[tuple[str, object]]:
    """A value, or a list of one IPv4 and one IPv6 value: [(where, value)]."""
    if not isinstance(raw, list):
        return [(where, raw)]
    if not 1 <= len(raw) <= 2 or len({_version(v) for v in raw}) != len(raw):
        raise ConfigError(f, where, f"{raw!r}: give one {what}, or a list of one IPv4 and one IPv6 {what}")
    return [(f"{where}[{i}]", v) for i, v in enumerate(raw)]


def _range(f, where: str, raw) -> IPv4Network | IPv6Network:
    """One entry of `ranges`: a subnet of address space nobody else owns, or public
    address space the user declares theirs with {range: CIDR, public_ok: true}."""
    public_ok = False
    if isinstance(raw, dict):
        check_keys(f, where, raw, RANGE_KEYS, required=("range",))
        public_ok = raw.get("public_ok", False)
        if not isinstance(public_ok, bool):
            raise ConfigError(f, f"{where}.public_ok", f"{public_ok!r} is not true or false")
        where, raw = f"{where}.range", raw["range"]
    subnet = network6(f, where, raw) if _version(raw) == 6 else network(f, where, raw)
    if not public_ok and not any(subnet.version == block.version and subnet.subnet_of(block) for block in NOT_PUBLIC):
        raise ConfigError(f, where, f"{subnet} includes public address space (beyond private, shared, "
                          "loopback, link-local, unique local, documentation and benchmarking ranges): probes "
                          "there reach "
                          "other people's networks; if these addresses are yours, write "
                          f"{{range: {subnet}, public_ok: true}}")
    return subnet


def _check_addresses(f, inventory: Inventory, topology: Topology) -> None:
    """Every address the live lab is probed on: inside its segment and the ranges."""
    for name, node in topology.nodes.items():
        held = [(seg, a, inventory.addresses, inventory.segments.get(seg, topology.segments[seg].subnet))
                for seg, a in node.addresses.items()]
        if inventory.ipv6:
            held += [(seg, a, inventory.addresses6, inventory.segments6.get(seg, topology.segments[seg].subnet6))
                     for seg, a in node.addresses6.items()]
        for seg, declared, real_of, subnet in held:
            real = real_of.get(name, {}).get(seg, declared)
            where = f"nodes.{name}.addresses.{seg}"
            if real not in subnet:
                raise ConfigError(f, where, f"{real} is not in segment {seg} ({subnet}): "
                                  f"give segments.{seg} or the node's real address")
            # (`in` does not check the family: an IPv6 address may look inside an IPv4 range)
            if not within(real, inventory.ranges):
                raise ConfigError(f, where, f"{real} is outside the inventory's ranges "
                                  f"({', '.join(map(str, inventory.ranges))}): probes could not reach it")


def apply_inventory(inventory: Inventory, topology: Topology, policy):
    """(topology, policy) with the inventory's real subnets, addresses and interface names.

    Only addresses and names change: zones, rules and services are the policy's own."""
    six = inventory.ipv6  # without an IPv6 range, the live lab has no IPv6
    segments = {name: Segment(name, inventory.segments.get(name, seg.subnet),
                              None if name in inventory.segments else seg.gateway,
                              inventory.segments6.get(name, seg.subnet6) if six else None)
                for name, seg in topology.segments.items()}
    real = {name: {**node.addresses, **inventory.addresses.get(name, {})} for name, node in topology.nodes.items()}
    real6 = {name: {**node.addresses6, **inventory.addresses6.get(name, {})} if six else {}
             for name, node in topology.nodes.items()}

    def moved(hop):  # a next hop, as the real address of the same node on the same segment
        holder = topology.node_at(hop) if hop is not None else None
        if holder is None:
            return hop
        held, now = (holder.addresses, real) if hop.version == 4 else (holder.addresses6, real6)
        return now[holder.name][next(s for s, a in held.items() if a == hop)]

    nodes = {name: Node(name, real[name], moved(node.gateway),
                        {prefix: moved(hop) for prefix, hop in node.routes.items()}, None,
                        {**node.interfaces, **inventory.interfaces.get(name, {})},
                        addresses6=real6[name], gateway6=moved(node.gateway6) if six else None,
                        routes6={prefix: moved(hop) for prefix, hop in node.routes6.items()} if six else {},
                        sysctls=node.sysctls)
             for name, node in topology.nodes.items()}
    live = Topology(topology.name, topology.path, topology.compose_file, segments, nodes, topology.links)
    public = inventory.public or policy.public
    if policy.public is not None and inventory.public is None:
        router = topology.nodes[policy.router]
        seg = next(s for s, a in router.addresses.items() if a == policy.public)
        public = nodes[policy.router].addresses[seg]
    return live, dataclasses.replace(policy, topology=live, public=public)
