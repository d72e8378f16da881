"""Reading policy.yaml into a Policy: every key checked, every mistake a ConfigError naming
file, field and problem. What the keys mean: labwarden.declared.policy (and
labwarden.declared.budgets for ``budgets``)."""

from __future__ import annotations

import math
import re
from ipaddress import IPv4Address
from pathlib import Path

from labwarden.errors import ConfigError
from labwarden.declared.budgets import load_budgets
from labwarden.declared.fields import address, among, as_list, check_keys, lab_file, read_yaml, shown
from labwarden.declared.policy import (BLOCKED, FAMILIES, PORT_FORMS, ROUTER_ZONE, Forward, Policy, Rule, Service,
                                       SynLimit, Tunnel)
from labwarden.declared.topology import Topology

KEYS = ("router", "zones", "blocked", "services", "allow", "forwards",
        "public", "masquerade", "hairpin", "antispoof", "syn_limit", "tunnels", "budgets", "nd_blocked")
RULE_KEYS = ("name", "from", "to", "ports", "family")
FORWARD_KEYS = ("name", "public", "to", "port", "daddr", "family")
FORWARD_DADDRS = ("public", "any")
SYN_LIMIT_KEYS = ("rate", "burst")
TUNNEL_KEYS = ("name", "client", "local", "edge", "public", "page", "host")


def load_policy(topology: Topology, path=None) -> Policy:
    """Load and validate policy.yaml (default: the one in the topology's folder)."""
    file = Path(path) if path is not None else topology.path / "policy.yaml"
    if not file.is_file():
        raise ConfigError(shown(file.parent), file.name, "no such file: a lab needs a policy file")
    f = shown(file)
    if path is None:  # the lab's own: inside its folder (a file given by the caller is theirs)
        lab_file(f, "policy.yaml", topology.path, file.name)
    doc = read_yaml(file, f)
    check_keys(f, "", doc, KEYS, ("router", "zones"))
    nodes = topology.nodes
    router = doc["router"]
    if not among(router, nodes):
        raise ConfigError(f, "router", f"{router!r} is not a node of {topology.name} (nodes: {', '.join(nodes)})")
    zones = _zones(f, doc["zones"], topology, router)
    known = [*zones, ROUTER_ZONE]
    blocked = doc.get("blocked", "drop")
    if not among(blocked, BLOCKED):
        raise ConfigError(f, "blocked", f"{blocked!r} is not one of: {', '.join(BLOCKED)}")
    services = _services(f, doc.get("services") or {}, topology)
    allow = [_rule(f, f"allow[{i}]", raw, known) for i, raw in enumerate(as_list(f, "allow", doc.get("allow")))]
    public = _public(f, doc, topology, router)
    forwards = [_forward(f, f"forwards[{i}]", raw, topology)
                for i, raw in enumerate(as_list(f, "forwards", doc.get("forwards")))]
    if forwards and public is None:
        raise ConfigError(f, "public", "missing: forwards need the router's public address")
    masquerade = as_list(f, "masquerade", doc.get("masquerade"))
    for i, zone in enumerate(masquerade):
        if not among(zone, zones):
            raise ConfigError(f, f"masquerade[{i}]", f"unknown zone {zone!r}; known zones: {', '.join(zones)}")
    nd_blocked = as_list(f, "nd_blocked", doc.get("nd_blocked"))
    for i, zone in enumerate(nd_blocked):
        if not among(zone, zones):
            raise ConfigError(f, f"nd_blocked[{i}]", f"unknown zone {zone!r}; known zones: {', '.join(zones)}")
    flags = {key: doc.get(key, False) for key in ("hairpin", "antispoof")}
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise ConfigError(f, key, f"{value!r} must be true or false")
    syn_limit = _syn_limit(f, doc.get("syn_limit"))
    tunnels = _tunnels(f, as_list(f, "tunnels", doc.get("tunnels")), topology, services)
    policy = Policy(file.resolve(), topology, router, zones, blocked, services, allow, forwards,
                    public, masquerade, **flags, syn_limit=syn_limit, tunnels=tunnels)
    policy.nd_blocked = frozenset(nd_blocked)
    policy.budgets = load_budgets(f, doc.get("budgets"), policy)  # paths are named by the policy's labels
    return policy


def _zones(f, raw, topology: Topology, router: str) -> dict[str, list[str]]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f, "zones", "must map each zone's name to its segments, e.g. {servers: [servers]}")
    zones: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for zone, segments in raw.items():
        if zone == ROUTER_ZONE:
            raise ConfigError(f, f"zones.{zone}", f"'{ROUTER_ZONE}' is reserved: it names the router itself")
        segments = [segments] if isinstance(segments, str) else segments
        if not isinstance(segments, list):
            raise ConfigError(f, f"zones.{zone}", "must be a list of segments")
        for i, seg in enumerate(segments):
            if not among(seg, topology.segments):
                raise ConfigError(f, f"zones.{zone}[{i}]", f"unknown segment {seg!r}; segments of "
                                  f"{topology.name}: {', '.join(topology.segments)}")
            if seg in owner:
                raise ConfigError(f, f"zones.{zone}[{i}]", f"segment {seg} is already in zone {owner[seg]}")
            owner[seg] = str(zone)
        zones[str(zone)] = list(segments)
    for seg in topology.segments:
        if seg not in owner:
            raise ConfigError(f, "zones", f"segment {seg} is in no zone; every segment needs exactly one")
    for node in topology.nodes.values():
        spanned = sorted({owner[s] for s in node.segments})
        if node.name != router and len(spanned) > 1:
            raise ConfigError(f, "zones", f"node {node.name} is attached to zones {' and '.join(spanned)}; "
                              "only the router may span zones")
    return zones


def _port(f, where, raw, allow_any=False) -> Service:
    try:
        return Service.parse(raw)
    except ValueError:
        forms = f"{PORT_FORMS}{' (or the whole list: any)' if allow_any else ''}"
        raise ConfigError(f, where, f"{raw!r} is not a port: use {forms}") from None


def _services(f, raw, topology: Topology) -> dict[str, frozenset[Service]]:
    if not isinstance(raw, dict):
        raise ConfigError(f, "services", "must map node names to lists of ports")
    services = {}
    for node, ports in raw.items():
        if node not in topology.nodes:
            raise ConfigError(f, f"services.{node}", f"{node!r} is not a node of {topology.name} "
                              f"(nodes: {', '.join(topology.nodes)})")
        ports = as_list(f, f"services.{node}", ports)
        services[node] = frozenset(_port(f, f"services.{node}[{i}]", p) for i, p in enumerate(ports))
    return services


def _rule(f, where, raw, known: list[str]) -> Rule:
    check_keys(f, where, raw, RULE_KEYS, ("from", "to", "ports"))
    ends = {}
    for key in ("from", "to"):
        zones = [raw[key]] if isinstance(raw[key], str) else as_list(f, f"{where}.{key}", raw[key])
        for zone in zones:
            if not among(zone, known):
                raise ConfigError(f, f"{where}.{key}", f"unknown zone {zone!r}; known zones: {', '.join(known)}")
        ends[key] = frozenset(zones)
    name = str(raw.get("name", where))
    family = raw.get("family")
    if family is not None and not among(family, FAMILIES):
        raise ConfigError(f, f"{where}.family", f"{family!r} is not an address family; use one of: "
                          f"{', '.join(FAMILIES)} (or leave it out: both)")
    version = FAMILIES[family] if family is not None else None
    if raw["ports"] == "any":
        return Rule(name, ends["from"], ends["to"], frozenset(), any=True, family=version)
    ports = as_list(f, f"{where}.ports", raw["ports"])
    services = frozenset(_port(f, f"{where}.ports[{i}]", p, allow_any=True) for i, p in enumerate(ports))
    return Rule(name, ends["from"], ends["to"], services, family=version)


def _public(f, doc, topology: Topology, router: str) -> IPv4Address | None:
    if doc.get("public") is None:
        return None
    public = address(f, "public", doc["public"])
    held = topology.nodes[router].addresses.values()
    if public not in held:
        raise ConfigError(f, "public", f"{public} is not an address of the router {router} "
                          f"(its addresses: {', '.join(map(str, held))})")
    return public


def _forward(f, where, raw, topology: Topology) -> Forward:
    check_keys(f, where, raw, FORWARD_KEYS, ("public", "to"))
    public = _port(f, f"{where}.public", raw["public"])
    if public.proto == "icmp":
        raise ConfigError(f, f"{where}.public", "icmp cannot be forwarded: use tcp/N or udp/N")
    if not among(raw["to"], topology.nodes):
        raise ConfigError(f, f"{where}.to", f"{raw['to']!r} is not a node of {topology.name} "
                          f"(nodes: {', '.join(topology.nodes)})")
    port = raw.get("port", public.port)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f, f"{where}.port", f"{port!r} is not a port number (1..65535)")
    daddr = raw.get("daddr", "public")
    if not among(daddr, FORWARD_DADDRS):
        raise ConfigError(f, f"{where}.daddr", f"{daddr!r} is not one of: {', '.join(FORWARD_DADDRS)} "
                          "(public: the router's public address only; any: any address the outside "
                          "zone sends through the router)")
    family = raw.get("family")
    if family is not None and not among(family, FAMILIES):
        raise ConfigError(f, f"{where}.family", f"{family!r} is not an address family; use one of: "
                          f"{', '.join(FAMILIES)} (ipv4: a DNAT only, no IPv6 pinhole; or leave it out: both)")
    version = FAMILIES[family] if family is not None else None
    return Forward(str(raw.get("name", where)), public, raw["to"], port, daddr, version)


def _syn_limit(f, raw) -> SynLimit | None:
    if raw is None:
        return None
    check_keys(f, "syn_limit", raw, SYN_LIMIT_KEYS, SYN_LIMIT_KEYS)
    rate, burst = raw["rate"], raw["burst"]
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < math.inf:
        raise ConfigError(f, "syn_limit.rate", f"{rate!r} is not a positive number of SYNs per second")
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        raise ConfigError(f, "syn_limit.burst", f"{burst!r} is not a positive whole number of SYNs")
    return SynLimit(float(rate), burst)


def _tunnels(f, raws: list, topology: Topology, services) -> list[Tunnel]:
    tunnels: list[Tunnel] = []
    for i, raw in enumerate(raws):
        where = f"tunnels[{i}]"
        check_keys(f, where, raw, TUNNEL_KEYS, ("client", "local", "edge", "public"))
        for key in ("client", "edge"):
            if not among(raw[key], topology.nodes):
                raise ConfigError(f, f"{where}.{key}", f"{raw[key]!r} is not a node of {topology.name} "
                                  f"(nodes: {', '.join(topology.nodes)})")
        if raw["client"] == raw["edge"]:
            raise ConfigError(f, f"{where}.edge", "the edge must be another node than the client")
        ports = {}
        for key in ("local", "public"):
            ports[key] = _port(f, f"{where}.{key}", raw[key])
            if ports[key].proto != "tcp":
                raise ConfigError(f, f"{where}.{key}", f"{raw[key]!r}: a tunnel carries tcp/N only")
        edge, public = raw["edge"], ports["public"]
        if public in services.get(edge, ()):
            raise ConfigError(f, f"{where}.public", f"{public} is already a service of {edge}: "
                              "the tunnel's public side needs a port of its own")
        for other in tunnels:
            if (other.edge, other.public) == (edge, public):
                raise ConfigError(f, f"{where}.public", f"tunnel '{other.name}' already publishes "
                                  f"{public} on {edge}")
        page = lab_file(f, f"{where}.page", topology.path, raw["page"]) if raw.get("page") is not None else None
        host = _host(f, f"{where}.host", raw.get("host"))
        tunnels.append(Tunnel(str(raw.get("name", where)), raw["client"], ports["local"], edge,
                              public, page, host))
    return tunnels


_HOST = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


def _host(f, where, raw) -> str | None:
    """A tunnel's host name, as visitors send it in Host: (e.g. laptop.tunnel.test)."""
    if raw is None:
        return None
    if not isinstance(raw, str) or not _HOST.match(raw.lower()):
        raise ConfigError(f, where, f"{raw!r} is not a host name: give the name visitors ask the edge for, "
                          "e.g. laptop.tunnel.test (letters, digits, '-' and dots; no scheme, port or path)")
    return raw.lower()
