"""The HTML report of a real run, opened in a real browser (headless Chromium).

The isolation matrix runs for real twice on one home lab (each run attached to it,
as fresh as a new lab), once on the home lab's own router config and once on a
mutant that lets servers open connections to personal devices. Each run's page must show, as Chromium builds it, one grid cell per
(source node, destination address), the mismatch count the JSON and the JUnit
XML agree on, and each cell's own count; the mutant's leak must be red, in the
grid and as red arrows in the lab's drawing (one per mismatching pair).

At the sizes people use (1366x768, 1920x1080, a 390 px phone) the page must not
scroll sideways as a whole (a wide grid or plot scrolls in its own box), the
drawing must fit (the phone gets the narrow one), no text of the drawing or the
plots may be smaller than 11 px on screen, and no two texts of one picture may
overlap. The same holds for a page drawn from a made-up
report with latency plots (no lab needed). The screenshots are written into the
test's temporary folder for people to look at (pytest keeps the last few runs').
"""

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

from labwarden.declared.lab import load_lab
from labwarden.realise.compose import ComposeLab
from labwarden.report.browser import browser_dom, layout, overlapping, page_summary, screenshot
from labwarden.report.html import render_html
from labwarden.report.records import LEAK, lab_record

ROOT = Path(__file__).resolve().parents[2]
MUTANT = ROOT / "topologies" / "homelab" / "mutants" / "servers-to-personal.nft"
RUNS = {"own-config": [], "mutant": ["--lw-router-config", str(MUTANT)]}
SIZES = {"laptop": (1366, 768), "desktop": (1920, 1080), "phone": (390, 844)}
SMALLEST_PX = 11


@pytest.fixture(scope="module")
def lab():
    """One home lab for both runs, not one each: each run attaches to it (`--lw-attach`), which
    makes it as fresh as a new lab with that run's router config loaded (conntrack emptied,
    tunnel clients restarted: labwarden.realise.compose.ComposeLab._attach, as
    tests/integration/test_mutants.py's shared labs)."""
    with ComposeLab(*load_lab(ROOT / "topologies" / "homelab"), log=lambda m: None) as lab:
        yield lab


@pytest.fixture(scope="module", params=list(RUNS))
def run(request, tmp_path_factory, lab):
    out = tmp_path_factory.mktemp(request.param)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--tb=no", "--no-header",
         "suites/isolation/test_matrix.py", "suites/isolation/test_stateful.py",
         "--lw-topology", "homelab", "--lw-attach", lab.project,
         "--lw-report-dir", str(out), *RUNS[request.param]],
        cwd=ROOT, capture_output=True, text=True, timeout=1200)
    return request.param, proc, out


def test_page_shows_the_grid_and_the_mismatches(run):
    name, proc, out = run
    doc = json.loads((out / "labwarden.json").read_text())
    title = doc["matrices"][0]["title"]
    probes = [p for p in doc["probes"] if p["group"] == title]
    bad = [p for p in probes if not p["ok"]]
    # JUnit XML (one test per matrix cell) agrees with the JSON
    cases = ET.parse(out / "junit.xml").getroot().iter("testcase")
    failed_cells = [c for c in cases if c.get("name", "").startswith("test_cell[")
                    and c.find("failure") is not None]
    assert len(failed_cells) == len(bad), proc.stdout[-3000:]
    if name == "mutant":
        assert proc.returncode == 1 and bad, proc.stdout[-3000:]
        assert "servers/web -> personal/laptop tcp/22" in {p["flow"] for p in bad}
    else:
        assert proc.returncode == 0 and not bad, proc.stdout[-3000:]
    assert any(p["group"] == "stateful: related ICMP errors" for p in doc["probes"])

    page = page_summary(browser_dom(out / "labwarden.html"))
    pairs = Counter((p["src"], p["dst"]) for p in probes)
    topology, policy = load_lab(ROOT / "topologies" / "homelab")
    router = policy.router
    addresses = sum(len(n.addresses) for n in topology.nodes.values())
    # one cell per source node and address of another node (8 x 11 on the home lab)
    assert len(page["cells"]) == len(pairs) == sum(addresses - len(n.addresses)
                                                   for n in topology.nodes.values() if n.name != router)
    assert page["matrices"][0]["mismatches"] == len(bad)
    assert page["matrices"][0]["text"].startswith(f"{len(bad)} mismatch")
    per_cell = Counter((p["src"], p["dst"]) for p in bad)
    assert {(c["src"], c["dst"]): c["mismatches"] for c in page["cells"]} == \
        {pair: per_cell.get(pair, 0) for pair in pairs}
    if name == "mutant":
        cell = next(c for c in page["cells"] if (c["src"], c["dst"]) == ("servers/web", "personal/laptop"))
        assert cell["state"] == LEAK
    # the drawing: one red arrow per (source, destination) with a mismatch, in any group
    every_bad = Counter((p["src"], p["dst"]) for p in doc["probes"] if not p["ok"])
    assert {(a["src"], a["dst"]): a["mismatches"] for a in page["arrows"]} == dict(every_bad)
    assert page["narrow_arrows"] == page["arrows"]  # the phone's drawing says the same
    if name == "mutant":
        assert {a["state"] for a in page["arrows"]} == {LEAK}

    png = screenshot(out / "labwarden.html", out / "report.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def assert_legible(page: Path, out: Path) -> None:
    """The page at every size of SIZES: see the module's docstring. Screenshots go to out."""
    for label, (width, height) in SIZES.items():
        seen = layout(page, width, height)
        assert seen["page_width"] <= width and not seen["too_wide"], (label, seen["too_wide"])
        assert seen["pictures"], "no drawing and no plot on the page"
        for picture in seen["pictures"]:
            small = [(t["text"], round(t["px"], 1)) for t in picture["texts"] if t["px"] < SMALLEST_PX]
            assert not small, (label, picture["kind"], small[:5])
            crowded = overlapping([t for t in picture["texts"] if not t["badge"]])
            assert not crowded, (label, picture["kind"], crowded[:5])
            if picture["kind"].startswith("lab"):  # the wide drawing on screens, the narrow on a phone
                assert picture["kind"] == ("lab narrow" if width < 700 else "lab wide"), (label, picture["kind"])
                assert not picture["scrolls"], f"the drawing does not fit at {label} ({width} px)"
        png = screenshot(page, out / f"{page.stem}-{label}.png", width, height)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_page_is_legible_at_common_sizes(run):
    name, proc, out = run
    assert_legible(out / "labwarden.html", out)


def test_a_saved_report_with_latency_plots_is_legible(tmp_path):
    """No lab: the airplane drawn from its files, a leak, and a satellite's latency samples."""
    policy = load_lab(ROOT / "topologies" / "airplane").policy
    loads = [640.0 + (i * 7) % 40 for i in range(19)] + [3612.0]  # one load lost a packet
    pings = [0.05 + (i % 9) / 100 for i in range(30)]
    leak = {"src": "wan/visitor", "dst": "cabin/laptop", "dst_address": "198.18.50.10", "flow": "leak",
            "group": "nat", "service": "tcp/8080", "expected": ["filtered"], "reason": "made up",
            "observed": "open", "ok": False, "status": LEAK, "detail": "", "by": None}
    doc = {"labwarden_report": 1, "header": {"topology": "airplane"}, "matrices": [], "probes": [leak],
           "lab": lab_record(policy),
           "sections": [{"kind": "latency", "title": "wan/visitor -> wan/edge http/80",
                         "data": {"unit": "ms", "budget": 1000, "series": [{"label": "http/80", "values": loads}]}},
                        {"kind": "latency", "title": "cabin/laptop -> gateway@cabin icmp",
                         "data": {"unit": "ms", "budget": 5, "series": [{"label": "icmp", "values": pings}]}}]}
    page = tmp_path / "airplane.html"
    page.write_text(render_html(doc))
    shown = page_summary(browser_dom(page))
    assert shown["arrows"] == shown["narrow_arrows"] == [
        {"src": "wan/visitor", "dst": "cabin/laptop", "mismatches": 1, "state": LEAK}]
    assert_legible(page, tmp_path)
