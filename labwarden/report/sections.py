"""A report's free-form sections: a registry of renderers, one per section kind.

A section is drawn by the renderer registered for its kind
(`@section_renderer("latency")` adds one: data -> HTML fragment); built in are
``table``, ``text`` and ``latency``; a kind with no renderer is shown as its
JSON, so nothing a suite adds is lost.
"""

from __future__ import annotations

import json
from html import escape
from typing import Callable

SECTION_RENDERERS: dict[str, Callable[[dict], str]] = {}


def section_renderer(kind: str):
    """Register `func(data) -> HTML fragment` as the way sections of this kind are drawn."""
    def register(func):
        SECTION_RENDERERS[kind] = func
        return func
    return register


@section_renderer("text")
def _text(data) -> str:
    return f"<pre>{escape(str(data))}</pre>"


@section_renderer("table")
def table(data) -> str:
    """{"columns": [...], "rows": [[...], ...]}; a row of a failing item may be {"cells": [...], "bad": true}."""
    head = "".join(f"<th>{escape(str(c))}</th>" for c in data.get("columns", []))
    rows = []
    for row in data.get("rows", []):
        cells, bad = (row["cells"], row.get("bad")) if isinstance(row, dict) else (row, False)
        tds = "".join(f"<td>{escape('' if c is None else str(c))}</td>" for c in cells)
        rows.append(f"<tr{' class=bad' if bad else ''}>{tds}</tr>")
    return f"<table class=list><tr>{head}</tr>{''.join(rows)}</table>"


@section_renderer("latency")
def _latency(data) -> str:
    """{"unit": "ms", "budget": 1500, "series": [{"label": "laptop -> edge", "values": [...]}]}:
    one row per path, every sample a tick, the budget a red line."""
    series = data.get("series", [])
    budget = data.get("budget")
    unit = escape(str(data.get("unit", "ms")))
    top = max([v for s in series for v in s.get("values", [])] + [budget or 0, 1]) * 1.1
    width, label_w, row_h = 720, 200, 26
    x = lambda v: label_w + (width - label_w - 10) * v / top  # noqa: E731
    parts = []
    for i, s in enumerate(series):
        y = 10 + i * row_h
        parts.append(f'<text x="4" y="{y + 15}">{escape(str(s.get("label", "")))}</text>')
        for v in s.get("values", []):
            over = budget is not None and v > budget
            parts.append(f'<line x1="{x(v):.1f}" x2="{x(v):.1f}" y1="{y + 3}" y2="{y + 19}" '
                         f'class="{"over" if over else "tick"}"><title>{v} {unit}</title></line>')
    height = 30 + len(series) * row_h
    if budget is not None:
        parts.append(f'<line x1="{x(budget):.1f}" x2="{x(budget):.1f}" y1="4" y2="{height - 16}" class="budget"/>'
                     f'<text x="{x(budget) + 3:.1f}" y="{height - 4}" class="budget">budget {budget} {unit}</text>')
    parts.append(f'<text x="{label_w}" y="{height - 4}">0</text>'
                 f'<text x="{width - 60}" y="{height - 4}">{top:.0f} {unit}</text>')
    return f'<svg class=plot width="{width}" height="{height}">{"".join(parts)}</svg>'


def section_html(section: dict) -> str:
    renderer = SECTION_RENDERERS.get(section.get("kind"))
    try:
        body = renderer(section.get("data")) if renderer else None
    except Exception as err:  # a broken renderer must not cost the rest of the report
        body = f"<p class=bad>renderer {escape(section.get('kind', ''))} failed: {escape(repr(err))}</p>"
    if body is None:
        body = f"<pre>{escape(json.dumps(section.get('data'), indent=1, default=str))}</pre>"
    kind = escape(str(section.get("kind")))
    return (f"<section class=extra data-kind=\"{kind}\"><h2>{escape(str(section.get('title', '')))}</h2>"
            f"{body}</section>")
