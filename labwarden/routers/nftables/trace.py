"""Which rule of the router decided a flow: nftables tracing, read back to the config file.

For flows to explain, a table `labwarden_trace` is added to the router (it
marks their packets with `meta nftrace set 1` before any other chain sees
them), the flows are sent again while the agent runs `nft monitor trace` in
the router, and the table is removed. Each traced packet's path (chain, rule
text and handle, verdict) is matched to its flow, and the rule that decided is
mapped to its line in the config file through its position in its chain
(`nft -a list ruleset` gives the order of the handles), checked against the
rule's text.

Pure parsing here; the sending is `FlowFuzzer.observe(..., trace=...)`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path

TABLE = "labwarden_trace"
FILTER_HOOKS = ("input", "forward", "output")


def trace_ruleset(addresses) -> str:
    """Mark every packet from or to these addresses (IPv4 and IPv6), at the first hook it meets."""
    marks = ""
    for header, version in (("ip", 4), ("ip6", 6)):
        listed = ", ".join(sorted(str(a) for a in set(map(ip_address, addresses)) if a.version == version))
        if listed:
            marks += "".join(f"\t\t{header} {key} {{ {listed} }} meta nftrace set 1\n" for key in ("saddr", "daddr"))
    chains = "".join(f"\tchain {name} {{\n\t\ttype filter hook {name} priority -350; policy accept;\n{marks}\t}}\n"
                     for name in ("prerouting", "output"))
    # create-then-delete: removes a table left by an interrupted run, and fails on nothing
    return f"table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n{chains}}}\n"


def untrace_ruleset() -> str:
    return f"table inet {TABLE}\ndelete table inet {TABLE}\n"


# ---------------------------------------------------------------- the trace

_EVENT = re.compile(r"^trace id (\S+) (\S+) (\S+) (\S+) (packet: |rule |verdict |policy )(.*)$")
_RULE = re.compile(r"^(.*?)\s*# handle (\d+)\s*\(verdict ([^)]*)\)\s*$")


@dataclass
class Event:
    family: str
    table: str
    chain: str
    kind: str            # rule | policy | verdict
    text: str            # the rule's text, or the policy / verdict word
    handle: int | None
    verdict: str         # accept | drop | reject | continue | jump X | goto X | return

    def key(self) -> tuple[str, str, str]:
        return self.family, self.table, self.chain


@dataclass
class TracedPacket:
    header: dict          # saddr, daddr, proto, sport, dport, icmp_type, ip_id
    events: list[Event] = field(default_factory=list)

    @property
    def fate(self) -> Event | None:
        """The event that ended the packet (a drop or reject), or None if it went through."""
        return next((e for e in self.events if e.verdict in ("drop", "reject")), None)

    def decided_by(self, chain_hooks: dict) -> Event | None:
        """The drop that ended it; else the last accept in a filter chain of the input, forward
        or output hook (a rule, or the chain's policy), or in a regular chain jumped to from
        one: fw4 accepts in `accept_from_gpu`, after its `mangle_input` chain's policy accept."""
        if self.fate:
            return self.fate
        filtering, base = [], ("", "")
        for e in self.events:
            base = chain_hooks.get(e.key(), base)  # a regular chain: the base chain that jumped
            if e.verdict == "accept" and base[0] == "filter" and base[1] in FILTER_HOOKS:
                filtering.append(e)
        accepted = filtering or [e for e in self.events if e.verdict == "accept"]
        return accepted[-1] if accepted else None

    def nat(self) -> list[Event]:
        return [e for e in self.events if e.kind == "rule" and re.search(r"\b(dnat|snat|redirect)\b", e.text)]


def _header(text: str) -> dict:
    """A traced packet's header: addresses, protocol, ports or ICMP type, and what tells two
    packets apart (IPv4's id; IPv6 has none: its flow label, length and ports)."""
    def word(name, cast=str):
        m = re.search(rf"(?:^| ){name} (\S+)", text)
        return cast(m.group(1)) if m else None
    if " ip6 saddr " in f" {text}":
        proto = word("ip6 nexthdr")
        header = {"saddr": word("ip6 saddr", ip_address), "daddr": word("ip6 daddr", ip_address), "proto": proto,
                  "ip_id": "/".join(str(word(k)) for k in ("ip6 flowlabel", "ip6 length", r"\S+ sport", r"\S+ dport"))}
    else:
        header = {"saddr": word("ip saddr", ip_address), "daddr": word("ip daddr", ip_address),
                  "proto": word("ip protocol"), "ip_id": word("ip id")}
    for l4 in ("tcp", "udp"):
        if f" {l4} dport " in f" {text}":
            header.update(proto=l4, sport=word(f"{l4} sport", int), dport=word(f"{l4} dport", int))
    for icmp in ("icmp", "icmpv6"):  # an echo is an icmp flow on either family
        if f" {icmp} type " in f" {text}":
            header.update(proto="icmp", icmp_type=word(f"{icmp} type"))
    return header


def parse_events(lines: list[str]) -> list[TracedPacket]:
    """Packets in the order they were first seen, each with its path of events."""
    packets: list[TracedPacket] = []
    current: dict[str, TracedPacket] = {}
    for line in lines:
        m = _EVENT.match(line.strip())
        if not m:
            continue
        trace_id, family, table, chain, kind, rest = m.groups()
        kind = kind.strip().rstrip(":")
        if kind == "packet":
            header = _header(rest)
            packet = current.get(trace_id)
            # every packet starts in our marking chain (the first one it meets); the id of a
            # trace is the kernel's buffer, which a later packet may reuse
            if packet is None or table == TABLE or packet.header.get("ip_id") != header.get("ip_id"):
                packet = TracedPacket(header)
                packets.append(packet)
                current[trace_id] = packet
            continue
        packet = current.get(trace_id)
        if packet is None:
            continue
        if table == TABLE:
            continue  # our own marking
        if kind == "rule":
            r = _RULE.match(rest)
            if not r:
                continue
            text, handle, verdict = r.group(1), int(r.group(2)), r.group(3).strip()
            packet.events.append(Event(family, table, chain, "rule", text, handle, verdict))
        elif kind == "policy":
            packet.events.append(Event(family, table, chain, "policy", f"policy {rest.strip()}", None,
                                       rest.strip()))
        else:
            packet.events.append(Event(family, table, chain, "verdict", rest.strip(), None, rest.strip()))
    return packets


# ---------------------------------------------------------------- the listing and the file

def parse_listing(text: str) -> tuple[dict, dict]:
    """From `nft -a list ruleset`: (family, table, chain) -> [handles in order], and
    (family, table, chain) -> (type, hook) of base chains."""
    order: dict[tuple, list[int]] = {}
    hooks: dict[tuple, tuple[str, str]] = {}
    table = chain = None
    for line in text.splitlines():
        s = line.strip()
        if m := re.match(r"^table (\S+) (\S+) \{", s):
            table, chain = (m.group(1), m.group(2)), None
        elif m := re.match(r"^chain (\S+) \{", s):
            chain = (*table, m.group(1))
            order[chain] = []
        elif chain and (m := re.match(r"^type (\S+) hook (\S+)", s)):
            hooks[chain] = (m.group(1), m.group(2))
        elif chain and (m := re.search(r"# handle (\d+)$", s)) and not s.startswith(("chain", "table", "set")):
            order[chain].append(int(m.group(1)))
        elif s == "}" and chain:
            chain = None
    return order, hooks


@dataclass(frozen=True)
class Source:
    """A rule (or a chain's policy) in the config file."""
    line: int
    text: str


def parse_config(text: str) -> dict[tuple, dict]:
    """(family, table, chain) -> {"rules": [Source], "policy": Source | None} of a config
    written in the usual block form (one rule a line)."""
    chains: dict[tuple, dict] = {}
    table = chain = None
    depth, skip_until = 0, None
    for number, raw in enumerate(text.splitlines(), 1):
        s = raw.split("#", 1)[0].strip() if not raw.strip().startswith("#") else ""
        opens, closes = s.count("{"), s.count("}")
        if skip_until is not None:  # inside a set or map block
            depth += opens - closes
            if depth <= skip_until:
                skip_until = None
            continue
        if m := re.match(r"^table\s+(\S+)\s+(\S+)\s*\{", s):
            table = (m.group(1), m.group(2))
        elif table and (m := re.match(r"^chain\s+(\S+)\s*\{", s)):
            chain = (*table, m.group(1))
            chains.setdefault(chain, {"rules": [], "policy": None})  # reopened: its rules follow
            rest = s[m.end():]
            if "policy" in rest:
                chains[chain]["policy"] = Source(number, raw.strip())
        elif chain and re.match(r"^(set|map)\s", s) and opens > closes:
            skip_until = depth
        elif chain and s and s != "}":
            if re.match(r"^type\s", s) or re.match(r"^policy\s", s):
                if "policy" in s:
                    chains[chain]["policy"] = Source(number, raw.strip())
            else:
                chains[chain]["rules"].append(Source(number, s.rstrip(";").strip()))
        depth += opens - closes
        if chain and depth <= 1:
            chain = None
        if depth <= 0:
            table = chain = None
    return chains


@dataclass(frozen=True)
class Located:
    event: Event
    source: Source | None
    file: str

    def __str__(self):
        where = f" ({self.file}:{self.source.line})" if self.source else ""
        if self.event.kind == "policy":
            return f"{self.event.chain} {self.event.text}{where}"
        text = self.source.text if self.source else self.event.text
        return f"{self.event.chain} rule '{text}'{where}"


def locate(event: Event, listing: tuple[dict, dict], config: dict, file: str) -> Located:
    order, _ = listing
    chain = config.get(event.key())
    if chain is None:
        return Located(event, None, file)
    if event.kind == "policy":
        return Located(event, chain["policy"], file)
    handles = order.get(event.key(), [])
    if event.handle in handles and len(handles) == len(chain["rules"]):
        return Located(event, chain["rules"][handles.index(event.handle)], file)
    words = set(event.text.split())  # counts differ (a rule over several lines): best text match
    scored = [(len(words & set(src.text.split())) / max(1, len(words | set(src.text.split()))), src)
              for src in chain["rules"]]
    best = max(scored, key=lambda t: t[0], default=(0, None))
    return Located(event, best[1] if best[0] >= 0.5 else None, file)


# ---------------------------------------------------------------- a flow's story

@dataclass
class Story:
    """What the router did with one flow's packets."""
    request: list[TracedPacket]
    reply: list[TracedPacket]

    def empty(self) -> bool:
        return not self.request and not self.reply


def stories(packets: list[TracedPacket], flows: dict) -> dict:
    """flows: key -> (source addresses, dst, proto, port, reply sources); each packet goes to
    the flow it belongs to, by its header as the router first saw it."""
    out = {key: Story([], []) for key in flows}
    for packet in packets:
        h = packet.header
        for key, (srcs, dst, proto, port, answerers) in flows.items():
            if h.get("proto") != proto and not (proto == "icmp" and h.get("proto") == "icmp"):
                continue
            if h.get("saddr") in srcs and h.get("daddr") == dst and (port is None or h.get("dport") == port):
                out[key].request.append(packet)
                break
            if h.get("saddr") in answerers and (port is None or h.get("sport") in (port, None)):
                out[key].reply.append(packet)
                break
    return out


def explain(story: Story, listing_text: str, config_text: str | None, file: str) -> tuple[str, str]:
    """(the flow's fate in capitals, 'by <chain> rule ... (file:line)')."""
    listing = parse_listing(listing_text)
    config = parse_config(config_text) if config_text else {}
    hooks = listing[1]

    def where(event):
        return str(locate(event, listing, config, file))

    if story.empty():
        return "NOT SEEN", "the router traced no packet of this flow (it did not reach the router, " \
                           "or died before conntrack reassembled it)"
    for packet in story.request:
        if packet.fate:
            verb = "REJECTED" if packet.fate.verdict == "reject" else "DROPPED"
            return verb, f"by {where(packet.fate)}"
    first = story.request[0] if story.request else story.reply[0]
    decided = first.decided_by(hooks)
    by = f"by {where(decided)}" if decided else "with no rule deciding"
    for rewrite in first.nat()[:1]:
        by += f" after {where(rewrite)}"
    for packet in story.reply:
        if packet.fate:
            return "ACCEPTED", f"{by}, but its reply was DROPPED by {where(packet.fate)}"
    return "ACCEPTED", by


def shown_path(path, topology) -> str:
    """A router config's path as messages name it: relative to the lab folder when inside it
    (router/nftables.conf), else to the cwd."""
    path = Path(path).resolve()
    for base in (topology.path, Path.cwd()):
        try:
            return str(path.relative_to(base))
        except ValueError:
            pass
    return str(path)


# the agent loads a config as "flush ruleset; " + its text (agent.py load_ruleset): nft reads
# it from /dev/stdin, with the file's own line numbers, and line 1's columns shifted by this
LOAD_PREFIX = len("flush ruleset; ")
_STDIN = re.compile(r"/dev/stdin:(\d+):(\d+)(?:-(\d+))?")


def stdin_as(message: str, shown: str) -> str:
    """An nft error about a config it read from stdin, with the config's own name and, on its
    first line, its own columns: '/dev/stdin:5:39-45: Error' -> 'router/nftables.conf:5:39-45: Error'."""
    def named(m: re.Match) -> str:
        line, cols = int(m[1]), [int(c) for c in m.groups()[1:] if c]
        if line == 1:
            cols = [max(1, c - LOAD_PREFIX) for c in cols]
        return f"{shown}:{line}:" + "-".join(map(str, cols))
    return _STDIN.sub(named, message)
