"""Run reports: what a run probed, as a JSON document and as one self-contained HTML page.

A `Report` is plain data (a header, probe records, matrices, free-form
sections) and knows nothing of pytest or Docker; the plugin keeps one per
session (the `labwarden_report` fixture) and writes it at the end of the run.
Suites add what they observe::

    labwarden_report.add_cells(cells, policy, group="nat")           # judged probes (matrix.Cell)
    labwarden_report.add_section("table", "traceroute laptop -> edge",
                                 {"columns": ["hop", "address", "rtt ms"], "rows": [...]})

The HTML page draws every matrix as a colour grid (source node rows x
destination columns, expected vs observed), then the mismatches, then the
sections, then every probe. A section is drawn by the renderer registered for
its kind (`@section_renderer("latency")` adds one: data -> HTML fragment);
built in are ``table``, ``text`` and ``latency``; a kind with no renderer is
shown as its JSON, so nothing a suite adds is lost. The same page can be drawn
again from the JSON: ``python3 -m labwarden.report run.json -o run.html``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html import escape
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable

from labwarden.declared.fields import shown

FORMAT = 1
REACHED = ("open", "closed")  # the probe got to a host (a service answered, or the host refused)

# how a probe, and a grid cell, compares with the policy
PASS, BLOCKED, LEAK, WRONG = "pass", "blocked", "leak", "wrong"
LEGEND = {
    PASS: "passes, as the policy allows",
    BLOCKED: "blocked, as the policy requires",
    WRONG: "mismatch: blocked or answered differently than the policy says",
    LEAK: "mismatch: gets through although the policy forbids it",
}


# ---------------------------------------------------------------- the data

def status(probe: dict) -> str:
    """pass | blocked | leak | wrong, for one probe record."""
    if probe["ok"]:
        return PASS if probe.get("expected_reach") else BLOCKED
    return LEAK if not probe.get("expected_reach") and probe["observed"] in REACHED else WRONG


def destination_label(flow, policy) -> str:
    """The flow's destination as grid columns name it: 'servers/web', 'router@wan', or the address."""
    if flow.dst_node == policy.router:
        segment = policy.topology.segment_of(flow.dst)
        return f"{policy.router}@{segment.name}" if segment else policy.router
    return policy.label(flow.dst_node) if flow.dst_node else str(flow.dst)


def probe_record(flow, expected, observed, policy, group: str) -> dict:
    """One probe as the JSON document holds it."""
    by_node = policy.topology.node_at(observed.by) if observed.by is not None else None
    record = {
        "flow": flow.label(policy), "group": group,
        "src": policy.label(flow.src), "dst": destination_label(flow, policy),
        "dst_address": str(flow.dst), "service": str(flow.service),
        "expected": sorted(expected.verdicts), "reason": expected.reason,
        "expected_reach": policy.label(expected.reached) if expected.reached else None,
        "observed": observed.verdict, "ok": observed.verdict in expected.verdicts,
        "by": str(observed.by) if observed.by is not None else None,
        "by_node": policy.label(by_node.name) if by_node else None,
        "detail": observed.detail, "rtt_ms": observed.rtt_ms, "ttl": observed.ttl,
    }
    record["status"] = status(record)
    return record


@dataclass
class Report:
    """Everything a run observed; `to_dict()` is the JSON document."""
    header: dict = field(default_factory=dict)
    probes: list[dict] = field(default_factory=list)
    matrices: list[dict] = field(default_factory=list)
    sections: list[dict] = field(default_factory=list)

    def add_probe(self, flow, expected, observed, policy, group: str = "probes") -> dict:
        record = probe_record(flow, expected, observed, policy, group)
        self.probes.append(record)
        return record

    def add_cells(self, cells, policy, group: str = "probes") -> None:
        """Judged probes (`labwarden.checks.matrix.Cell`s), e.g. a suite's own observations."""
        for cell in cells:
            self.add_probe(cell.flow, cell.expected, cell.observed, policy, group)

    def add_matrix(self, run, title: str = "segmentation matrix") -> dict:
        """A `MatrixRun`: its cells become probes of group `title`, drawn as a grid."""
        policy = run.policy
        for cell in run.cells.values():
            self.add_probe(cell.flow, cell.expected, cell.observed, policy, title)
        flows = list(run.cells)
        rows = sorted({policy.label(f.src) for f in flows})
        nodes = sorted({destination_label(f, policy) for f in flows if f.dst_node not in (None, policy.router)})
        router = sorted({destination_label(f, policy) for f in flows if f.dst_node == policy.router})
        others = sorted({destination_label(f, policy) for f in flows if f.dst_node is None})
        matrix = {"title": title, "rows": rows, "columns": nodes + router + others,
                  "failed_controls": {policy.label(src): [c.message(policy) for c in cs]
                                      for src, cs in run.failed_controls.items()},
                  # mismatches confirmed alone (labwarden.checks.matrix), and those then answered: rate-limited
                  "reprobed": [f.label(policy) for f in run.reprobes.sent],
                  "rate_limited": [f.label(policy) for f in run.reprobes.answered]}
        self.matrices.append(matrix)
        return matrix

    def add_section(self, kind: str, title: str, data) -> dict:
        """Anything else worth showing; `kind` picks the renderer (see `section_renderer`)."""
        section = {"kind": kind, "title": title, "data": data}
        self.sections.append(section)
        return section

    def mismatches(self, group: str | None = None) -> list[dict]:
        return [p for p in self.probes if not p["ok"] and (group is None or p["group"] == group)]

    def to_dict(self) -> dict:
        return {"labwarden_report": FORMAT, "header": self.header, "matrices": self.matrices,
                "sections": self.sections, "probes": self.probes}

    def save(self, directory: Path, stem: str = "labwarden") -> tuple[Path, Path]:
        """Write STEM.json and STEM.html into directory; returns both paths."""
        directory.mkdir(parents=True, exist_ok=True)
        doc = self.to_dict()
        json_path, html_path = directory / f"{stem}.json", directory / f"{stem}.html"
        json_path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
        html_path.write_text(render_html(doc))
        return json_path, html_path

    @classmethod
    def load(cls, path: Path) -> Report:
        doc = json.loads(Path(path).read_text())
        if doc.get("labwarden_report") != FORMAT:
            raise ValueError(f"{path}: not a labwarden report (format {FORMAT})")
        return cls(doc["header"], doc["probes"], doc["matrices"], doc["sections"])


# ---------------------------------------------------------------- the header

def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tool_version(command: str, run: Callable[[str], str] | None = None) -> str | None:
    """A router tool's version (`nft --version`, the kind's version_command) where the router's
    rules are loaded from (run), else on this machine."""
    try:
        out = run(command) if run else subprocess.run(
            command.split(), capture_output=True, text=True, timeout=10).stdout
    except Exception:  # a version string is decoration: never fail a run for it
        return None
    return out.strip() or None


def header(topology=None, policy=None, router_config: Path | None = None, **extra) -> dict:
    """The run's header: what was tested, with what, when."""
    from labwarden import __version__
    head = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": {"labwarden": __version__, "python": platform.python_version()}}
    if topology is not None:
        head["topology"] = topology.name
        head["topology_path"] = shown(topology.path)
    if policy is not None:
        head["policy"] = shown(policy.file)
    if router_config is not None and Path(router_config).is_file():
        head["router_config"] = shown(router_config)
        head["router_config_sha256"] = sha256_of(router_config)
    head.update(extra)
    return head


# ---------------------------------------------------------------- sections

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
def _table(data) -> str:
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


def _section(section: dict) -> str:
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


# ---------------------------------------------------------------- the page

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:20px 28px;color:#1d2329;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:26px 0 8px}
.head{display:grid;grid-template-columns:max-content auto;gap:2px 14px;font-size:13px;color:#333}
.head dt{font-weight:600} .head dd{margin:0;font-family:ui-monospace,monospace;word-break:break-all}
.verdict{display:inline-block;margin:12px 0 4px;padding:6px 12px;border-radius:6px;font-size:16px;font-weight:600}
.verdict.ok{background:#d6f5dc;color:#0b5d1e} .verdict.bad{background:#fbd5d5;color:#8a1010}
table.grid{border-collapse:separate;border-spacing:3px;margin-top:6px}
.grid th{font-size:12px;font-weight:600;padding:2px 4px}
.grid th.zone{background:#eef1f4;border-radius:4px}
.grid th.row{text-align:right;white-space:nowrap;padding-right:8px}
.grid th.col{writing-mode:vertical-rl;transform:rotate(180deg);text-align:left;height:112px;vertical-align:bottom}
.grid td{width:74px;height:42px;border-radius:5px;text-align:center;vertical-align:middle;padding:1px 2px;
 font-size:11px;line-height:1.15}
.grid td.self{background:repeating-linear-gradient(45deg,#f4f4f4,#f4f4f4 4px,#e8e8e8 4px,#e8e8e8 8px)}
.grid td b{display:block;font-size:15px}
td.pass{background:#2f9e44;color:#fff} td.blocked{background:#dfe3e8;color:#59636e}
td.wrong{background:#f59f00;color:#1d1300;outline:3px solid #b35c00} td.leak{background:#d01f1f;color:#fff;outline:3px solid #7a0000}
.legend{display:flex;gap:16px;flex-wrap:wrap;margin:8px 0;font-size:13px}
.legend span{display:inline-flex;align-items:center;gap:6px} .legend i{display:inline-block;width:18px;height:14px;border-radius:3px}
.legend i.pass{background:#2f9e44} .legend i.blocked{background:#dfe3e8} .legend i.wrong{background:#f59f00} .legend i.leak{background:#d01f1f}
table.list{border-collapse:collapse;font-size:12px;margin-top:4px}
.list th,.list td{border:1px solid #d5d9de;padding:2px 6px;text-align:left;vertical-align:top}
.list th{background:#eef1f4} .list tr.bad td{background:#fde8e8}
.bad{color:#8a1010} pre{background:#f6f8fa;padding:8px;overflow:auto;font-size:12px}
svg.plot{font:12px system-ui,sans-serif;background:#fafbfc;border:1px solid #e1e4e8}
svg .tick{stroke:#1c7ed6;stroke-width:2} svg .over{stroke:#d01f1f;stroke-width:2}
svg line.budget{stroke:#d01f1f;stroke-dasharray:4 3} svg text.budget{fill:#d01f1f}
"""
MISMATCH_ROWS = 200
SEVERITY = (LEAK, WRONG, PASS, BLOCKED)  # a cell takes the first status any of its probes has
HEAD_KEYS = (("topology", "topology"), ("topology_path", "lab folder"), ("policy", "policy"),
             ("router_config", "router config"), ("router_config_sha256", "router config sha256"),
             ("router_kind", "router kind"), ("router_trace", "deciding rule"),
             ("before", "before (diff)"), ("before_sha256", "before sha256"),
             ("mode", "mode"), ("delay_mode", "delay mode"), ("probe_timeout_s", "probe timeout (s)"),
             ("date", "date"), ("command", "command"), ("outcome", "tests"))


def _short(service: str) -> str:
    proto, _, port = service.partition("/")
    return {"tcp": port, "udp": f"u{port}", "icmp": "ping"}.get(proto, service)


def _service_key(service: str):
    proto, _, port = service.partition("/")
    return ({"tcp": 0, "udp": 1}.get(proto, 2), int(port) if port.isdigit() else 0)


def _zone(label: str) -> str:
    return label.split("/")[0] if "/" in label else label.split("@")[0]


def _header_html(head: dict) -> str:
    rows = []
    known = dict(HEAD_KEYS)
    shown_keys = [*known, *(k for k in head if k not in known and k != "versions")]  # extras last
    for key in shown_keys:
        shown = known.get(key, key.replace("_", " "))
        if head.get(key) is None:
            continue
        value = head[key]
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        rows.append(f"<dt>{escape(shown)}</dt><dd>{escape(str(value))}</dd>")
    versions = head.get("versions") or {}
    if versions:
        rows.append("<dt>versions</dt><dd>" + escape(", ".join(f"{k} {v}" for k, v in versions.items()
                                                               if v is not None)) + "</dd>")
    return f"<dl class=head>{''.join(rows)}</dl>"


def _grid(matrix: dict, probes: list[dict]) -> tuple[str, int]:
    """The colour grid of one matrix, and its mismatch count."""
    cells: dict[tuple[str, str], list[dict]] = {}
    for p in probes:
        cells.setdefault((p["src"], p["dst"]), []).append(p)
    columns = matrix["columns"]
    zones: list[list] = []
    for col in columns:
        zone = "router" if "@" in col else _zone(col)
        if zones and zones[-1][0] == zone:
            zones[-1][1] += 1
        else:
            zones.append([zone, 1])
    out = ["<table class=grid><tr><th></th>"
           + "".join(f"<th class=zone colspan={n}>{escape(z)}</th>" for z, n in zones) + "</tr>",
           "<tr><th></th>" + "".join(f"<th class=col>{escape(c)}</th>" for c in columns) + "</tr>"]
    mismatches = 0
    for row in matrix["rows"]:
        tds = []
        for col in columns:
            group = cells.get((row, col))
            if not group:
                tds.append("<td class=self></td>")
                continue
            group = sorted(group, key=lambda p: _service_key(p["service"]))
            statuses = {p["status"] for p in group}
            state = next(s for s in SEVERITY if s in statuses)
            bad = [p for p in group if not p["ok"]]
            mismatches += len(bad)
            passing = [_short(p["service"]) for p in group if p["observed"] == "open"]
            if bad:  # what got through matters most: open services first
                bad.sort(key=lambda p: p["observed"] != "open")
                mark = f"<b>&#x2717; {len(bad)}</b>"
                body = escape(" ".join(_short(p["service"]) for p in bad[:4]) + (" …" if len(bad) > 4 else ""))
            elif passing:
                mark, body = "<b>&#x2713;</b>", escape(" ".join(passing[:5]) + (" …" if len(passing) > 5 else ""))
            else:
                mark, body = "<b>&middot;</b>", ""
            tip = f"{row} -> {col}: {len(group)} probes"
            tip += "".join(f"\n{p['service']}: expected {'|'.join(p['expected'])}, observed {p['observed']}"
                           for p in bad[:12])
            if not bad and passing:
                tip += "\nanswered: " + ", ".join(passing)
            tds.append(f"<td class=\"cell {state}\" data-src=\"{escape(row)}\" data-dst=\"{escape(col)}\" "
                       f"data-probes={len(group)} data-mismatches={len(bad)} title=\"{escape(tip)}\">"
                       f"{mark}{body}</td>")
        out.append(f"<tr><th class=row>{escape(row)}</th>{''.join(tds)}</tr>")
    out.append("</table>")
    return "".join(out), mismatches


def _probe_table(probes: list[dict], limit: int | None = None) -> str:
    columns = ("flow", "expected", "reason", "observed", "answered by", "rtt ms", "detail")
    rows = []
    for p in probes[:limit]:
        by = p.get("by_node") or p.get("by") or ""
        rtt = "" if p.get("rtt_ms") is None else f"{p['rtt_ms']:.2f}"
        rows.append({"cells": [p["flow"], "|".join(p["expected"]), p["reason"], p["observed"], by, rtt,
                               p["detail"]], "bad": not p["ok"]})
    return _table({"columns": columns, "rows": rows})


def render_html(doc: dict) -> str:
    """The whole report as one HTML page: no scripts, no files beside it."""
    head, probes = doc.get("header", {}), doc.get("probes", [])
    title = f"labwarden report: {head.get('topology', 'run')}"
    body = [f"<h1>{escape(title)}</h1>", _header_html(head)]
    bad_total = sum(not p["ok"] for p in probes)
    body.append(f"<div id=verdict class=\"verdict {'bad' if bad_total else 'ok'}\" data-mismatches={bad_total} "
                f"data-probes={len(probes)}>{len(probes)} probes, {bad_total} "
                f"mismatch{'es' if bad_total != 1 else ''} with the policy</div>")
    legend = "<div class=legend>" + "".join(f"<span><i class={k}></i>{escape(v)}</span>"
                                            for k, v in LEGEND.items()) + "</div>"
    for index, matrix in enumerate(doc.get("matrices", [])):
        mine = [p for p in probes if p["group"] == matrix["title"]]
        grid, mismatches = _grid(matrix, mine)
        body.append(f"<section class=matrix id=matrix-{index} data-title=\"{escape(matrix['title'])}\">"
                    f"<h2>{escape(matrix['title'])}: {len(mine)} probes, "
                    f"<span class=mismatch-count data-count={mismatches}>{mismatches} "
                    f"mismatch{'es' if mismatches != 1 else ''}</span></h2>"
                    "<p>Rows send, columns receive. A cell is every probe from the row's node to the "
                    "column's address (the router has one per segment); it shows &#x2713; and the "
                    "services that answered, &middot; when all were blocked as required, or &#x2717; and "
                    "the count of mismatches. Hover a cell for its probes.</p>"
                    f"{legend}{grid}")
        for src, messages in matrix.get("failed_controls", {}).items():
            body.append(f"<p class=bad>positive controls of {escape(src)} failed, so its timeouts prove "
                        f"nothing: {escape('; '.join(messages))}</p>")
        if matrix.get("rate_limited"):
            body.append(f"<p class=rate-limited>{len(matrix['rate_limited'])} probes answered as the policy says "
                        f"only when re-sent alone and paced (rate-limited, not blocked): "
                        f"{escape('; '.join(matrix['rate_limited']))}</p>")
        body.append("</section>")
    titles = {m["title"] for m in doc.get("matrices", [])}
    for group in dict.fromkeys(p["group"] for p in probes if p["group"] not in titles):
        mine = [p for p in probes if p["group"] == group]
        wrong = sum(not p["ok"] for p in mine)
        body.append(f"<section class=probes data-group=\"{escape(group)}\"><h2>{escape(group)}: "
                    f"{len(mine)} probes, {wrong} mismatch{'es' if wrong != 1 else ''}</h2>"
                    f"{_probe_table(mine, MISMATCH_ROWS)}</section>")
    bad = [p for p in probes if not p["ok"]]
    if bad:
        more = (f"<p>The first {MISMATCH_ROWS} of {len(bad)}; every probe is in the JSON and below.</p>"
                if len(bad) > MISMATCH_ROWS else "")
        body.append(f"<section id=mismatches><h2>Mismatches ({len(bad)})</h2>{more}"
                    f"{_probe_table(bad, MISMATCH_ROWS)}</section>")
    body += [_section(s) for s in doc.get("sections", [])]
    if probes:
        body.append(f"<details><summary>All {len(probes)} probes</summary>{_probe_table(probes)}</details>")
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")


# ---------------------------------------------------------------- in a browser

CHROMIUM = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str:
    for name in CHROMIUM:
        if shutil.which(name):
            return shutil.which(name)
    raise FileNotFoundError("no headless Chromium found (Debian: apt-get install chromium)")


def _chromium(*args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="labwarden-chromium-") as profile:
        return subprocess.run([find_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                               "--hide-scrollbars", f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=120)


def browser_dom(page: Path) -> str:
    """The page's DOM as headless Chromium built it."""
    proc = _chromium("--dump-dom", Path(page).resolve().as_uri())
    if proc.returncode != 0 or "<html" not in proc.stdout:
        raise RuntimeError(f"chromium could not open {page}: {proc.stderr[-1500:]}")
    return proc.stdout


def screenshot(page: Path, png: Path, width: int = 1400, height: int = 1000) -> Path:
    """A PNG of the page as headless Chromium draws it."""
    proc = _chromium(f"--window-size={width},{height}", f"--screenshot={Path(png).resolve()}",
                     Path(page).resolve().as_uri())
    if proc.returncode != 0 or not Path(png).is_file():
        raise RuntimeError(f"chromium took no screenshot of {page}: {proc.stderr[-1500:]}")
    return Path(png)


class _PageReader(HTMLParser):
    def __init__(self):
        super().__init__()
        self.summary = {"cells": [], "matrices": [], "verdict": None}
        self._in = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "td" and "cell" in classes:
            self.summary["cells"].append({"src": a.get("data-src"), "dst": a.get("data-dst"),
                                          "state": next(c for c in classes if c != "cell"),
                                          "mismatches": int(a.get("data-mismatches", 0))})
        elif "mismatch-count" in classes:
            self.summary["matrices"].append({"mismatches": int(a["data-count"]), "text": ""})
            self._in = "count"
        elif a.get("id") == "verdict":
            self.summary["verdict"] = {"mismatches": int(a["data-mismatches"]),
                                       "probes": int(a["data-probes"]), "text": ""}
            self._in = "verdict"

    def handle_data(self, data):
        if self._in == "count":
            self.summary["matrices"][-1]["text"] += data
        elif self._in == "verdict":
            self.summary["verdict"]["text"] += data

    def handle_endtag(self, tag):
        self._in = None


def page_summary(html: str) -> dict:
    """What a report page shows: its grid cells (src, dst, state, mismatches), each
    matrix's mismatch count as printed, and the overall verdict line."""
    reader = _PageReader()
    reader.feed(html)
    return reader.summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m labwarden.report",
                                     description="Draw a report's HTML page again from its JSON.")
    parser.add_argument("json", type=Path)
    parser.add_argument("-o", "--output", type=Path, help="default: beside the JSON, .html")
    parser.add_argument("--screenshot", type=Path, help="also draw the page into this PNG (headless Chromium)")
    args = parser.parse_args(argv)
    try:
        doc = Report.load(args.json).to_dict()
    except (OSError, ValueError, KeyError) as err:
        print(f"labwarden: {err}", file=sys.stderr)
        return 2
    out = args.output or args.json.with_suffix(".html")
    out.write_text(render_html(doc))
    print(out)
    if args.screenshot:
        try:
            print(screenshot(out, args.screenshot))
        except (OSError, RuntimeError) as err:
            print(f"labwarden: {err}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
