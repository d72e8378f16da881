"""The report without a lab: records, JSON round trip, the HTML grid and its sections.

Observations are made up from the oracle (every cell as the policy says), then
a few are turned wrong, so the counts the page must show are known exactly.
"""

import json
from ipaddress import IPv4Address

import pytest

from labwarden.checks.matrix import Cell, MatrixRun, matrix_flows
from labwarden.declared.lab import load_lab
from labwarden.probe import Observation
from labwarden.report.__main__ import main
from labwarden.report.browser import page_summary
from labwarden.report.formats import FORMATS, output_format
from labwarden.report.header import header
from labwarden.report.html import render_html
from labwarden.report.model import Report
from labwarden.report.records import LEAK, PASS, WRONG
from labwarden.report.sections import SECTION_RENDERERS, section_renderer


@pytest.fixture(scope="module")
def policy():
    return load_lab("homelab").policy


def as_expected(policy, flow) -> Observation:
    expected = policy.expect(flow)
    verdict = sorted(expected.verdicts)[0]
    by = flow.dst if verdict in ("open", "closed") else None
    return Observation(verdict, by, f"made up: {verdict}", 63, 0.5)


def make_run(policy, wrong=()) -> MatrixRun:
    """The matrix as the policy says, except `wrong`: {flow label: observed verdict}."""
    wrong = dict(wrong)
    cells = {}
    for flow in matrix_flows(policy):
        observed = as_expected(policy, flow)
        if flow.label(policy) in wrong:
            verdict = wrong.pop(flow.label(policy))
            observed = Observation(verdict, flow.dst if verdict == "open" else None, f"made up: {verdict}")
        cells[flow] = Cell(flow, policy.expect(flow), observed)
    assert not wrong, f"no such flows: {wrong}"
    return MatrixRun(policy, cells)


LEAKED = "servers/web -> personal/laptop tcp/22"
BROKEN = "personal/laptop -> servers/web tcp/80"
ALSO_LEAKED = "servers/web -> personal/laptop icmp"


def test_records_say_what_was_expected_and_seen(policy):
    report = Report()
    report.add_matrix(make_run(policy, {LEAKED: "open", BROKEN: "filtered"}))
    by_flow = {p["flow"]: p for p in report.probes}
    leak = by_flow[LEAKED]
    assert leak["expected"] == ["filtered"] and leak["observed"] == "open" and not leak["ok"]
    assert leak["status"] == LEAK and leak["by_node"] == "personal/laptop"
    assert leak["src"] == "servers/web" and leak["dst"] == "personal/laptop"
    assert by_flow[BROKEN]["status"] == WRONG
    assert by_flow["personal/laptop -> servers/web tcp/443"]["status"] == PASS
    assert {p["dst"] for p in report.probes} >= {"router@wan", "router@personal"}
    assert sorted(p["flow"] for p in report.mismatches()) == sorted([BROKEN, LEAKED])


def test_json_round_trip_draws_the_same_page(policy, tmp_path):
    report = Report(header=header(policy.topology, policy, policy.topology.nodes["router"].firewall))
    report.add_matrix(make_run(policy, {LEAKED: "open"}))
    json_path, html_path = report.save(tmp_path)
    doc = json.loads(json_path.read_text())
    assert doc["labwarden_report"] == 1 and len(doc["probes"]) == len(report.probes)
    assert len(doc["header"]["router_config_sha256"]) == 64
    again = Report.load(json_path)
    assert render_html(again.to_dict()) == html_path.read_text()
    assert main([str(json_path), "-o", str(tmp_path / "again.html")]) == 0
    assert (tmp_path / "again.html").read_text() == html_path.read_text()


def test_grid_has_a_cell_per_source_and_destination_address(policy):
    report = Report()
    report.add_matrix(make_run(policy, {LEAKED: "open", ALSO_LEAKED: "open", BROKEN: "filtered"}))
    page = page_summary(render_html(report.to_dict()))
    topology = policy.topology
    addresses = sum(len(n.addresses) for n in topology.nodes.values())
    sources = [n for n in topology.nodes.values() if n.name != policy.router]
    assert len(page["cells"]) == sum(addresses - len(n.addresses) for n in sources)  # 8 x 11 = 88
    assert page["matrices"] == [{"mismatches": 3, "text": "3 mismatches"}]
    assert page["verdict"]["mismatches"] == 3 and page["verdict"]["probes"] == len(report.probes)
    states = {(c["src"], c["dst"]): (c["state"], c["mismatches"]) for c in page["cells"]}
    assert states[("servers/web", "personal/laptop")] == (LEAK, 2)
    assert states[("personal/laptop", "servers/web")] == (WRONG, 1)
    assert states[("personal/laptop", "servers/git")] == (PASS, 0)
    assert states[("wan/visitor", "ai/gpu")] == ("blocked", 0)


def test_clean_run_shows_no_mismatch(policy):
    report = Report()
    report.add_matrix(make_run(policy))
    page = page_summary(render_html(report.to_dict()))
    assert page["matrices"][0]["mismatches"] == 0 and page["verdict"]["mismatches"] == 0
    assert all(c["state"] in (PASS, "blocked") for c in page["cells"])


def test_suites_add_probes_and_sections(policy):
    report = Report()
    flow = policy.flow("laptop", "198.18.10.10", "tcp/80")
    report.add_cells([Cell(flow, policy.expect(flow), as_expected(policy, flow))], policy, group="nat")
    report.add_section("table", "traceroute laptop -> edge",
                       {"columns": ["hop", "address"], "rows": [[1, "198.18.1.1"], {"cells": [2, "*"], "bad": True}]})
    report.add_section("latency", "page load", {"unit": "ms", "budget": 1500,
                                                "series": [{"label": "visitor -> edge", "values": [600, 1700]}]})
    report.add_section("counterexample", "fuzz", {"rule": "accept <script>"})
    html = render_html(report.to_dict())
    assert "<h2>nat: 1 probes, 0 mismatches</h2>" in html
    assert "traceroute laptop -&gt; edge" in html and "<tr class=bad><td>2</td><td>*</td></tr>" in html
    assert "budget 1500 ms" in html and 'class="tick over"' in html  # 1700 ms is over the budget
    assert "accept &lt;script&gt;" in html  # an unknown kind is shown as escaped JSON


def test_a_registered_renderer_draws_its_kind_and_a_broken_one_costs_only_its_section():
    @section_renderer("unit-test-kind")
    def draw(data):
        return f"<p class=drawn>{data['n'] * 2}</p>"

    @section_renderer("unit-test-broken")
    def broken(data):
        raise KeyError("nope")

    try:
        report = Report()
        report.add_section("unit-test-kind", "doubled", {"n": 21})
        report.add_section("unit-test-broken", "broken", {})
        html = render_html(report.to_dict())
        assert "<p class=drawn>42</p>" in html
        assert "renderer unit-test-broken failed" in html
    finally:
        SECTION_RENDERERS.pop("unit-test-kind")
        SECTION_RENDERERS.pop("unit-test-broken")


def test_save_writes_every_registered_format(tmp_path):
    @output_format("unit-test-txt")
    def titles(doc):
        return ",".join(s["title"] for s in doc["sections"])

    try:
        report = Report()
        report.add_section("text", "a note", "hello")
        paths = report.save(tmp_path, "run")
        assert [p.name for p in paths] == ["run.json", "run.html", "run.unit-test-txt"]
        assert (tmp_path / "run.unit-test-txt").read_text() == "a note"
        assert Report.load(tmp_path / "run.json").sections == report.sections
    finally:
        FORMATS.pop("unit-test-txt")


def test_other_addresses_get_columns_of_their_own(policy):
    report = Report()
    flow = policy.flow("laptop", IPv4Address("198.18.10.99"), "tcp/80")
    run = MatrixRun(policy, {flow: Cell(flow, policy.expect(flow), Observation("filtered", None, "nothing"))})
    matrix = report.add_matrix(run, "strays")
    assert matrix["columns"] == ["198.18.10.99"] and matrix["rows"] == ["personal/laptop"]
