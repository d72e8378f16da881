"""The three files of a lab drafted from an OpenWrt config (labwarden.declared.openwrt):
compose.yaml, policy.yaml and router/ruleset.nft, as text. Pure: the caller writes them."""

from __future__ import annotations

import hashlib
import re
from ipaddress import IPv4Network

from labwarden.declared.openwrt import Draft, Entry

SERVICE_PORTS = {"ssh": ["tcp"], "https": ["tcp"], "http": ["tcp"], "git": ["tcp"], "dns": ["tcp", "udp"]}
ROUTER_WORDS = ["dns:53", "ssh:22", "http:80"]  # dnsmasq, dropbear, LuCI (uhttpd): what OpenWrt runs
REVIEW = "REVIEW"


def _docker_gateway(draft: Draft, seg) -> str:
    used = {seg.router} | {n.address for n in draft.nodes.values() if n.segment == seg.name}
    candidate = seg.subnet.broadcast_address - 1
    while candidate in used:
        candidate -= 1
    return str(candidate)


def compose_text(draft: Draft, name: str, origin: str) -> str:
    outside = next(s for s in draft.segments.values() if s.outside)
    gateway = draft.nodes["visitor"].address
    lines = [
        f"# {name}: a lab drafted by `labwarden init --openwrt` from {origin}.",
        "# One segment per network of a firewall zone; the router carries the interface names the",
        "# rendered ruleset matches on, and loads that ruleset (router/ruleset.nft) unchanged but",
        "# for the rewrites its header lists. Edit freely: this file is yours now.",
        "# Plain Compose: `docker compose -f compose.yaml config` shows the whole lab.",
        "# Segments are bridges with no host address and no masquerade: the lab never reaches the",
        "# Docker host or anything beyond it.",
    ]
    for note in draft.skipped:
        lines.append(f"# {note}")
    lines += [
        "",
        "x-node: &node",
        "  image: ${LABWARDEN_IMAGE:-labwarden/node:latest}",
        "  stop_grace_period: 1s",
        "  sysctls: &sysctls",
        "    net.ipv4.icmp_ratelimit: 0          # every probe's ICMP error is an answer",
        "    net.ipv4.icmp_msgs_per_sec: 100000",
        "    net.ipv4.icmp_msgs_burst: 100000",
        "",
        "x-segment: &segment",
        "  driver: bridge",
        "  driver_opts:",
        '    com.docker.network.bridge.inhibit_ipv4: "true"',
        '    com.docker.network.bridge.enable_ip_masquerade: "false"',
        '    com.docker.network.bridge.enable_icc: "true"',
        "",
        "services:",
        "  router:",
        "    <<: *node",
        f"    command: [{', '.join(ROUTER_WORDS)}]  # dnsmasq, dropbear, LuCI (uhttpd), as OpenWrt runs",
        "    sysctls:",
        "      <<: *sysctls",
        "      net.ipv4.ip_forward: 1",
        "      net.ipv4.conf.all.arp_ignore: 1      # OpenWrt's default (base-files 10-default.conf)",
        "      net.ipv4.conf.default.arp_ignore: 1",
        "    networks:",
    ]
    for seg in draft.segments.values():
        lines.append(f"      {seg.name}: {{ipv4_address: {seg.router}}}   # {seg.source}")
    interfaces = ", ".join(f"{s.name}: {s.device}" for s in draft.segments.values())
    lines += [
        "    x-labwarden:",
        f"      gateway: {gateway}",
        "      firewall: router/ruleset.nft",
        f"      interfaces: {{{interfaces}}}",
    ]
    inside = ", ".join(f"{s.subnet}: {outside.router}" for s in draft.segments.values() if not s.outside)
    for node in draft.nodes.values():
        seg = draft.segments[node.segment]
        lines += ["", f"  {node.name}:{' ' * max(1, 34 - len(node.name))}# {node.why}", "    <<: *node",
                  f"    command: [{', '.join(node.words)}]", "    networks:",
                  f"      {seg.name}: {{ipv4_address: {node.address}}}"]
        if seg.outside:
            lines.append(f"    x-labwarden:\n      routes: {{{inside}}}")
        else:
            lines.append(f"    x-labwarden: {{gateway: {seg.router}}}")
    lines += ["", "networks:"]
    for seg in draft.segments.values():
        lines += [f"  {seg.name}:{'   # the internet: the ISP gives this zone its address' if seg.outside else ''}",
                  "    <<: *segment",
                  f"    ipam: {{config: [{{subnet: {seg.subnet}, gateway: {_docker_gateway(draft, seg)}}}]}}"]
    return "\n".join(lines) + "\n"


def _services_of(words: list[str]) -> list[str]:
    out = []
    for word in words:
        kind, _, port = word.partition(":")
        out += [f"{proto}/{port}" for proto in SERVICE_PORTS.get(kind, ["tcp"])]
    return out


def _entry_lines(entry: Entry) -> list[str]:
    lines = [f"  # {entry.source}"]
    if entry.review:
        lines.append(f"  # {REVIEW}: {entry.review}")
    if entry.kind == "note":
        lines.append(f"  # {'(disabled) ' if entry.disabled else ''}not drafted: {entry.text}")
    elif entry.disabled:
        lines.append(f"  # disabled (option enabled '0'), so not in the ruleset: - {entry.text}")
    else:
        lines.append(f"  - {entry.text}")
    return lines


def policy_text(draft: Draft, name: str, origin: str) -> str:
    lines = [
        f"# What must hold in {name}: a DRAFT derived from the intent of {origin}",
        "# (firewall zones, forwardings, rules, redirects), each entry under the UCI section it came",
        f"# from (file:line). Lines marked {REVIEW} need a person: firewall4's stock rules (there on",
        "# every OpenWrt router, rarely known) and what the policy cannot say as the config does.",
        "# The fields are documented in topologies/homelab/policy.yaml and topologies/openwrt-homelab/.",
        "# Anything not allowed here is denied; replies to allowed flows pass (stateful).",
        "",
        "router: router",
        "zones:",
    ]
    for zone, segs in draft.zones.items():
        devices = ", ".join(draft.segments[s].device for s in segs)
        lines.append(f"  {zone}: [{', '.join(segs)}]{' ' * max(1, 24 - len(zone) - len(', '.join(segs)))}# devices {devices}")
    lines += ["", f"# {draft.blocked_note}", f"blocked: {draft.blocked}", "",
              "# What listens where (compose.yaml's commands): the router runs what OpenWrt runs",
              "# (dnsmasq, dropbear, LuCI); a node stands on every address a redirect or rule targets.",
              "services:", f"  router: [{', '.join(_services_of(ROUTER_WORDS))}]"]
    for node in draft.nodes.values():
        if node.words:
            lines.append(f"  {node.name}: [{', '.join(_services_of(node.words))}]")
    lines += ["", "allow:"]
    allows = [e for e in draft.entries if e.kind in ("allow", "note")]
    for entry in allows:
        lines += _entry_lines(entry)
    if not any(e.kind == "allow" and not e.disabled for e in allows):
        lines.append("  []")
    forwards = [e for e in draft.entries if e.kind == "forward"]
    if forwards:
        lines += ["", "# `config redirect` sections: daddr any when the redirect names no src_dip (firewall4",
                  "# then forwards the port whatever the destination address), public when it does.",
                  "forwards:"]
        for entry in forwards:
            lines += _entry_lines(entry)
        if all(e.disabled for e in forwards):
            lines.append("  []")
    lines += ["", f"public: {draft.router_public}             # the router's address on the outside zone's network",
              f"masquerade: [{', '.join(draft.masquerade)}]   # what leaves through zone {draft.outside} is masqueraded",
              f"hairpin: {'true' if draft.hairpin else 'false'}" +
              ("                # a redirect without reflection '0' (firewall4 reflects by default)"
               if draft.hairpin else "               # no forward is reflected to the inside"),
              "antispoof: false             # not promised: firewall4 checks no source address (rp_filter would)"]
    if draft.syn_limit:
        lines += ["", "# defaults syn_flood '1': new TCP connections to the router pass a limit, summed over",
                  "# all sources; the prober paces its SYNs to the router under it.",
                  f"syn_limit: {{rate: {draft.syn_limit[0]}, burst: {draft.syn_limit[1]}}}"]
    return "\n".join(lines) + "\n"


_SUBNETS = re.compile(r"^(\s*define (\S+?)_subnets = \{)([^}]*)(\}.*)$", re.M)


def ruleset_text(draft: Draft, ruleset: str, origin: str) -> str:
    """The rendered ruleset with a header; a zone's `define X_subnets` that names other IPv4
    prefixes than the lab gives the zone is rewritten to the lab's (listed in the header)."""
    rewrites: list[str] = []

    def rewrite(match):
        zone, listed = match.group(2), match.group(3)
        ours = [str(draft.segments[s].subnet) for s in draft.zones.get(zone, [])]
        v4 = [w.strip() for w in listed.split(",") if w.strip() and ":" not in w]
        if not v4 or not ours or sorted(str(IPv4Network(w, strict=False)) for w in v4) == sorted(ours):
            return match.group(0)
        v6 = [w.strip() for w in listed.split(",") if ":" in w]
        rewrites.append(f"define {zone}_subnets: {', '.join(v4)} -> {', '.join(ours)} (the lab's {zone} network)")
        return f"{match.group(1)} {', '.join(ours + v6)} {match.group(4)}"

    body = _SUBNETS.sub(rewrite, ruleset)
    digest = hashlib.sha256(ruleset.encode()).hexdigest()
    header = [
        "# labwarden: the router's firewall, loaded with `nft -f` (written by `labwarden init`).",
        f"# COPIED FROM: {origin} (sha256 {digest}), the ruleset firewall4 rendered",
        "#   on the router (`fw4 print`).",
        "# CHANGED: " + ("nothing: the lab uses the router's own addresses and interface names."
                         if not rewrites else "only these lines, where the lab's addresses must differ:"),
    ]
    header += [f"#   {r}" for r in rewrites]
    return "\n".join(header) + "\n" + body
