"""A report's free-form sections: a registry of renderers, one per section kind.

A section is drawn by the renderer registered for its kind
(`@section_renderer("latency")` adds one: data -> HTML fragment); built in are
``table``, ``text`` and ``latency`` (`labwarden.report.plots`); a kind with no renderer is shown as its
JSON, so nothing a suite adds is lost.
"""

from __future__ import annotations

import json
from html import escape
from typing import Callable

from labwarden.report.plots import latency_svg

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
    return f"<div class=scroll><table class=list><tr>{head}</tr>{''.join(rows)}</table></div>"


section_renderer("latency")(latency_svg)  # {"unit": "ms", "budget": 1500, "series": [{"label", "values"}]}


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
