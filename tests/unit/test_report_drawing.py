"""The report's pictures without a browser: the lab drawing (labwarden.report.drawing) and the
latency plots (labwarden.report.plots), read back as XML.

Every node and segment of the shipped labs is drawn, boxes never overlap and stay inside
the picture, red arrows are exactly the (source, destination) pairs with a mismatch, and
whatever a lab file or a JSON report names is escaped.
"""

import xml.etree.ElementTree as ET
from collections import Counter
from itertools import combinations

import pytest

from labwarden.checks.matrix import Cell, MatrixRun, matrix_flows
from labwarden.declared.lab import load_lab
from labwarden.probe import Observation
from labwarden.report.drawing import BADGE_R, lab_svg, mismatch_pairs
from labwarden.report.html import render_html
from labwarden.report.model import Report
from labwarden.report.plots import axis, latency_svg, nice_step, percentile
from labwarden.report.records import LEAK, lab_record

SVG = "{http://www.w3.org/2000/svg}"
LABS = ("homelab", "airplane", "openwrt-homelab")


def svg_of(fragment: str) -> ET.Element:
    """The first <svg> of an HTML fragment, parsed as XML (so it must be well-formed)."""
    start = fragment.index("<svg")
    end = fragment.index("</svg>", start) + len("</svg>")
    return ET.fromstring(fragment[start:end])


def groups(svg: ET.Element, cls: str) -> list[ET.Element]:
    return [g for g in svg.iter(f"{SVG}g") if cls in g.get("class", "").split()]


def arrows(svg: ET.Element) -> list[ET.Element]:
    return [p for p in svg.iter(f"{SVG}path") if "mismatch" in p.get("class", "").split()]


def rect_of(g: ET.Element) -> tuple[float, float, float, float]:
    r = g.find(f"{SVG}rect")
    return tuple(float(r.get(k)) for k in ("x", "y", "width", "height"))


def overlap(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def run_with(policy, wrong: dict) -> Report:
    """A report of the whole matrix as the policy says, except `wrong` (flow label -> verdict)."""
    cells = {}
    wrong = dict(wrong)
    for flow in matrix_flows(policy):
        expected = policy.expect(flow)
        verdict = wrong.pop(flow.label(policy), sorted(expected.verdicts)[0])
        by = flow.dst if verdict in ("open", "closed") else None
        cells[flow] = Cell(flow, expected, Observation(verdict, by, f"made up: {verdict}"))
    assert not wrong, f"no such flows: {wrong}"
    report = Report()
    report.add_matrix(MatrixRun(policy, cells))
    return report


@pytest.mark.parametrize("narrow", [False, True], ids=["wide", "narrow"])
@pytest.mark.parametrize("name", LABS)
def test_every_node_and_segment_is_drawn_once_and_inside(name, narrow):
    policy = load_lab(name).policy
    lab = lab_record(policy)
    svg = svg_of(lab_svg(lab, narrow=narrow))
    nodes = groups(svg, "node")
    assert Counter(g.get("data-node") for g in nodes) == Counter(policy.label(n) for n in policy.topology.nodes)
    assert [g.get("data-node") for g in groups(svg, "router")] == [policy.router]
    segments = groups(svg, "seg")
    assert sorted(g.get("data-segment") for g in segments) == sorted(policy.topology.segments)
    width, height = float(svg.get("width")), float(svg.get("height"))
    assert svg.get("viewBox") == f"0 0 {svg.get('width')} {svg.get('height')}"
    boxes = {g.get("data-node"): rect_of(g) for g in nodes}
    for a, b in combinations(boxes, 2):
        assert not overlap(boxes[a], boxes[b]), f"{a} and {b} overlap"
    for what, (x, y, w, h) in [*boxes.items(), *((g.get("data-segment"), rect_of(g)) for g in segments)]:
        assert 0 <= x and x + w <= width and 0 <= y and y + h <= height, f"{what} is outside the picture"
    for seg in segments:  # a node drawn in a segment sits inside that segment's box
        x, y, w, h = rect_of(seg)
        for node in policy.topology.nodes.values():
            if list(node.addresses) == [seg.get("data-segment")] and node.name != policy.router:
                nx, ny, nw, nh = boxes[policy.label(node.name)]
                assert x < nx and nx + nw < x + w and y < ny and ny + nh < y + h
    assert not arrows(svg)  # nothing probed, nothing wrong
    text = "".join(svg.itertext())
    for node in policy.topology.nodes.values():  # every address is written out
        assert all(str(address) in text for address in node.addresses.values())


def test_tunnels_and_impaired_links_are_drawn():
    policy = load_lab("airplane").policy
    svg = svg_of(lab_svg(lab_record(policy)))
    tunnels = groups(svg, "tunnel-g")
    assert [g.get("data-tunnel") for g in tunnels] == [t.name for t in policy.tunnels]
    assert "cabin/laptop tcp/8080 → wan/edge tcp/80" in "".join(tunnels[0].itertext())
    impaired = {link.segment for link in policy.topology.links if link.node is None}
    for seg in groups(svg, "seg"):
        marked = any("impair" in t.get("class", "") for t in seg.iter(f"{SVG}text"))
        assert marked == (seg.get("data-segment") in impaired)
    hops = {g.get("data-node") for g in groups(svg, "hop")}
    assert hops == {policy.label(n.name) for n in policy.topology.nodes.values()
                    if len(n.addresses) > 1 and n.name != policy.router}


@pytest.mark.parametrize("narrow", [False, True], ids=["wide", "narrow"])
def test_red_arrows_are_exactly_the_mismatching_pairs(narrow):
    policy = load_lab("homelab").policy
    wrong = {"servers/web -> personal/laptop tcp/22": "open", "servers/web -> personal/laptop icmp": "open",
             "servers/git -> personal/tv tcp/22": "open", "personal/laptop -> servers/web tcp/80": "filtered",
             "wan/visitor -> ai/gpu tcp/22": "open", "personal/phone -> personal/tv tcp/22": "open"}
    wan_router = next(f.label(policy) for f in matrix_flows(policy)
                      if f.src == "visitor" and f.dst == policy.public and str(f.service) == "tcp/22")
    report = run_with(policy, {**wrong, wan_router: "open"})
    doc = report.to_dict()
    bad = [p for p in doc["probes"] if not p["ok"]]
    assert len(bad) == len(wrong) + 1
    svg = svg_of(lab_svg(doc["lab"], doc["probes"], narrow=narrow))
    drawn = {(a.get("data-src"), a.get("data-dst")): a for a in arrows(svg)}
    assert {pair: int(a.get("data-count")) for pair, a in drawn.items()} == \
        dict(Counter((p["src"], p["dst"]) for p in bad))
    assert ("servers/web", "personal/laptop") in drawn and ("wan/visitor", "router@wan") in drawn
    assert "leak" in drawn[("servers/web", "personal/laptop")].get("class")
    assert "wrong" in drawn[("personal/laptop", "servers/web")].get("class")
    marker = f"lw-arrow-{'narrow' if narrow else 'wide'}"
    assert all(a.get("marker-end") == f"url(#{marker})" for a in drawn.values())
    assert [m.get("id") for m in svg.iter(f"{SVG}marker")] == [marker]
    badges = groups(svg, "badge")
    assert sorted(int("".join(b.itertext()).split(")")[-1]) for b in badges) == \
        sorted(int(a.get("data-count")) for a in drawn.values())
    centres = [(float(c.get("cx")), float(c.get("cy"))) for b in badges for c in b.iter(f"{SVG}circle")]
    for (x1, y1), (x2, y2) in combinations(centres, 2):  # each count stays readable
        assert (x1 - x2) ** 2 + (y1 - y2) ** 2 >= (2 * BADGE_R) ** 2
    clean = run_with(policy, {}).to_dict()
    assert not arrows(svg_of(lab_svg(clean["lab"], clean["probes"]))) and not mismatch_pairs(clean["probes"])


@pytest.mark.parametrize("narrow", [False, True], ids=["wide", "narrow"])
def test_a_mutants_crowd_of_arrows_keeps_its_counts_apart(narrow):
    """The servers-to-personal mutant: every server reaches every personal device (6 arrows)."""
    policy = load_lab("homelab").policy
    wrong = {f.label(policy): "open" for f in matrix_flows(policy)
             if f.src in ("web", "git") and f.dst_node in ("laptop", "phone", "tv") and str(f.service) == "tcp/22"}
    doc = run_with(policy, wrong).to_dict()
    svg = svg_of(lab_svg(doc["lab"], doc["probes"], narrow=narrow))
    assert len(arrows(svg)) == 6
    centres = [(float(c.get("cx")), float(c.get("cy"))) for b in groups(svg, "badge") for c in b.iter(f"{SVG}circle")]
    for (x1, y1), (x2, y2) in combinations(centres, 2):
        assert (x1 - x2) ** 2 + (y1 - y2) ** 2 >= (2 * BADGE_R) ** 2


def test_mismatches_to_addresses_point_at_their_segment_or_are_named():
    lab = lab_record(load_lab("homelab").policy)
    probes = [{"src": "personal/laptop", "dst": "198.18.10.99", "dst_address": "198.18.10.99", "ok": False,
               "status": "wrong", "service": "tcp/80"},
              {"src": "personal/laptop", "dst": "192.0.2.7", "dst_address": "192.0.2.7", "ok": False,
               "status": LEAK, "service": "tcp/80"}]
    html = lab_svg(lab, probes)
    drawn = [(a.get("data-src"), a.get("data-dst")) for a in arrows(svg_of(html))]
    assert drawn == [("personal/laptop", "198.18.10.99")]
    assert "not in the drawing: personal/laptop -&gt; 192.0.2.7" in html


HOSTILE = '<img src=x onerror="alert(1)">&amp;\'"'


def test_names_from_files_and_reports_are_escaped():
    lab = {"name": HOSTILE, "router": "r<1>", "segments": [{"name": "s&<b>", "subnet": "10.9.0.0/24", "zone": HOSTILE},
                                                          {"name": "t", "subnet": "10.9.1.0/24", "zone": "t"}],
           "nodes": [{"name": "r<1>", "label": "r<1>", "addresses": {"s&<b>": "10.9.0.1", "t": "10.9.1.1"}},
                     {"name": "n\"'>", "label": f"z/{HOSTILE}", "addresses": {"s&<b>": "10.9.0.5"}},
                     {"name": "m", "label": "t/m", "addresses": {"t": "10.9.1.5"}}],
           "links": [{"segment": "t", "node": None, "profile": "<i>slow</i>", "delay_ms": 5, "jitter_ms": 0,
                      "loss_pct": 0}],
           "forwards": [{"name": "f", "public": "tcp/80", "to": "<u>web</u>", "port": 80}],
           "tunnels": [{"name": HOSTILE, "client": f"z/{HOSTILE}", "local": "tcp/1", "edge": "t/m", "public": "tcp/2"}]}
    probes = [{"src": f"z/{HOSTILE}", "dst": "t/m", "dst_address": "10.9.1.5", "ok": False, "status": LEAK,
               "service": "tcp/<9>"}]
    html = lab_svg(lab, probes)
    assert "<img" not in html and "<u>" not in html and "<i>" not in html and "<b>" not in html
    svg = svg_of(html)  # well-formed XML although every name is hostile
    assert {g.get("data-node") for g in groups(svg, "node")} == {"r<1>", f"z/{HOSTILE}", "t/m"}
    assert [(a.get("data-src"), a.get("data-dst")) for a in arrows(svg)] == [(f"z/{HOSTILE}", "t/m")]
    assert [g.get("data-tunnel") for g in groups(svg, "tunnel-g")] == [HOSTILE]
    page = render_html({"header": {"topology": HOSTILE}, "probes": [], "lab": lab})
    assert "<img" not in page and "The lab: &lt;img" in page


def test_the_page_draws_the_lab_and_a_report_without_one_still_renders():
    policy = load_lab("homelab").policy
    doc = run_with(policy, {"servers/web -> personal/laptop tcp/22": "open"}).to_dict()
    page = render_html(doc)
    assert page.index("id=drawing") < page.index("class=matrix")  # the picture before the grid
    assert page.count('data-src="servers/web" data-dst="personal/laptop" data-count') == 2  # wide, narrow
    assert page.count('<svg class="lab wide"') == page.count('<svg class="lab narrow"') == 1
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    del doc["lab"]
    assert "id=drawing" not in render_html(doc)


# the latency plots


def test_percentiles_steps_and_axes():
    assert percentile([1, 2, 3, 4], 50) == 2.5 and percentile([5], 95) == 5
    assert [nice_step(s) for s in (10, 650, 0.9, 1200)] == [2, 200, 0.2, 200]
    assert axis([0.1, 0.4, 0.9], 5) == (0.0, 6.0, 1.0)  # near zero: from zero
    start, end, step = axis([598 + i % 15 for i in range(30)], 650)  # a satellite's: its spread
    assert 560 <= start < 598 and 650 < end <= 700 and step == 20
    start, end, _ = axis([640.0] * 19 + [3612.0], 1000)  # one retransmission must not squeeze the rest
    assert end < 1500 and end >= 1000
    assert axis([], None) == (0.0, 1.0, 0.2)


def test_latency_plot_shows_every_sample_its_percentiles_and_the_budget():
    values = [640.0 + i for i in range(19)] + [3612.0]
    html = latency_svg({"unit": "ms", "budget": 1000, "series": [{"label": "http <b>", "values": values},
                                                                 {"label": "empty", "values": []}]})
    svg = svg_of(html)
    ticks = [line for line in svg.iter(f"{SVG}line") if "tick" in line.get("class", "").split()]
    assert len(ticks) == 19  # the 3.6 s outlier is beyond the axis, and counted there:
    assert "+1 more" in html and "to 3612" in html
    series = groups(svg, "series")
    assert [g.get("data-label") for g in series] == ["http <b>", "empty"]
    assert [g.get("data-samples") for g in series] == ["20", "0"]
    text = "".join(svg.itertext())
    assert "budget 1000 ms" in text and "p50 650" in text and "20 samples, ms" in text and "no samples" in text
    assert "<b>" not in html
    over = latency_svg({"unit": "ms", "budget": 5, "series": [{"label": "icmp", "values": [0.2, 0.3, 6.2]}]})
    over_ticks = [line for line in svg_of(over).iter(f"{SVG}line") if "over" in line.get("class", "").split()]
    assert len(over_ticks) == 1
