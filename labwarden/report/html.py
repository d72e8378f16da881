"""A report as one self-contained HTML page: no scripts, no files beside it.

The page draws every matrix as a colour grid (source node rows x destination
columns, expected vs observed), then the mismatches, then the sections (drawn
by `labwarden.report.sections`), then every probe.
"""

from __future__ import annotations

from html import escape

from labwarden.report.drawing import CSS as DRAWING_CSS, lab_drawings
from labwarden.report.plots import CSS as PLOT_CSS
from labwarden.report.records import BLOCKED, LEAK, LEGEND, PASS, WRONG
from labwarden.report.sections import section_html, table

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:20px 28px;color:#1d2329;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:26px 0 8px} h1,h2,p{overflow-wrap:anywhere}
.head{display:grid;grid-template-columns:max-content auto;gap:2px 14px;font-size:13px;color:#333}
.head dt{font-weight:600} .head dd{margin:0;font-family:ui-monospace,monospace;word-break:break-all}
.verdict{display:inline-block;align-self:flex-start;margin:12px 0 4px;padding:6px 12px;border-radius:6px;font-size:16px;font-weight:600}
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
.scroll{overflow-x:auto;max-width:100%}
@media (max-width:640px){body{margin:12px 12px} .head{grid-template-columns:1fr;gap:0} .head dd{margin-bottom:6px}
 h1{font-size:19px} body{display:flex;flex-direction:column} body>*{order:3} h1,#verdict{order:0}
 #drawing{order:1} .head{order:2}}
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


def _plain(value) -> str:
    """A header value as a line of text: nested mappings and lists without Python's brackets."""
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_plain(v)}" for k, v in value.items() if v not in (None, [], {}, ""))
    if isinstance(value, (list, tuple)):
        return ", ".join(_plain(v) for v in value) or "none"
    return str(value)


def _header_html(head: dict) -> str:
    rows = []
    known = dict(HEAD_KEYS)
    shown_keys = [*known, *(k for k in head if k not in known and k != "versions")]  # extras last
    for key in shown_keys:
        shown = known.get(key, key.replace("_", " "))
        if head.get(key) is None:
            continue
        rows.append(f"<dt>{escape(shown)}</dt><dd>{escape(_plain(head[key]))}</dd>")
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
    return table({"columns": columns, "rows": rows})


def render_html(doc: dict) -> str:
    """The whole report as one HTML page: no scripts, no files beside it."""
    head, probes = doc.get("header", {}), doc.get("probes", [])
    title = f"labwarden report: {head.get('topology', 'run')}"
    body = [f"<h1>{escape(title)}</h1>"]
    bad_total = sum(not p["ok"] for p in probes)
    body.append(f"<div id=verdict class=\"verdict {'bad' if bad_total else 'ok'}\" data-mismatches={bad_total} "
                f"data-probes={len(probes)}>{len(probes)} probes, {bad_total} "
                f"mismatch{'es' if bad_total != 1 else ''} with the policy</div>")
    body.append(_header_html(head))
    if doc.get("lab"):
        body.append(f"<section id=drawing><h2>The lab: {escape(str(doc['lab'].get('name', '')))}</h2>"
                    f"{lab_drawings(doc['lab'], probes)}</section>")
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
                    f"{legend}<div class=scroll>{grid}</div>")
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
    body += [section_html(s) for s in doc.get("sections", [])]
    if probes:
        body.append(f"<details><summary>All {len(probes)} probes</summary>{_probe_table(probes)}</details>")
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content=\"width=device-width,initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{CSS}{DRAWING_CSS}{PLOT_CSS}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")
