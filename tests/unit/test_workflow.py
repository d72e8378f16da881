"""The GitHub Actions workflow is valid: checked against the workflow JSON schema by
check-jsonschema (a dev dependency, schema vendored: no network) and, where it is
installed, by actionlint (with shellcheck for the run: scripts)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "labwarden.yml"


def schema_check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                           "vendor.github-workflows", str(path)], capture_output=True, text=True, timeout=120)


def test_workflow_matches_the_github_workflow_schema():
    proc = schema_check(WORKFLOW)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_schema_check_does_catch_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("runs-on: ubuntu-latest", "runs_on: ubuntu-latest", 1))
    proc = schema_check(broken)
    assert proc.returncode == 1 and "runs_on" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_actionlint_finds_nothing():
    actionlint = shutil.which("actionlint")
    if actionlint is None:
        pytest.skip("actionlint is not installed (its PyPI wrapper downloads the binary at build time)")
    args = [actionlint, "-no-color"]
    if shutil.which("shellcheck"):
        args.append(f"-shellcheck={shutil.which('shellcheck')}")
    proc = subprocess.run([*args, str(WORKFLOW)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_it_gates_topology_changes_with_the_three_suites_and_publishes_junit():
    doc = yaml.safe_load(WORKFLOW.read_text())
    on = doc[True]  # YAML 1.1 reads the key `on` as true
    assert on["pull_request"]["paths"] == ["topologies/**"]
    assert doc["env"]["SUITES"].split() == ["isolation", "nat", "tunnel"]
    steps = doc["jobs"]["suites"]["steps"]
    uses = [s.get("uses", "") for s in steps]
    assert any(u.startswith("EnricoMi/publish-unit-test-result-action@") for u in uses)
    run = next(s["run"] for s in steps if s.get("name") == "run the suites on the changed lab")
    assert '--junitxml "reports/$LAB/junit.xml"' in run and '--lw-topology "topologies/$LAB"' in run
