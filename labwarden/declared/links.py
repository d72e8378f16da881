"""Impaired links, as compose.yaml declares them: named profiles, links, what a path crosses.

A *link* is a segment (every packet crossing it is impaired once) or one node's
attachment to a segment (``NODE@SEGMENT``: both directions between that node and the
segment). compose.yaml declares them, beside what they describe::

    networks:
      sky:
        x-labwarden: {impair: geo-satellite}          # the segment
    services:
      laptop:
        x-labwarden:
          impair: {cabin: {profile: airline-wifi, loss: 0%}}   # the laptop's attachment

A profile is a name from PROFILES, or a mapping of ``delay`` (one way), ``jitter``
(uniform, +-), ``loss`` (per direction), ``rate``, ``limit`` (packets queued behind the
rate), ``reorder``, optionally on top of a named ``profile``.

Declared data only: labwarden.realise.impair applies links to a running lab.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from labwarden.errors import ConfigError
from labwarden.declared.fields import PERCENT, RATES, TIMES, check_keys, quantity

PROFILE_KEYS = ("profile", "delay", "jitter", "loss", "rate", "limit", "reorder")
MAX_LIMIT = 1_000_000  # packets queued behind a rate (netem takes a 32-bit count)


@dataclass(frozen=True)
class Profile:
    """One direction of a link: delay and jitter in ms, loss in %, rate in kbit/s (0: none)."""
    name: str
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    rate_kbit: float = 0.0
    limit: int = 1000
    reorder: bool = False

    @property
    def rtt_ms(self) -> float:
        return 2 * self.delay_ms

    def describe(self) -> str:
        parts = [f"{self.delay_ms:g} ms each way"]
        if self.jitter_ms:
            parts.append(f"±{self.jitter_ms:g} ms jitter")
        if self.loss_pct:
            parts.append(f"{self.loss_pct:g}% loss")
        if self.rate_kbit:
            parts.append(f"{self.rate_kbit:g} kbit/s")
        return f"{self.name} ({', '.join(parts)})"

    def relay(self) -> dict:
        return {"delay_ms": self.delay_ms, "jitter_ms": self.jitter_ms, "loss_pct": self.loss_pct,
                "rate_kbit": self.rate_kbit, "limit": self.limit, "reorder": self.reorder}

    def netem_args(self) -> list[str]:
        args = ["delay", f"{self.delay_ms:g}ms"]
        if self.jitter_ms:
            args.append(f"{self.jitter_ms:g}ms")
        if self.loss_pct:
            args += ["loss", f"{self.loss_pct:g}%"]
        if self.rate_kbit:
            args += ["rate", f"{self.rate_kbit:g}kbit"]
        return args + ["limit", str(self.limit)]


# RTTs as the issue names them; one-way figures are half. Loss is per direction, so a
# round trip over geo-satellite loses about 1%.
PROFILES = {
    "lan": Profile("lan", delay_ms=0.1),
    "fiber-isp": Profile("fiber-isp", delay_ms=5, jitter_ms=0.5),
    "leo-satellite": Profile("leo-satellite", delay_ms=20, jitter_ms=7, loss_pct=0.2),
    "geo-satellite": Profile("geo-satellite", delay_ms=300, jitter_ms=10, loss_pct=0.5),
    "airline-wifi": Profile("airline-wifi", delay_ms=300, jitter_ms=10, loss_pct=0.5,
                            rate_kbit=1500, limit=100),
}


@dataclass(frozen=True)
class Link:
    name: str                  # "sky" (a segment) or "sat@sky" (an attachment)
    segment: str
    node: str | None
    profile: Profile

    def covers(self, sender: str, segment: str, receiver: str) -> bool:
        """Whether a packet from sender to receiver over segment crosses this link."""
        return segment == self.segment and (self.node is None or self.node in (sender, receiver))


def crossing_delay(links: list[Link], sender: str, segment: str, receiver: str) -> tuple[float, float]:
    """(delay, jitter) in ms, one way, of a packet crossing segment from sender to receiver."""
    hit = [l.profile for l in links if l.covers(sender, segment, receiver)]
    return sum(p.delay_ms for p in hit), sum(p.jitter_ms for p in hit)


def parse_profile(f, where, raw) -> Profile:
    """A profile name, or a mapping of settings (optionally on top of a named profile)."""
    names = ", ".join(PROFILES)
    if isinstance(raw, str):
        if raw not in PROFILES:
            raise ConfigError(f, where, f"unknown profile {raw!r}; known profiles: {names}")
        return PROFILES[raw]
    if not isinstance(raw, dict):
        raise ConfigError(f, where, f"must be a profile name ({names}) or a mapping with keys among: "
                          f"{', '.join(PROFILE_KEYS)}")
    check_keys(f, where, raw, PROFILE_KEYS)
    base = parse_profile(f, f"{where}.profile", raw["profile"]) if "profile" in raw else Profile("custom")
    changes = {}
    if "delay" in raw:
        changes["delay_ms"] = quantity(f, f"{where}.delay", raw["delay"], TIMES, "ms")
    if "jitter" in raw:
        changes["jitter_ms"] = quantity(f, f"{where}.jitter", raw["jitter"], TIMES, "ms")
    if "loss" in raw:
        changes["loss_pct"] = quantity(f, f"{where}.loss", raw["loss"], PERCENT, "%")
        if changes["loss_pct"] > 100:
            raise ConfigError(f, f"{where}.loss", f"{raw['loss']!r} is more than 100%")
    if "rate" in raw:
        changes["rate_kbit"] = quantity(f, f"{where}.rate", raw["rate"], RATES, "kbit")
    if "limit" in raw:
        limit = raw["limit"]
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise ConfigError(f, f"{where}.limit", f"{limit!r} is not a number of packets in 1..{MAX_LIMIT}")
        changes["limit"] = limit
    if "reorder" in raw:
        if not isinstance(raw["reorder"], bool):
            raise ConfigError(f, f"{where}.reorder", f"{raw['reorder']!r} must be true or false")
        changes["reorder"] = raw["reorder"]
    if changes and "profile" in raw:
        changes["name"] = f"{base.name}*"
    profile = replace(base, **changes)
    if profile.jitter_ms > profile.delay_ms:
        raise ConfigError(f, f"{where}.jitter", f"jitter {profile.jitter_ms:g} ms is more than the delay "
                          f"{profile.delay_ms:g} ms: a packet cannot leave before it came")
    return profile


def parse_links(f, doc: dict, segments: dict, nodes: dict) -> list[Link]:
    """The impaired links of a parsed compose.yaml (``x-labwarden.impair`` on networks and
    services), given the segments and nodes already read from it."""
    links = []
    for name, spec in (doc.get("networks") or {}).items():
        x = spec.get("x-labwarden") if isinstance(spec, dict) else None
        if x is None:
            continue
        where = f"networks.{name}.x-labwarden"
        if not isinstance(x, dict) or set(x) - {"impair", "ipv6"}:
            raise ConfigError(f, where, "must be a mapping with the keys: impair, ipv6")
        if str(name) in segments and x.get("impair") is not None:
            links.append(Link(str(name), str(name), None, parse_profile(f, f"{where}.impair", x["impair"])))
    for name, spec in (doc.get("services") or {}).items():
        x = spec.get("x-labwarden") if isinstance(spec, dict) else None
        if not isinstance(x, dict) or x.get("impair") is None:
            continue
        where = f"services.{name}.x-labwarden.impair"
        node = nodes.get(str(name))
        if node is None:
            raise ConfigError(f, where, f"{name} shares another node's network: impair that node's links")
        if not isinstance(x["impair"], dict):
            raise ConfigError(f, where, "must map the node's segments to profiles, e.g. {sky: geo-satellite}")
        for seg, raw in x["impair"].items():
            if seg not in node.addresses:
                raise ConfigError(f, f"{where}.{seg}", f"{seg} is not a segment {name} is attached to "
                                  f"(attached: {', '.join(node.segments)})")
            links.append(Link(f"{name}@{seg}", str(seg), str(name), parse_profile(f, f"{where}.{seg}", raw)))
    return links
