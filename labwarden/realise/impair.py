"""Link impairments: how a lab's declared links (labwarden.declared.links) are applied.

Applying (`apply`, called by `Lab.up`): `tc netem` where the kernel has it, else the
userspace delay line (agent/delayline.py), chosen by trying a netem qdisc in the prober's
own namespace; the reason is kept for the run's header. Each link is cut into *legs*
(one sender onto the segment, towards everyone there or towards one node). The delay
line carries a leg in the sender (egress), unless the sender runs a firewall (its
forward chain would judge the detour through the TUN): then every receiver carries it
(ingress, by the sender's MAC address). netem carries every leg in the sender. Every
impairment is read back after it is applied; a mismatch stops the lab.

The plans (legs, what each node carries) are pure; `apply` drives the lab's prober
through what the lab offers (a ComposeLab: `prober_exec`, each node's namespace in
`transports`, `mac`), so nothing here imports the realiser.
"""

from __future__ import annotations

import base64
import json
import zlib
from dataclasses import asdict, dataclass, field

from labwarden.errors import LabError
from labwarden.declared.links import Link
from labwarden.declared.topology import Topology
from labwarden.probe.ship import IN_PROBER

METHODS = ("auto", "netem", "delayline", "none")


@dataclass(frozen=True)
class Leg:
    """Packets `sender` puts onto `segment`, for everyone there (to=None) or for one node."""
    link: Link
    sender: str
    to: str | None


# ---------------------------------------------------------------- legs: who sends onto an impaired link

def legs(topology: Topology, links: list[Link]) -> list[Leg]:
    out = []
    for link in links:
        attached = [n for n, node in topology.nodes.items() if link.segment in node.addresses]
        if link.node is None:
            out += [Leg(link, sender, None) for sender in attached]
        else:
            out.append(Leg(link, link.node, None))
            out += [Leg(link, sender, link.node) for sender in attached if sender != link.node]
    return out


# ---------------------------------------------------------------- the delay line's plan

def _routes_onto(topology: Topology, sender: str, segment: str, to: str | None) -> list[list[str]]:
    """[prefix, src] of every route of sender that leaves over segment (towards `to`)."""
    node = topology.nodes[sender]
    src = str(node.addresses[segment])
    subnet = topology.segments[segment].subnet
    hops = {"default": node.gateway} if node.gateway else {}
    hops |= {str(prefix): hop for prefix, hop in node.routes.items()}
    if to is None:
        routes = [str(subnet)] + [p for p, hop in hops.items() if hop in subnet]
    else:
        target = topology.nodes[to].addresses[segment]
        routes = [f"{target}/32"] + [p for p, hop in hops.items() if hop == target]
    return [[prefix, src] for prefix in routes]


def delayline_plan(topology: Topology, links: list[Link], firewalled: set[str],
                   macs: dict[tuple[str, str], str]) -> dict[str, list[dict]]:
    """Per node, the links its relay carries (the request format of delayline.py)."""
    plan: dict[str, dict[int, dict]] = {}

    def entry(node: str, k: int, link: Link) -> dict:
        return plan.setdefault(node, {}).setdefault(k, {
            "id": k, "name": link.name, "profile": link.profile.relay()})

    for k, link in enumerate(links):
        for leg in legs(topology, [link]):
            node = topology.nodes[leg.sender]
            ifname = node.interfaces[link.segment]
            if leg.sender not in firewalled:
                e = entry(leg.sender, k, link)
                e["egress"] = {"ifname": ifname, "local": True,
                               "routes": _routes_onto(topology, leg.sender, link.segment, leg.to),
                               "from": [i for s, i in node.interfaces.items() if s != link.segment]}
                continue
            receivers = [leg.to] if leg.to else [n for n, other in topology.nodes.items()
                                                  if link.segment in other.addresses and n != leg.sender]
            for receiver in receivers:
                if receiver in firewalled:
                    raise LabError(f"link {link.name}: neither {leg.sender} nor {receiver} can carry the "
                                   "delay line between them (both run a firewall, which would judge the "
                                   "detour through the relay); impair another link, or use netem")
                e = entry(receiver, k, link)
                ingress = e.setdefault("ingress", {"ifname": topology.nodes[receiver].interfaces[link.segment],
                                                   "macs": []})
                ingress["macs"].append(macs[(leg.sender, link.segment)])
    return {node: list(by_k.values()) for node, by_k in plan.items()}


def netem_plan(topology: Topology, links: list[Link]) -> dict[str, list[list[str]]]:
    """Per node, the `tc` commands (argv) that put each leg on the sender's egress."""
    plan: dict[str, list[list[str]]] = {}
    by_iface: dict[tuple[str, str], list[Leg]] = {}
    for leg in legs(topology, links):
        by_iface.setdefault((leg.sender, leg.link.segment), []).append(leg)
    for (sender, segment), mine in by_iface.items():
        dev = topology.nodes[sender].interfaces[segment]
        cmds = plan.setdefault(sender, [])
        everyone = [l for l in mine if l.to is None]
        if everyone and len(mine) == 1:
            cmds.append(["tc", "qdisc", "replace", "dev", dev, "root", "netem", *everyone[0].link.profile.netem_args()])
            continue
        # towards one node only (or several links on one interface): a prio band per leg
        cmds.append(["tc", "qdisc", "replace", "dev", dev, "root", "handle", "1:", "prio", "bands",
                     str(2 + len(mine)), "priomap", *["1"] * 16])
        for i, leg in enumerate(mine):
            band = 3 + i
            cmds.append(["tc", "qdisc", "add", "dev", dev, "parent", f"1:{band}", "handle", f"{band}0:",
                         "netem", *leg.link.profile.netem_args()])
            prefixes = [p for p, _ in _routes_onto(topology, sender, segment, leg.to)]
            for j, prefix in enumerate(prefixes):
                prefix = "0.0.0.0/0" if prefix == "default" else prefix
                cmds.append(["tc", "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio",
                             str(10 * (i + 1) + (j > 0) * 50), "u32", "match", "ip", "dst", prefix,
                             "flowid", f"1:{band}"])
    return plan


# ---------------------------------------------------------------- applying

@dataclass
class Impairment:
    """What a lab's links are, how they were applied, and what was read back."""
    links: list[Link]
    method: str = "none"           # netem | delayline | none
    reason: str = ""
    carriers: dict[str, list[str]] = field(default_factory=dict)  # node -> what it carries
    readback: dict = field(default_factory=dict)

    def header(self) -> dict:
        return {"method": self.method, "reason": self.reason,
                "links": [{"link": l.name, "profile": l.profile.describe(), **asdict(l.profile)}
                          for l in self.links],
                "carriers": self.carriers}

    def round_trip_allowance_s(self) -> float:
        """Seconds the impaired links may add to a round trip (every link crossed, jitter both
        ways: a bound): what a probe must wait on top of its timeout, or a slow answer across
        the satellite would pass for a filter's silence."""
        if self.method == "none":
            return 0.0
        return sum(2 * (l.profile.delay_ms + l.profile.jitter_ms) for l in self.links) / 1000

    @property
    def lossy(self) -> bool:
        return self.method != "none" and any(l.profile.loss_pct > 0 for l in self.links)

    def summary(self) -> str:
        """One line for the run's header: which links, how, and why that way."""
        if not self.links or self.method == "none":
            return f"links: none impaired ({self.reason})"
        links = "; ".join(f"{l.name}: {l.profile.describe()}" for l in self.links)
        how = "tc netem" if self.method == "netem" else "the userspace delay line"
        return f"links impaired with {how} ({self.reason}): {links}"

    def link(self, name: str) -> Link:
        for link in self.links:
            if link.name == name:
                return link
        raise LabError(f"no impaired link {name!r} (links: {', '.join(l.name for l in self.links) or 'none'})")


def netem_available(lab) -> tuple[bool, str]:
    """Try a netem qdisc on the prober's own loopback (its namespace has nothing else)."""
    proc = lab.prober_exec("tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "0ms")
    if proc.returncode == 0:
        lab.prober_exec("tc", "qdisc", "del", "dev", "lo", "root")
        return True, "tc netem works on this kernel"
    why = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
    return False, (f"this kernel has no sch_netem (`tc qdisc add ... netem`: {why[-1] if why else 'failed'}); "
                   "links go through labwarden's userspace delay line")


def firewalled_nodes(lab) -> set[str]:
    nodes = {n for n, node in lab.topology.nodes.items() if node.firewall is not None}
    if lab.router_firewall():
        nodes.add(lab.policy.router)
    return nodes


def apply(lab, method: str = "auto", links: list[Link] | None = None) -> Impairment:
    """Impair the lab's declared links (or these) and read them back; nothing without any."""
    links = lab.topology.links if links is None else links
    impairment = Impairment(links)
    if not links or method == "none":
        impairment.reason = "no impaired links" if not links else "impairment switched off (--lw-impair none)"
        return impairment
    if method not in METHODS:
        raise LabError(f"unknown impairment method {method!r} (known: {', '.join(METHODS)})")
    has_netem, why = netem_available(lab)
    if method == "netem" and not has_netem:
        raise LabError(f"--lw-impair netem: {why.split(';')[0]}")
    impairment.method = "netem" if (method == "netem" or (method == "auto" and has_netem)) else "delayline"
    impairment.reason = why if method == "auto" else f"--lw-impair {method} ({why})"
    if impairment.method == "netem":
        _apply_netem(lab, impairment)
    else:
        _apply_delayline(lab, impairment)
    return impairment


def _apply_netem(lab, impairment: Impairment) -> None:
    """One argv per `tc` command, never a shell: interface names come from the lab's files."""
    plan = netem_plan(lab.topology, impairment.links)
    for node, cmds in plan.items():
        for cmd in cmds:
            proc = lab.netns_exec(node, *cmd)
            if proc.returncode != 0:
                raise LabError(f"impairing {node} with netem failed: `{' '.join(cmd)}`: {proc.stderr.strip()}")
        devs = sorted({c[4] for c in cmds})
        shown = lab.netns_exec(node, "tc", "-j", "qdisc", "show")
        try:
            qdiscs = [q for q in json.loads(shown.stdout or "[]") if q.get("dev") in devs]
        except ValueError:
            raise LabError(f"impairing {node}: `tc -j qdisc show` did not answer JSON: "
                           f"{(shown.stderr or shown.stdout).strip()[-500:]}") from None
        netems = [q for q in qdiscs if q.get("kind") == "netem"]
        wanted = sum(1 for c in cmds if "netem" in c)
        if len(netems) != wanted:
            raise LabError(f"impairing {node}: {wanted} netem qdiscs applied, {len(netems)} read back: {qdiscs}")
        impairment.readback[node] = qdiscs
        impairment.carriers[node] = [f"netem on {d}" for d in devs]


def _apply_delayline(lab, impairment: Impairment) -> None:
    topology = lab.topology
    macs = {(n, s): lab.mac(n, s) for n, node in topology.nodes.items() for s in node.addresses}
    plan = delayline_plan(topology, impairment.links, firewalled_nodes(lab), macs)
    request = {"nodes": {node: {**lab.transports[node].namespace(),
                                "addresses": [str(a) for a in topology.nodes[node].addresses.values()],
                                "links": entries} for node, entries in plan.items()}}
    encoded = base64.b64encode(zlib.compress(json.dumps(request).encode())).decode()
    proc = lab.prober_exec("python3", IN_PROBER, "delayline", "start", "-", stdin=encoded)
    try:
        answer = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise LabError(f"the delay line did not start: {proc.stderr.strip()[-2000:] or proc.stdout[-500:]}") from None
    errors = [a["error"] for a in answer.get("nodes", {}).values() if "error" in a]
    if answer.get("error") or errors:
        raise LabError(f"the delay line did not start: {answer.get('error') or '; '.join(errors)}")
    for node, entries in plan.items():
        status = answer["nodes"][node]["ok"]
        problems = verify_delayline(entries, status["readback"])
        if problems:
            raise LabError(f"the delay line in {node} did not read back as applied: {'; '.join(problems)}")
        impairment.readback[node] = status
        impairment.carriers[node] = [f"{e['name']}: " + " + ".join(
            ([f"egress {e['egress']['ifname']}"] if "egress" in e else [])
            + ([f"ingress {e['ingress']['ifname']} from {len(e['ingress']['macs'])} sender(s)"]
               if "ingress" in e else [])) for e in entries]


def verify_delayline(entries: list[dict], readback: dict) -> list[str]:
    """What the relay's read-back lacks of its plan (empty: all there)."""
    problems = []
    tuns = {t["name"]: t for t in readback.get("tuns", [])}
    for e in entries:
        k = e["id"]
        kinds = (["o"] if "egress" in e else []) + (["i", "j"] if "ingress" in e else [])
        for t in kinds:
            name = f"lwd{k}{t}"
            if not tuns.get(name, {}).get("up"):
                problems.append(f"TUN {name} is not up")
        if "egress" in e:
            table = readback.get("tables", {}).get(str(1100 + 3 * k), [])
            have = {r.get("dst") for r in table}
            for prefix, _ in e["egress"]["routes"]:
                if prefix not in have:
                    problems.append(f"route {prefix} missing from table {1100 + 3 * k}")
            rules = [r for r in readback.get("rules", []) if r.get("priority") == 400
                     and r.get("table") == str(1100 + 3 * k)]
            if not any(r.get("iif") == "lo" for r in rules):
                problems.append(f"no rule sends locally made packets into lwd{k}o")
        if "ingress" in e:
            nft = readback.get("nft", "")
            for mac in e["ingress"]["macs"]:
                if mac.lower() not in nft.lower():
                    problems.append(f"no nft mark for frames from {mac}")
    sysctls = readback.get("sysctls", {})
    for tun in tuns:
        for key, value in (("forwarding", "1"), ("rp_filter", "0"), ("accept_local", "1")):
            if sysctls.get(f"net.ipv4.conf.{tun}.{key}") != value:
                problems.append(f"{tun}'s {key} is {sysctls.get(f'net.ipv4.conf.{tun}.{key}')}, not {value}")
    if sysctls.get("net.ipv4.conf.all.rp_filter") != "0":
        problems.append("net.ipv4.conf.all.rp_filter is not 0")
    return problems


def prober_status(lab) -> dict:
    """`delayline.py status`: each relay's liveness, counters and a fresh read-back, per node."""
    proc = lab.prober_exec("python3", IN_PROBER, "delayline", "status")
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1]).get("nodes", {})
    except (ValueError, IndexError):
        raise LabError(f"the delay line's status could not be read: {proc.stderr.strip()[-1000:]}") from None


def counters(lab) -> dict:
    """The relays' counters now (packets in, out, lost, ...), per node and direction."""
    proc = lab.prober_exec("python3", IN_PROBER, "delayline", "status")
    try:
        nodes = json.loads(proc.stdout.strip().splitlines()[-1]).get("nodes", {})
    except (ValueError, IndexError):
        return {}
    return {n: {"alive": s.get("alive"), "counters": s.get("counters")} for n, s in nodes.items()}

