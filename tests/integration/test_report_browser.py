"""The HTML report of a real run, opened in a real browser (headless Chromium).

The isolation matrix runs for real twice, once on the home lab's own router
config and once on a mutant that lets servers open connections to personal
devices. Each run's page must show, as Chromium builds it, one grid cell per
(source node, destination address), the mismatch count the JSON and the JUnit
XML agree on, and each cell's own count; the mutant's leak must be red.
"""

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

from labwarden.declared.lab import load_lab
from labwarden.report.browser import browser_dom, page_summary, screenshot
from labwarden.report.records import LEAK

ROOT = Path(__file__).resolve().parents[2]
MUTANT = ROOT / "topologies" / "homelab" / "mutants" / "servers-to-personal.nft"
RUNS = {"own-config": [], "mutant": ["--lw-router-config", str(MUTANT)]}


@pytest.fixture(scope="module", params=list(RUNS))
def run(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--tb=no", "--no-header",
         "suites/isolation/test_matrix.py", "suites/isolation/test_stateful.py",
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

    png = screenshot(out / "labwarden.html", out / "report.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
