"""Every pytest run writes its report: JUnit XML, JSON and HTML, and a grid in the terminal.

No lab here: a conftest stands in a made-up matrix (all as the policy says but
one leaking cell), which the plugin must pick up like the real one.
"""

import json
import re
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET

CONFTEST = textwrap.dedent("""
    import pytest
    from labwarden.checks.matrix import Cell, MatrixRun, matrix_flows
    from labwarden.probe import Observation

    @pytest.fixture(scope="session")
    def matrix(labwarden_policy):
        policy, cells = labwarden_policy, {}
        for flow in matrix_flows(policy):
            expected = policy.expect(flow)
            verdict = sorted(expected.verdicts)[0]
            if flow.label(policy) == "servers/web -> personal/laptop tcp/22":
                verdict = "open"
            cells[flow] = Cell(flow, expected, Observation(verdict, None, "made up"))
        return MatrixRun(policy, cells)
""")
TESTS = textwrap.dedent("""
    def test_adds_a_section(labwarden_report):
        labwarden_report.add_section("text", "a note from a suite", "hello from the suite")

    def test_matrix_has_one_mismatch(matrix):
        assert sum(not c.ok for c in matrix.cells.values()) == 1

    def test_fails():
        assert False, "web -> laptop tcp/22 was ACCEPTED by a rule nobody meant"
""")


def run(tmp_path, *args):
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_it.py").write_text(TESTS)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_run_writes_junit_json_and_html_into_reports(tmp_path):
    proc = run(tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    reports = tmp_path / "reports"
    suite = ET.parse(reports / "junit.xml").getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("3", "1")
    doc = json.loads((reports / "labwarden.json").read_text())
    assert doc["header"]["topology"] == "homelab"
    assert len(doc["header"]["router_config_sha256"]) == 64
    assert doc["header"]["outcome"] == {"failed": 1, "passed": 2}
    assert doc["matrices"][0]["title"] == "segmentation matrix"
    bad = [p for p in doc["probes"] if not p["ok"]]
    assert [p["flow"] for p in bad] == ["servers/web -> personal/laptop tcp/22"]
    note, failure = doc["sections"]
    assert note == {"kind": "text", "title": "a note from a suite", "data": "hello from the suite"}
    assert failure["title"] == "failed: test_it.py::test_fails"
    assert "web -> laptop tcp/22 was ACCEPTED by a rule nobody meant" in failure["data"]
    html = (reports / "labwarden.html").read_text()
    assert "hello from the suite" in html and "1 mismatch with the policy" in html
    assert "was ACCEPTED by a rule nobody meant" in html
    # the terminal: the compact grid, and where the files went
    assert "labwarden segmentation matrix" in proc.stdout
    assert re.search(r"^\d+ cells, 1 mismatches", proc.stdout, re.M), proc.stdout
    assert f"labwarden report: {reports / 'labwarden.json'}" in proc.stdout


def test_report_dir_and_an_explicit_junitxml_are_respected(tmp_path):
    proc = run(tmp_path, "--lw-report-dir", "out", "--junitxml", "mine.xml")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert (tmp_path / "mine.xml").is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["labwarden.html", "labwarden.json"]
    assert not (tmp_path / "reports").exists()
