"""Latency distributions as inline SVG: per path a histogram, every sample a tick, the p50
and p95 marked, the budget a red line. The axis starts at zero unless the samples sit
far from it (then at a round value below them and the budget).

Plain data in (a ``latency`` section's data: ``{"unit": "ms", "budget": 1000,
"series": [{"label": ..., "values": [...]}]}``), SVG text out, drawn at its own size in
a box that scrolls on narrow screens, so the text stays legible. A few far outliers (a
retransmission's 3 s among 0.6 s loads) would squeeze the rest into one bin: the axis
then ends where most samples are, and the outliers are counted at its end.
"""

from __future__ import annotations

import math
from html import escape

WIDTH, LABEL_W, RIGHT = 680, 168, 64
ROW_H, HIST_H, STRIP_H = 78, 36, 14
BINS = 40
CSS = """
.plot-wrap{overflow-x:auto;max-width:100%}
svg.plot{font:12px system-ui,sans-serif;background:#fafbfc;border:1px solid #e1e4e8;display:block;
 width:100%;min-width:680px;max-width:940px;height:auto}
svg.plot .grid{stroke:#e3e7eb} svg.plot .axis{fill:#4d5761} svg.plot .label{font-weight:600;font-size:13px}
svg.plot .stats{fill:#4d5761;font-size:12px}
svg.plot rect.bin{fill:#74a9e0} svg.plot rect.bin.over{fill:#e8590c}
svg.plot .tick{stroke:#1c7ed6;stroke-width:1.5;stroke-opacity:.55} svg.plot .tick.over{stroke:#d01f1f;stroke-opacity:.8}
svg.plot line.p50{stroke:#1d2329;stroke-width:2} svg.plot line.p95{stroke:#1d2329;stroke-width:1.5;stroke-dasharray:3 2}
svg.plot text.pct{font-size:11px;fill:#1d2329}
svg.plot line.budget{stroke:#d01f1f;stroke-width:1.5;stroke-dasharray:5 3} svg.plot text.budget{fill:#b01515;font-weight:600}
svg.plot text.beyond{fill:#b01515;font-size:11px}
"""


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks."""
    ordered = sorted(values)
    at = (len(ordered) - 1) * q / 100
    low = math.floor(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def nice_step(span: float, ticks: int = 6) -> float:
    """A round tick step (1, 2, 2.5 or 5 times a power of ten) giving about `ticks` ticks."""
    raw = max(span, 1e-9) / ticks
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)


def axis(values: list[float], budget: float | None) -> tuple[float, float, float]:
    """The axis (start, end, tick step): past every sample and the budget, unless a few far
    outliers would squeeze the rest (then past the 95th percentile and the budget); from
    zero, unless all of them sit far from it (a satellite's 600 ms: then from a round value
    below them, so that their spread is seen)."""
    marks = values + ([budget] if budget is not None else [])
    if not marks:
        return 0.0, 1.0, 0.2
    high, low = max(marks), min(marks)
    if len(values) >= 10:
        bulk = max(percentile(values, 95) * 1.6, (budget or 0) * 1.15)
        if high > 2 * bulk:
            high = bulk
    if low > 0.35 * high and high > low:
        pad = 0.08 * (high - low)
        step = nice_step(high - low + 2 * pad)
        return (math.floor((low - pad) / step) * step, math.ceil((high + pad) / step) * step, step)
    step = nice_step(high)
    return 0.0, max(math.ceil(high * 1.02 / step), 1) * step, step


def _fmt(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}" if value else "0"


def latency_svg(data: dict) -> str:
    """The plot of a ``latency`` section (an HTML fragment)."""
    series = [s for s in data.get("series", []) if isinstance(s, dict)]
    budget = data.get("budget")
    unit = str(data.get("unit", "ms"))
    every = [float(v) for s in series for v in s.get("values", []) if v is not None]
    start, top, step = axis(every, budget)
    plot_w = WIDTH - LABEL_W - RIGHT
    x = lambda v: LABEL_W + plot_w * (min(max(v, start), top) - start) / (top - start)  # noqa: E731
    height = 30 + ROW_H * max(len(series), 1) + 26
    parts = []
    for i in range(round((top - start) / step) + 1):
        tick = start + i * step
        parts.append(f'<line class="grid" x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="24" y2="{height - 24}"/>'
                     f'<text class="axis" x="{x(tick):.1f}" y="{height - 8}" text-anchor="middle">{_fmt(tick)}</text>')
    parts.append(f'<text class="axis" x="{WIDTH - 8}" y="{height - 8}" text-anchor="end">{escape(unit)}</text>')
    for i, s in enumerate(series):
        parts += _row(s, 30 + i * ROW_H, x, (start, top), budget, unit)
    if not series:
        parts.append(f'<text class="stats" x="{LABEL_W}" y="60">no samples</text>')
    if budget is not None:
        bx = x(budget)
        parts.append(f'<line class="budget" x1="{bx:.1f}" x2="{bx:.1f}" y1="18" y2="{height - 24}"/>'
                     f'<text class="budget" x="{bx:.1f}" y="14" text-anchor="middle">'
                     f'budget {_fmt(budget)} {escape(unit)}</text>')
    return (f'<div class=plot-wrap><svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
            f'height="{height}" viewBox="0 0 {WIDTH} {height}" role="img">{"".join(parts)}</svg></div>')


def _row(s: dict, y: float, x, span: tuple[float, float], budget, unit: str) -> list[str]:
    values = [float(v) for v in s.get("values", []) if v is not None]
    label = str(s.get("label", ""))
    shown = label if len(label) <= 22 else label[:21] + "…"
    parts = [f'<g class="series" data-label="{escape(label)}" data-samples="{len(values)}">'
             f'<title>{escape(label)}</title><text class="label" x="8" y="{y + 20}">{escape(shown)}</text>']
    if not values:
        parts.append(f'<text class="stats" x="8" y="{y + 38}">no samples</text></g>')
        return parts
    p50, p95 = percentile(values, 50), percentile(values, 95)
    parts.append(f'<text class="stats" x="8" y="{y + 36}">{len(values)} samples, {escape(unit)}</text>'
                 f'<text class="stats" x="8" y="{y + 52}">p50 {_fmt(p50)} · p95 {_fmt(p95)}</text>'
                 f'<text class="stats" x="8" y="{y + 68}">min {_fmt(min(values))} · max {_fmt(max(values))}</text>')
    start, top = span
    inside = [v for v in values if v <= top]
    counts = [0] * BINS
    for v in inside:
        counts[min(int((v - start) / (top - start) * BINS), BINS - 1)] += 1
    most = max(counts)
    bin_w = (x(top) - x(0)) / BINS
    for b, n in enumerate(counts):
        if n:
            h = max(HIST_H * n / most, 2)
            over = budget is not None and start + (top - start) * b / BINS >= budget
            parts.append(f'<rect class="bin{" over" if over else ""}" x="{x(0) + b * bin_w + 0.5:.1f}" '
                         f'y="{y + 4 + HIST_H - h:.1f}" width="{max(bin_w - 1, 1):.1f}" height="{h:.1f}">'
                         f'<title>{n} sample{"s" if n != 1 else ""}</title></rect>')
    strip = y + 8 + HIST_H
    for v in inside:
        over = budget is not None and v > budget
        parts.append(f'<line class="tick{" over" if over else ""}" x1="{x(v):.1f}" x2="{x(v):.1f}" '
                     f'y1="{strip}" y2="{strip + STRIP_H}"/>')
    for name, value in (("p50", p50), ("p95", p95)):
        parts.append(f'<line class="{name}" x1="{x(value):.1f}" x2="{x(value):.1f}" y1="{y + 2}" '
                     f'y2="{strip + STRIP_H + 2}"/>')
    parts.append(f'<text class="pct" x="{x(p50) - 3:.1f}" y="{strip + STRIP_H + 14}" text-anchor="end">p50</text>'
                 f'<text class="pct" x="{x(p95) + 3:.1f}" y="{strip + STRIP_H + 14}">p95</text>')
    beyond = [v for v in values if v > top]
    if beyond:
        parts.append(f'<text class="beyond" x="{x(top) + 5:.1f}" y="{strip - 6}">+{len(beyond)} more</text>'
                     f'<text class="beyond" x="{x(top) + 5:.1f}" y="{strip + 8}">to {_fmt(max(beyond))}</text>')
    parts.append("</g>")
    return parts
