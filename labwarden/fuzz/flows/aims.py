"""Aims: when the router is ours, each rule of its config as the flows aimed at it.

The constants and interface pairs of every rule aim some flows at that rule and its
edges (`labwarden.fuzz.flows.strategies`), the way fuzzers take a program's
comparison operands as a dictionary.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from labwarden.declared.policy import Policy


@dataclass(frozen=True)
class Aim:
    """Flows aimed at one rule of the router's config: who it names, and what."""
    line: int
    srcs: tuple[str, ...]
    dsts: tuple[IPv4Address, ...]
    protos: tuple[str, ...]
    ports: tuple[int, ...]


_NAMES = re.compile(r'"([^"]+)"')


def _values(rule: str, keyword: str) -> str | None:
    """The text after `keyword` (a word, or a { set }), or None."""
    m = re.search(rf"(?<![\w-]){keyword}\s+(!=\s*)?(\{{[^}}]*\}}|\S+)", rule)
    if not m or m.group(1):
        return None  # negations name what is *not* meant: no aim
    return m.group(2)


def config_aims(policy: Policy, text: str) -> list[Aim]:
    """An Aim per rule of a router config: sources behind its input interfaces, addresses
    behind its output interfaces or its daddr, its protocols, its ports."""
    topology = policy.topology
    router = topology.nodes[policy.router]
    segment_of_iface = {ifname: seg for seg, ifname in router.interfaces.items()}
    defines = dict(re.findall(r"^\s*define\s+(\w+)\s*=\s*(.+?)\s*$", text, re.M))
    nodes = [n for n in topology.nodes if n != policy.router]
    addresses = {a: n for n in nodes for a in topology.nodes[n].addresses.values()}
    aims = []
    for number, line in enumerate(text.splitlines(), 1):
        rule = line.split("#", 1)[0].strip()
        if not rule or rule.startswith(("table", "chain", "type", "policy", "define", "flush", "}", "set")):
            continue
        rule = re.sub(r"\$(\w+)", lambda m: defines.get(m.group(1), m.group(0)), rule)
        srcs, dsts = nodes, list(addresses) + list(router.addresses.values())
        iif, oif = _values(rule, "iifname"), _values(rule, "oifname")
        if iif:
            segs = {segment_of_iface.get(n) for n in _NAMES.findall(iif)}
            srcs = [n for n in nodes if topology.nodes[n].segments[0] in segs]
        if oif:
            segs = {segment_of_iface.get(n) for n in _NAMES.findall(oif)}
            dsts = [a for a, n in addresses.items() if topology.nodes[n].segments[0] in segs]
        for key, pick in (("saddr", "srcs"), ("daddr", "dsts")):
            raw = _values(rule, f"ip {key}")
            if not raw:
                continue
            try:
                nets = [IPv4Network(v, strict=False) for v in re.findall(r"[\d.]+(?:/\d+)?", raw)]
            except ValueError:
                continue
            if pick == "srcs":
                srcs = [n for n in srcs if any(a in net for a in topology.nodes[n].addresses.values()
                                               for net in nets)]
            else:
                held = [a for a in [*addresses, *router.addresses.values()] if any(a in net for net in nets)]
                dsts = held or [net.network_address for net in nets if net.prefixlen == 32]
        protos = [p for p in ("tcp", "udp") if re.search(rf"\b{p}\s+dport\b", rule)]
        proto_set = _values(rule, "l4proto") or _values(rule, "protocol") or ""
        protos += [p for p in ("tcp", "udp", "icmp") if re.search(rf"\b{p}\b", proto_set) and p not in protos]
        if re.search(r"\bicmp\s+type\b", rule) and "icmp" not in protos:
            protos.append("icmp")
        ports = set()
        for raw in (_values(rule, "dport") or "",):
            for lo, hi in re.findall(r"(\d+)(?:-(\d+))?", raw):
                ports |= {int(lo)} | ({int(hi)} if hi else set())
        if not srcs or not dsts or (not iif and not oif and not ports and "ip " not in rule):
            continue
        aims.append(Aim(number, tuple(srcs), tuple(sorted(set(dsts))), tuple(protos or ("tcp", "udp", "icmp")),
                        tuple(sorted(p for p in ports if 0 <= p <= 65535))))
    return aims
