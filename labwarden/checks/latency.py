"""Latency: how budgets (labwarden.declared.budgets) are measured, and how the figures are judged.

Statistics: a lost sample (no complete answer within the timeout, an error, an error
page) counts as slower than any limit: it is an infinite sample in min, every percentile
(interpolated linearly, as numpy does), max and mean; jitter (RFC 3550 style: mean
absolute difference of consecutive samples) is taken over the received samples.

Also here: the expected route of a path through the topology (for traceroutes) and the
round trip a path should show given the lab's impaired links. Pure logic but for
`measure`/`traceroute`, which run through a lab's probe agents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from labwarden.declared.budgets import Budget
from labwarden.declared.links import Link, crossing_delay
from labwarden.probe import NodeJob

LOST = math.inf   # a lost sample, in the statistics: slower than any limit
ACCURACY_PCT, ACCURACY_FLOOR_MS = 1.0, 2.0


# ---------------------------------------------------------------- statistics

def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); anywhere between a
    received sample and a lost one (LOST) is lost."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    if lo == hi or math.isinf(ordered[hi]):
        return ordered[hi]
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def jitter(samples: list[float | None]) -> float | None:
    """Mean absolute difference of consecutive received samples, in sending order."""
    got = [s for s in samples if s is not None]
    if len(got) < 2:
        return None
    return sum(abs(b - a) for a, b in zip(got, got[1:])) / (len(got) - 1)


@dataclass(frozen=True)
class Stats:
    count: int
    received: int
    loss_pct: float
    min: float | None
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None
    mean: float | None
    jitter: float | None

    @classmethod
    def of(cls, samples: list[float | None]) -> Stats:
        """Figures of the samples in sending order (None: lost, counted as LOST)."""
        got = [s for s in samples if s is not None]
        every = [LOST if s is None else s for s in samples]
        loss = 100.0 * (len(samples) - len(got)) / len(samples) if samples else 100.0
        return cls(len(samples), len(got), loss, min(every, default=None), percentile(every, 50),
                   percentile(every, 95), percentile(every, 99), max(every, default=None),
                   sum(every) / len(every) if every else None, jitter(samples))

    def get(self, metric: str) -> float | None:
        return self.loss_pct if metric == "loss" else getattr(self, metric)

    def row(self) -> list:
        return [self.count, f"{self.loss_pct:.1f}%", *(figure(getattr(self, m)) for m in STATS_COLUMNS[2:])]


def figure(v: float | None) -> str:
    """A statistic as tables show it: ms with 2 decimals, '-' for none, 'lost' for LOST."""
    return "-" if v is None else "lost" if math.isinf(v) else f"{v:.2f}"


STATS_COLUMNS = ["n", "loss", "min", "p50", "p95", "p99", "max", "jitter"]


# ---------------------------------------------------------------- judging

@dataclass
class Measured:
    budget: Budget
    samples: list[float | None]
    ttfb: list[float | None] = field(default_factory=list)
    errors: dict = field(default_factory=dict)
    status: list = field(default_factory=list)

    @property
    def stats(self) -> Stats:
        return Stats.of(self.samples)

    def series(self, name: str) -> Stats:
        return Stats.of(self.ttfb) if name == "ttfb" else self.stats

    def failures(self) -> list[str]:
        """One line per broken limit, naming path, budget and the measured figure."""
        out = []
        for limit in self.budget.limits:
            stats = self.series(limit.series)
            if limit.holds(stats):
                continue
            value = stats.get(limit.metric)
            what = f"{'ttfb ' if limit.series == 'ttfb' else ''}{limit.metric}"
            if value is None or (stats.received == 0 and limit.metric != "loss"):
                seen = "nothing was received"
            elif math.isinf(value):
                seen = f"{what} is a lost sample (a lost sample is slower than any limit)"
            else:
                seen = f"measured {what} {value:.2f}{limit.unit()}"
            errors = (", errors: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.errors.items()))
                      if self.errors else "")
            out.append(f"{self.budget.label}: budget '{limit.text}' broken: {seen} "
                       f"({stats.received}/{stats.count} samples, min {_ms(stats.min)}, p50 {_ms(stats.p50)}, "
                       f"p95 {_ms(stats.p95)}, max {_ms(stats.max)}{errors})")
        return out

    def rows(self) -> list[dict]:
        """Table rows: one per series (page load, ttfb), marked bad when a limit on it broke."""
        rows = []
        names = ["main"] + (["ttfb"] if self.budget.kind == "http" else [])
        for name in names:
            limits = [l for l in self.budget.limits if l.series == name]
            stats = self.series(name)
            what = {"icmp": "icmp echo rtt", "tcp": "tcp connect", "http": "page load"}[self.budget.kind]
            what = "http ttfb" if name == "ttfb" else what
            bad = any(not l.holds(stats) for l in limits)
            rows.append({"cells": [self.budget.label, what, *stats.row(),
                                   ", ".join(l.text for l in limits) or "-",
                                   "FAIL" if bad else "ok"], "bad": bad})
        return rows


BUDGET_COLUMNS = ["path", "measure", *STATS_COLUMNS, "budget", "verdict"]


def _ms(v) -> str:
    return figure(v) + (" ms" if v is not None and not math.isinf(v) else "")


def render_table(columns: list[str], rows: list) -> str:
    cells = [[str(c) for c in (r["cells"] if isinstance(r, dict) else r)] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])


# ---------------------------------------------------------------- measuring

@dataclass
class TimedJob(NodeJob):
    """A node's agent job with latency samples and traceroutes (probe/timing.py)."""
    latency: list[dict] = field(default_factory=list)
    traceroute: list[dict] = field(default_factory=list)

    SPLIT = NodeJob.SPLIT + ("latency", "traceroute")

    def packets(self, kind: str, item) -> int:
        if kind == "latency":
            return item["count"]
        if kind == "traceroute":
            return item["max_hops"] * item["queries"]
        return 1

    def request(self, netns):
        item = super().request(netns)
        if self.latency:
            item["latency"] = self.latency
        if self.traceroute:
            item["traceroute"] = self.traceroute
        return item


async def measure(lab, budgets: list[Budget]) -> dict[Budget, Measured]:
    """Every budget's samples, all source nodes at once (one agent call)."""
    jobs: dict[str, TimedJob] = {}
    order: dict[str, list[Budget]] = {}
    for budget in budgets:
        job = jobs.setdefault(budget.src, TimedJob())
        job.latency.append(budget.spec(len(job.latency)))
        order.setdefault(budget.src, []).append(budget)
    answers = await lab.run(jobs)
    out = {}
    for src, mine in order.items():
        rows = {r["id"]: r for r in answers[src].raw.get("latency", [])}
        for i, budget in enumerate(mine):
            row = rows.get(i, {"samples": [None] * budget.samples, "errors": {"no answer": budget.samples}})
            out[budget] = only_pages(Measured(budget, row["samples"], row.get("ttfb", []),
                                              row.get("errors", {}), row.get("status", [])))
    return out


def only_pages(measured: Measured) -> Measured:
    """A page load that got an error page (a tunnel edge's 503, say) is lost, not fast."""
    samples, ttfb, errors = list(measured.samples), list(measured.ttfb), dict(measured.errors)
    for i, status in enumerate(measured.status):
        if samples[i] is not None and not (status is not None and 200 <= status < 400):
            samples[i] = None
            if i < len(ttfb):
                ttfb[i] = None
            why = f"HTTP {status}" if status is not None else "not an HTTP answer"
            errors[why] = errors.get(why, 0) + 1
    return Measured(measured.budget, samples, ttfb, errors, measured.status)


async def ping(lab, pairs: list[tuple[str, IPv4Address]], count: int, interval_s: float,
               timeout_s: float = 3.0) -> dict[tuple[str, IPv4Address], list[float | None]]:
    """ICMP echo round trips from each (node, address), all at once."""
    jobs: dict[str, TimedJob] = {}
    keys: dict[str, list] = {}
    for src, address in pairs:
        job = jobs.setdefault(src, TimedJob())
        job.latency.append({"id": len(job.latency), "kind": "icmp", "dst": str(address), "count": count,
                            "interval_s": interval_s, "timeout_s": timeout_s})
        keys.setdefault(src, []).append((src, address))
    answers = await lab.run(jobs)
    out = {}
    for src, mine in keys.items():
        rows = {r["id"]: r for r in answers[src].raw.get("latency", [])}
        for i, key in enumerate(mine):
            out[key] = rows.get(i, {}).get("samples", [None] * count)
    return out


# ---------------------------------------------------------------- the route a path takes

@dataclass(frozen=True)
class Hop:
    ttl: int
    node: str
    address: IPv4Address      # where its answers come from: its address on the way in
    segment: str
    rtt_ms: float             # what the impaired links add, there and back
    jitter_ms: float          # the most jitter can move that


def expected_route(topology, links: list[Link], src: str, dst: IPv4Address, max_hops: int = 16) -> list[Hop]:
    """The hops from src to dst by the topology's static routes (gateway, routes, on-link),
    each with the round trip the impaired links on the way add."""
    hops: list[Hop] = []
    here, delay, spread = src, 0.0, 0.0
    for ttl in range(1, max_hops + 1):
        node = topology.nodes[here]
        onlink = [s for s in node.segments if dst in topology.segments[s].subnet]
        if onlink:
            segment, hop_addr = onlink[0], dst
        else:
            hop_addr = node.next_hop(dst)
            if hop_addr is None:
                return hops
            segment = next(s for s in node.segments if hop_addr in topology.segments[s].subnet)
        nxt = topology.node_at(hop_addr)
        if nxt is None:
            return hops
        d, j = crossing_delay(links, here, segment, nxt.name)
        back, jb = crossing_delay(links, nxt.name, segment, here)
        delay, spread = delay + d + back, spread + j + jb
        arrived = onlink or dst in nxt.addresses.values()
        hops.append(Hop(ttl, nxt.name, dst if arrived else nxt.addresses[segment], segment, delay, spread))
        if arrived:
            return hops
        here = nxt.name
    return hops


# On top of the links' own tolerance, for a hop of a traceroute: answers to TTL probes take
# the kernel's slow path, a SYN-ACK is timed from Python, and a busy two-core CI machine
# added 3.2 ms to a LAN hop. Still far below any impaired link worth checking hop by hop;
# the accuracy of the links themselves is checked with 1% or 2 ms (tolerance_ms).
TRACE_SLACK_MS = 10.0


def tolerance_ms(expected_ms: float) -> float:
    """How far a measured round trip may lie from the configured one: 1% or 2 ms."""
    return max(ACCURACY_FLOOR_MS, expected_ms * ACCURACY_PCT / 100)


async def traceroute(lab, items: list[tuple[str, IPv4Address, str, int | None]], max_hops: int = 12,
                     queries: int = 3, timeout_s: float = 3.0) -> dict[tuple, dict]:
    """Traceroutes (src, dst, proto, port) from inside the nodes, all at once."""
    jobs: dict[str, TimedJob] = {}
    keys: dict[str, list] = {}
    for src, dst, proto, port in items:
        job = jobs.setdefault(src, TimedJob())
        spec = {"id": len(job.traceroute), "dst": str(dst), "proto": proto, "max_hops": max_hops,
                "queries": queries, "timeout_s": timeout_s}
        if port is not None:
            spec["port"] = port
        job.traceroute.append(spec)
        keys.setdefault(src, []).append((src, dst, proto, port))
    answers = await lab.run(jobs)
    out = {}
    for src, mine in keys.items():
        rows = {r["id"]: r for r in answers[src].raw.get("traceroute", [])}
        for i, key in enumerate(mine):
            out[key] = rows.get(i, {"reached": False, "hops": []})
    return out


def judge_traceroute(topology, links: list[Link], src: str, dst: IPv4Address, answer: dict,
                     dst_node_override: str | None = None) -> tuple[list[dict], list[str]]:
    """Table rows (hop, address, node, segment, latency, expected) and what is wrong."""
    expected = expected_route(topology, links, src, dst)
    rows, problems = [], []
    hops = answer.get("hops", [])
    if not answer.get("reached"):
        problems.append(f"the traceroute from {src} never reached {dst}")
    if answer.get("reached") and len(hops) != len(expected):
        problems.append(f"{dst} was reached in {len(hops)} hops; the topology says {len(expected)} "
                        f"({' -> '.join(h.node for h in expected)})")
    for i, hop in enumerate(hops):
        want = expected[i] if i < len(expected) else None
        replies = hop.get("replies", [])
        got = [r for r in replies if r and r.get("addr")]
        addrs = sorted({r["addr"] for r in got})
        times = [r["ms"] for r in got if r.get("ms") is not None]
        shown = "  ".join("*" if not r or r.get("ms") is None else f"{r['ms']:.1f} ms" for r in replies)
        holder = [topology.node_at(a) for a in addrs]
        seg = [topology.segment_of(a) for a in addrs]
        bad = False
        if want is not None and addrs and addrs != [str(want.address)]:
            bad = True
            problems.append(f"hop {hop['ttl']}: answered by {', '.join(addrs)}; the topology says "
                            f"{want.node} ({want.address})")
        if want is not None and times:
            median = percentile(times, 50)
            slack = tolerance_ms(want.rtt_ms) + want.jitter_ms + TRACE_SLACK_MS
            if abs(median - want.rtt_ms) > slack:
                bad = True
                problems.append(f"hop {hop['ttl']} ({want.node}): median {median:.1f} ms; the links on the "
                                f"way add {want.rtt_ms:.1f} ms (±{slack:.1f} ms)")
        rows.append({"cells": [hop["ttl"], ", ".join(addrs) or "*",
                               ", ".join(h.name if h else "?" for h in holder) or "-",
                               ", ".join(s.name if s else "?" for s in seg) or "-",
                               shown or "* * *", f"{want.rtt_ms:.1f} ms" if want else "-"], "bad": bad})
    return rows, problems


TRACE_COLUMNS = ["hop", "address", "node", "segment", "latency", "links add"]


# ---------------------------------------------------------------- checking the emulation

@dataclass(frozen=True)
class LinkCheck:
    """A ping across one impaired link: who pings whom, and the round trip it must show."""
    link: str
    src: str
    dst: IPv4Address
    dst_node: str
    rtt_ms: float
    jitter_ms: float

    @property
    def interval_s(self) -> float:
        """Far enough apart that jitter never has to hold a packet back to keep the order."""
        return max(0.01, (2 * self.jitter_ms + 1) / 1000)

    def judge(self, samples: list[float | None]) -> tuple[Stats, str | None]:
        stats = Stats.of(samples)
        allowed = tolerance_ms(self.rtt_ms)
        if not stats.received:
            return stats, f"link {self.link}: no echo came back from {self.dst_node} ({self.dst}) to {self.src}"
        if abs(stats.p50 - self.rtt_ms) > allowed:
            return stats, (f"link {self.link}: {self.src} -> {self.dst_node} ({self.dst}) round trip p50 "
                           f"{_ms(stats.p50)}, configured {self.rtt_ms:.2f} ms (allowed ±{allowed:.2f} ms: "
                           f"{ACCURACY_PCT:g}% or {ACCURACY_FLOOR_MS:g} ms); min {_ms(stats.min)}, "
                           f"max {_ms(stats.max)}, {stats.loss_pct:.1f}% lost")
        return stats, None


def link_check(topology, links: list[Link], link: Link, firewalled: set[str]) -> LinkCheck | None:
    """A pair of nodes on the link's segment whose echo crosses the link both ways; answered,
    if possible, by a node without a firewall (which might drop the echo)."""
    attached = [n for n, node in topology.nodes.items() if link.segment in node.addresses]
    pairs = [(a, b) for a in attached for b in attached if a != b
             and (link.node is None or link.node in (a, b))]
    if not pairs:
        return None
    pairs.sort(key=lambda ab: (ab[1] in firewalled, ab[0] in firewalled))
    a, b = pairs[0]
    there, j1 = crossing_delay(links, a, link.segment, b)
    back, j2 = crossing_delay(links, b, link.segment, a)
    return LinkCheck(link.name, a, topology.nodes[b].addresses[link.segment], b, there + back, j1 + j2)
