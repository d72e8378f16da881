"""What a running Linux router says about its lab (`labwarden init --from-router`): its
interfaces and addresses (`ip -j addr`), its default route (`ip -j route`) and its ruleset
(`nft -j list ruleset`), turned into the same Draft labwarden.declared.openwrt makes from a
UCI config, so the same files are written.

Each interface with an IPv4 address (but loopback) is a segment and a zone of its own, named
after the interface; the default route's interface is the outside zone, given the lab's wan
subnet (a real public address never enters the lab). The draft policy is default deny plus
what the ruleset *obviously* allows, every entry marked for review: a rule that accepts,
reached from the input or forward hook through jumps, matching nothing but the interface
names, the protocol and destination ports (fw4's `iifname "lan0" jump forward_lan` ->
`jump accept_to_wan` -> `oifname "wan0" accept` is one). A rule matching anything else
(conntrack state, marks, addresses) is not obvious and is left to `labwarden learn`.

Pure: the caller runs the commands and passes their JSON.
"""

from __future__ import annotations

import json
import re
from ipaddress import IPv4Interface, IPv4Network

from labwarden.errors import ConfigError
from labwarden.declared.fields import valid_ifname
from labwarden.declared.openwrt import Draft, Entry, Segment, probe_hosts, target

MAX_DEPTH = 8
IGNORED = ("counter", "log", "limit", "comment")
ANY = None  # no constraint


def segments_of(addr: list, route: list, wan_subnet: IPv4Network, origin: str) -> dict[str, Segment]:
    outside = next((r.get("dev") for r in route if r.get("dst") == "default"), None)
    if outside is None:
        raise ConfigError(origin, "ip -j route", "no default route: which interface is the outside?")
    segments: dict[str, Segment] = {}
    for link in addr:
        name = link.get("ifname", "")
        v4 = [a for a in link.get("addr_info", []) if a.get("family") == "inet" and a.get("scope") != "host"]
        if not v4 or not valid_ifname(name) or "loopback" in link.get("link_type", "") or name == "lo":
            continue
        iface = IPv4Interface(f"{v4[0]['local']}/{v4[0]['prefixlen']}")
        where = f"{origin} ip addr {name}"
        if name == outside:
            # the zone is called wan: the suites know the outside by that name
            segments[name] = Segment(name, name, "wan", wan_subnet, list(wan_subnet.hosts())[1], where, True)
        else:
            if iface.network.overlaps(wan_subnet):
                raise ConfigError(origin, f"interface {name}", f"{iface.network} overlaps the lab's wan "
                                  f"{wan_subnet}: pick another --wan-subnet")
            segments[name] = Segment(name, name, name, iface.network, iface.ip, where)
    if outside not in segments:
        raise ConfigError(origin, "ip -j addr", f"the default route's interface {outside} has no IPv4 address")
    return segments


def _match(expr: dict, cond: dict) -> dict | None:
    """cond with this match added; None when the match is not an obvious one."""
    m = expr["match"]
    left, right, op = m.get("left", {}), m.get("right"), m.get("op")
    if op not in ("==", "in"):
        return None
    values = right["set"] if isinstance(right, dict) and "set" in right else [right]
    key = left.get("meta", {}).get("key") if isinstance(left, dict) else None
    if key in ("iifname", "oifname", "l4proto"):
        if not all(isinstance(v, str) for v in values):
            return None
        return {**cond, key: set(values) & cond[key] if cond.get(key) is not None else set(values)}
    if key == "nfproto":
        return cond if values == ["ipv4"] else None
    payload = left.get("payload", {}) if isinstance(left, dict) else {}
    if payload.get("field") == "dport" and payload.get("protocol") in ("tcp", "udp", "th"):
        ports = set()
        for v in values:
            if isinstance(v, int):
                ports.add(v)
            elif isinstance(v, dict) and "range" in v and v["range"][1] - v["range"][0] < 32:
                ports.update(range(v["range"][0], v["range"][1] + 1))
            else:
                return None
        proto = payload["protocol"]
        protos = {proto} if proto != "th" else (cond.get("l4proto") or {"tcp", "udp"})
        return {**cond, "l4proto": protos, "dport": ports}
    if payload.get("protocol") == "ip" and payload.get("field") == "daddr" and all(isinstance(v, str) for v in values):
        return {**cond, "daddr": set(values)}
    if payload.get("protocol") == "icmp" and payload.get("field") == "type" and values == ["echo-request"]:
        return {**cond, "l4proto": {"icmp"}}
    return None


def accepts(ruleset: dict, hook: str, kind: str = "filter", verdict: str = "accept") -> list[tuple[dict, dict]]:
    """(conditions, verdict) under which the `hook` base chains of type `kind` obviously give a
    new packet `verdict` (accept, or dnat in a nat chain)."""
    items = ruleset.get("nftables", [])
    chains = {(c["chain"]["table"], c["chain"]["name"]): c["chain"] for c in items if "chain" in c}
    rules: dict[tuple, list] = {}
    for item in items:
        if "rule" in item:
            r = item["rule"]
            rules.setdefault((r["table"], r["chain"]), []).append(r["expr"])
    found: list[tuple[dict, dict]] = []

    def walk(table, chain, cond, depth):
        if depth > MAX_DEPTH:
            return
        for exprs in rules.get((table, chain), []):
            here = cond
            for expr in exprs:
                op = next(iter(expr))
                if op == "match":
                    here = _match(expr, here)
                    if here is None:
                        break
                elif op in IGNORED:
                    continue
                elif op == verdict:
                    found.append((here, expr[op] or {}))
                    break
                elif op in ("jump", "goto"):
                    walk(table, expr[op]["target"], here, depth + 1)
                    break
                else:  # drop, reject, return, vmap, set updates: not an obvious accept
                    break

    for (table, name), chain in chains.items():
        if chain.get("hook") == hook and chain.get("type") == kind:
            walk(table, name, {}, 0)
    return found


def _services(cond: dict) -> str:
    protos = cond.get("l4proto") or {"tcp", "udp", "icmp"}
    if cond.get("dport") is None:
        return "any" if protos >= {"tcp", "udp"} else ("[icmp]" if protos == {"icmp"} else "any")
    return "[" + ", ".join(f"{p}/{n}" for p in sorted(protos - {"icmp"}) for n in sorted(cond["dport"])) + "]"


def draft_from_router(addr: list, route: list, ruleset: dict, wan_subnet: IPv4Network, origin: str) -> Draft:
    segments = segments_of(addr, route, wan_subnet, origin)
    zones = {s.zone: [s.name] for s in segments.values()}
    zone = {s.name: s.zone for s in segments.values()}  # interface -> zone
    outside = "wan"
    draft = Draft(segments, {}, zones, [], "drop", "denied flows: dropped (drafted; see `labwarden learn`)",
                  outside, [], False, None, [])
    seen = set()
    for hook, to_router in (("input", True), ("forward", False)):
        for cond, _ in accepts(ruleset, hook):
            froms = sorted(cond["iifname"] & set(segments)) if cond.get("iifname") is not None else sorted(segments)
            tos = ["router"] if to_router else (sorted(cond["oifname"] & set(segments))
                                                if cond.get("oifname") is not None else sorted(segments))
            ports = _services(cond)
            for src in (zone[f] for f in froms):
                for dst in (t if t == "router" else zone[t] for t in tos):
                    if (src, dst, ports) in seen or src == dst:
                        continue
                    seen.add((src, dst, ports))
                    draft.entries.append(Entry(
                        "allow", f"{{name: {hook} {src}->{dst}, from: {src}, to: {dst}, ports: {ports}}}",
                        f"{origin}: a rule of the {hook} hook that accepts",
                        "drafted from the ruleset by its interface names and ports alone; "
                        "check it, and run `labwarden learn` for what the router really lets through"))
    _forwards(draft, ruleset, origin)
    text = json.dumps(ruleset)
    if '"reject"' in text:
        draft.blocked, draft.blocked_note = "reject", "the ruleset rejects (drafted: its reject rules answer denied flows)"
    limit = next((e["limit"] for item in ruleset.get("nftables", []) if "rule" in item
                  and item["rule"]["chain"] == "syn_flood" for e in item["rule"]["expr"] if "limit" in e), None)
    if limit and limit.get("per") == "second" and isinstance(limit.get("rate"), int):
        draft.syn_limit = (limit["rate"], int(limit.get("burst") or 5))  # fw4's syn_flood chain
    if '"masquerade"' in text:
        draft.masquerade = [z for z in zones if z != outside]
    probe_hosts(draft)
    return draft


def _forwards(draft: Draft, ruleset: dict, origin: str) -> None:
    outside = next(s for s in draft.segments.values() if s.outside)
    for cond, dnat in accepts(ruleset, "prerouting", "nat", "dnat"):
        if cond.get("iifname") is not None and outside.device not in cond["iifname"]:
            continue
        ports, addr = sorted(cond.get("dport") or []), dnat.get("addr")
        if len(ports) != 1 or not isinstance(addr, str) or dnat.get("family", "ip") != "ip":
            continue
        for proto in sorted((cond.get("l4proto") or {"tcp"}) & {"tcp", "udp"}):
            port = dnat.get("port") if isinstance(dnat.get("port"), int) else ports[0]
            to = target(draft, addr, proto, port, f"the target of a DNAT rule ({proto}/{ports[0]})")
            if to is None:
                continue
            daddr = "public" if cond.get("daddr") else "any"
            draft.entries.append(Entry(
                "forward", f"{{name: dnat {proto}/{ports[0]}, public: {proto}/{ports[0]}, to: {to}, port: {port}, "
                f"daddr: {daddr}}}", f"{origin}: a DNAT rule of the prerouting hook",
                "daddr any: the rule matches no destination address" if daddr == "any" else None))


def ruleset_from_router(draft: Draft, text: str, addr: list, origin: str) -> str:
    """`nft list ruleset` with the outside interface's real address rewritten to the lab's."""
    seg = next(s for s in draft.segments.values() if s.outside)
    rewrites = []
    for link in addr:
        if link.get("ifname") == seg.device:
            for a in link.get("addr_info", []):
                if a.get("family") == "inet" and a["local"] in text:
                    text = re.sub(rf"(?<![0-9.]){re.escape(a['local'])}(?![0-9])", str(seg.router), text)
                    rewrites.append(f"{a['local']} -> {seg.router} (the router's address on {seg.device})")
    header = ["# labwarden: the router's firewall, loaded with `nft -f` (written by `labwarden init`).",
              f"# COPIED FROM: `nft list ruleset` on {origin}.",
              "# CHANGED: " + ("nothing." if not rewrites else "the outside address, as the lab's must differ:")]
    header += [f"#   {r}" for r in rewrites]
    return "\n".join(header) + "\nflush ruleset\n" + text
