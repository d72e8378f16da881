"""Latency budgets a policy declares: per path, the limits its measured figures must hold.

Budgets live in policy.yaml, per path::

    budgets:
      personal/laptop -> servers/web tcp/443: [p95 < 5 ms, loss < 2%]
      laptop -> web icmp: p50 < 1 ms
      visitor -> edge http/80/index.html:                  # a page load (http/PORT[/PATH])
        limits: [p95 < 1500 ms, ttfb p95 < 1500 ms]
        samples: 20                                        # default 20
        interval: 20 ms                                    # between launches (default 10 ms)
        timeout: 5 s                                       # per sample (default 3 s)

A path is ``SRC -> DST MEASURE``: nodes (optionally ``zone/node``; the router as
``router@segment``) or an address; MEASURE is ``icmp`` (echo round trip), ``tcp/N``
(connect time) or ``http/N[/PATH]`` (full page load; ``ttfb ...`` limits judge the time
to the first byte; a page fetched through a tunnel's edge on its public port is asked for
with the tunnel's `host` as Host, as its visitors do). A limit is ``METRIC < VALUE``: min,
p50, p95, p99, max, mean, jitter in ms or s, or loss in %. A budget without a loss limit
gets ``loss < 5%``, marked ``(default)`` where budgets are shown.

Declared data only: labwarden.checks.latency measures budgets and judges the figures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address

from labwarden.errors import ConfigError
from labwarden.declared.fields import TIMES, check_keys, quantity

METRICS = ("min", "p50", "p95", "p99", "max", "mean", "jitter", "loss")
BUDGET_KEYS = ("limits", "samples", "interval", "timeout")
DEFAULT_SAMPLES, DEFAULT_INTERVAL_S, DEFAULT_TIMEOUT_S = 20, 0.01, 3.0
DEFAULT_LOSS_PCT = 5.0


@dataclass(frozen=True)
class Limit:
    metric: str            # one of METRICS
    bound: float           # ms, or % for loss
    strict: bool = True    # < (else <=)
    series: str = "main"   # main | ttfb (http only)
    text: str = ""

    def holds(self, stats) -> bool:
        """Whether the figures (a checks.latency.Stats) keep this limit."""
        value = stats.get(self.metric)
        if value is None:
            return False
        return value < self.bound if self.strict else value <= self.bound

    def unit(self) -> str:
        return "%" if self.metric == "loss" else " ms"


@dataclass(frozen=True)
class Budget:
    label: str             # the path as the policy names it
    src: str
    dst: IPv4Address
    dst_node: str | None
    kind: str              # icmp | tcp | http
    port: int | None
    path: str
    limits: tuple[Limit, ...]
    samples: int = DEFAULT_SAMPLES
    interval_s: float = DEFAULT_INTERVAL_S
    timeout_s: float = DEFAULT_TIMEOUT_S
    host: str | None = None   # http: the Host sent (None: the destination address)

    @property
    def measure(self) -> str:
        if self.kind == "icmp":
            return "icmp"
        return f"{self.kind}/{self.port}" + (self.path if self.kind == "http" and self.path != "/" else "")

    def spec(self, spec_id: int) -> dict:
        item = {"id": spec_id, "kind": self.kind, "dst": str(self.dst), "count": self.samples,
                "interval_s": self.interval_s, "timeout_s": self.timeout_s}
        if self.port is not None:
            item["port"] = self.port
        if self.kind == "http":  # page loads one at a time: each what a lone visitor sees
            item["path"], item["serial"] = self.path, True
            if self.host:
                item["host"] = self.host
        return item


_LIMIT = re.compile(r"\s*(?:(ttfb)\s+)?([a-z0-9]+)\s*(<=|<)\s*([0-9]*\.?[0-9]+)\s*(ms|s|%)?\s*$")
_MEASURE = re.compile(r"^(icmp|tcp/(\d+)|http/(\d+)(/\S*)?)$")


def parse_limit(f, where, raw, kind: str) -> Limit:
    m = _LIMIT.match(str(raw).lower()) if isinstance(raw, str) else None
    forms = "METRIC < VALUE, e.g. 'p95 < 5 ms' or 'loss < 2%' (metrics: " + ", ".join(METRICS) + ")"
    if not m:
        raise ConfigError(f, where, f"{raw!r} is not a limit: use {forms}")
    ttfb, metric, op, value, unit = m.groups()
    if metric not in METRICS:
        raise ConfigError(f, where, f"unknown metric {metric!r} in {raw!r}; metrics: {', '.join(METRICS)}")
    if ttfb and kind != "http":
        raise ConfigError(f, where, f"{raw!r}: ttfb limits are for http/N paths only")
    if metric == "loss":
        if unit not in (None, "%"):
            raise ConfigError(f, where, f"{raw!r}: loss is a percentage, e.g. 'loss < 2%'")
        bound = float(value)
    else:
        if unit == "%":
            raise ConfigError(f, where, f"{raw!r}: {metric} is a time, e.g. '{metric} < 5 ms'")
        bound = float(value) * (1000.0 if unit == "s" else 1.0)
    return Limit(metric, bound, op == "<", "ttfb" if ttfb else "main", str(raw).strip())


def _endpoint(f, where, text: str, policy, side: str):
    """(node, address) of one end of a path."""
    topology = policy.topology
    name = text.split("/", 1)[1] if "/" in text else text
    try:
        address = IPv4Address(text)
    except ValueError:
        address = None
    if address is not None:
        holder = topology.node_at(address)
        if side == "src":
            raise ConfigError(f, where, f"the source {text} must be a node, not an address")
        return (holder.name if holder else None), address
    node, _, segment = name.partition("@")
    if node not in topology.nodes:
        raise ConfigError(f, where, f"unknown node {node!r} in the path; nodes: {', '.join(topology.nodes)}")
    if "/" in text and text.split("/", 1)[0] != policy.zone_of(node) and node != policy.router:
        raise ConfigError(f, where, f"{node} is in zone {policy.zone_of(node)}, not {text.split('/', 1)[0]}")
    if segment:
        if segment not in topology.nodes[node].addresses:
            raise ConfigError(f, where, f"{node} is not attached to segment {segment} "
                              f"(attached: {', '.join(topology.nodes[node].segments)})")
        return node, topology.nodes[node].addresses[segment]
    return node, None


def parse_budget(f, where, path: str, raw, policy) -> Budget:
    text = " ".join(str(path).split())
    src_text, arrow, rest = text.partition("->")
    parts = rest.split()
    if not arrow or len(parts) != 2:
        raise ConfigError(f, where, f"{path!r} is not a path: use 'SRC -> DST MEASURE', e.g. "
                          "'personal/laptop -> servers/web tcp/443' (MEASURE: icmp, tcp/N, http/N[/PATH])")
    m = _MEASURE.match(parts[1])
    if not m:
        raise ConfigError(f, where, f"{parts[1]!r} is not a measure: use icmp, tcp/N or http/N[/PATH]")
    kind = parts[1].split("/")[0]
    port = int(m.group(2) or m.group(3)) if kind != "icmp" else None
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(f, where, f"port {port} is not in 1..65535")
    src, _ = _endpoint(f, where, src_text.strip(), policy, "src")
    dst_node, address = _endpoint(f, where, parts[0], policy, "dst")
    if address is None:
        address = policy.topology.nearest_address(src, dst_node)
    if isinstance(raw, (str, list)):
        raw = {"limits": raw}
    if not isinstance(raw, dict):
        raise ConfigError(f, where, "must be a limit, a list of limits, or a mapping with keys among: "
                          + ", ".join(BUDGET_KEYS))
    check_keys(f, where, raw, BUDGET_KEYS)
    limits = raw.get("limits")
    limits = [limits] if isinstance(limits, str) else limits
    if not limits or not isinstance(limits, list):
        raise ConfigError(f, f"{where}.limits", "missing: at least one limit such as 'p95 < 5 ms'")
    parsed = tuple(parse_limit(f, f"{where}.limits[{i}]", item, kind) for i, item in enumerate(limits))
    if not any(limit.metric == "loss" for limit in parsed):
        parsed += (Limit("loss", DEFAULT_LOSS_PCT, text=f"loss < {DEFAULT_LOSS_PCT:g}% (default)"),)
    samples = raw.get("samples", DEFAULT_SAMPLES)
    if isinstance(samples, bool) or not isinstance(samples, int) or not 1 <= samples <= 1000:
        raise ConfigError(f, f"{where}.samples", f"{samples!r} is not a number of samples (1..1000)")
    interval = quantity(f, f"{where}.interval", raw.get("interval", DEFAULT_INTERVAL_S * 1000), TIMES, "ms")
    timeout = quantity(f, f"{where}.timeout", raw.get("timeout", DEFAULT_TIMEOUT_S * 1000), TIMES, "ms")
    path_part = (m.group(4) or "/") if kind == "http" else "/"
    label = f"{policy.label(src)} -> {_dst_label(policy, dst_node, address)} {parts[1]}"
    host = tunnel_host(policy, dst_node, port) if kind == "http" else None
    return Budget(label, src, address, dst_node, kind, port, path_part, parsed, samples,
                  interval / 1000, timeout / 1000, host)


def tunnel_host(policy, dst_node: str | None, port: int) -> str | None:
    """The Host a page load must send: the tunnel's name when the path asks a tunnel's
    edge on its public port (an edge that routes by name answers 503 to anything else)."""
    for tunnel in policy.tunnels:
        if tunnel.edge == dst_node and tunnel.public.port == port:
            return tunnel.host
    return None


def _dst_label(policy, node: str | None, address: IPv4Address) -> str:
    if node is None:
        return str(address)
    if node == policy.router:
        return f"{node}@{policy.topology.segment_of(address).name}"
    return policy.label(node)


def load_budgets(f, raw, policy) -> list[Budget]:
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise ConfigError(f, "budgets", "must map paths ('SRC -> DST MEASURE') to limits")
    return [parse_budget(f, f"budgets[{path}]", str(path), value, policy) for path, value in raw.items()]
