"""The suites catch broken labs: every mutant makes the tests its header names fail,
each with the text its header gives, in that test's own failure (read from the run's
JUnit XML, not from anywhere in the output).

A mutant is a router config with one mistake, topologies/<lab>/mutants/<name>.nft, or,
when the mistake is not in the router's config (a tunnel client that exposes its whole
node), a lab folder topologies/<lab>/mutants/<name>/ with the header in its compose.yaml.
The header (labwarden/mutants.py says it whole):

    # labwarden-test: suites/isolation/test_matrix.py::test_cell[servers/web -> personal/laptop tcp/22]
    # labwarden-expect-fail: servers/web -> personal/laptop tcp/22: expected filtered

Each suite file named runs for real (its own lab, the mutant loaded) and must fail.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from labwarden.mutants import outcomes, read_header, unmet

ROOT = Path(__file__).resolve().parents[2]
MUTANTS = sorted((ROOT / "topologies").glob("*/mutants/*.nft")) + \
    sorted((ROOT / "topologies").glob("*/mutants/*/compose.yaml"))


def case_id(mutant: Path, suite: str, index: int) -> str:
    """lab/name, and the suite's folder for a router config's second suite (existing ids kept)."""
    if mutant.name == "compose.yaml":
        return f"{mutant.parents[2].name}/{mutant.parent.name}-{Path(suite).stem}"
    return f"{mutant.parents[1].name}/{mutant.stem}" + (f"-{Path(suite).parent.name}" if index else "")


CASES = [(m, catch, case_id(m, catch.suite, i)) for m in MUTANTS for i, catch in enumerate(read_header(m))]


@pytest.mark.parametrize("mutant,catch", [c[:2] for c in CASES], ids=[c[2] for c in CASES])
def test_suite_catches_mutant(mutant, catch, tmp_path):
    if mutant.name == "compose.yaml":
        lab = ["--topology", str(mutant.parent)]
    else:
        lab = ["--topology", mutant.parents[1].name, "--router-config", str(mutant)]
    junit = tmp_path / "junit.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", catch.suite, "-q", "-p", "no:cacheprovider", "--tb=line",
         "--report-dir", str(tmp_path), "--junitxml", str(junit), *lab],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    name = mutant.relative_to(ROOT)
    assert proc.returncode == 1, f"{catch.suite} did not fail on {name} (exit {proc.returncode}):\n{output[-3000:]}"
    problems = unmet(catch.expected, outcomes(junit))
    assert not problems, f"{catch.suite} on {name}:\n" + "\n".join(problems)
