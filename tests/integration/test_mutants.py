"""The suites catch broken labs: every mutant makes the tests its header names fail,
each with the text its header gives, in that test's own failure (read from the run's
JUnit XML, not from anywhere in the output).

A mutant is a router config with one mistake, topologies/<lab>/mutants/<name>.nft, or,
when the mistake is not in the router's config (a tunnel client that exposes its whole
node), a lab folder topologies/<lab>/mutants/<name>/ with the header in its compose.yaml.
The header (labwarden/mutants.py says it whole):

    # labwarden-test: suites/isolation/test_matrix.py::test_cell[servers/web -> personal/laptop tcp/22]
    # labwarden-expect-fail: servers/web -> personal/laptop tcp/22: expected filtered

The suite files named run for real, together (one lab, the mutant loaded), and must fail.
"""

import contextlib
import fcntl
import subprocess
import sys
from pathlib import Path

import pytest

from labwarden.realise.cleanup import topology_lock
from labwarden.declared.mutants import TRACEBACK, outcomes, read_header, suites, unmet

ROOT = Path(__file__).resolve().parents[2]
MUTANTS = sorted((ROOT / "topologies").glob("*/mutants/*.nft")) + \
    sorted((ROOT / "topologies").glob("*/mutants/*.rules")) + \
    sorted((ROOT / "topologies").glob("*/mutants/*/compose.yaml"))


def case_id(mutant: Path) -> str:
    return f"{mutant.parents[2].name}/{mutant.parent.name}" if mutant.name == "compose.yaml" else \
        f"{mutant.parents[1].name}/{mutant.stem}"


@contextlib.contextmanager
def lab_lock(mutant: Path):
    """A lab folder mutant has its lab's subnets under another name, which ComposeLab's lock (per
    topology name, labwarden/realise/cleanup.py) does not cover: hold its lab's lock while it runs, or it
    clashes with a run of that lab on this Docker engine."""
    if mutant.name != "compose.yaml":
        yield
        return
    with topology_lock(mutant.parents[2].name) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.mark.parametrize("mutant", MUTANTS, ids=[case_id(m) for m in MUTANTS])
def test_suites_catch_mutant(mutant, tmp_path):
    """One run of every suite file the header names, on one lab with the mutant in it."""
    expected = read_header(mutant)
    if mutant.name == "compose.yaml":
        lab = ["--lw-topology", str(mutant.parent)]
    else:
        lab = ["--lw-topology", mutant.parents[1].name, "--lw-router-config", str(mutant)]
    junit = tmp_path / "junit.xml"
    with lab_lock(mutant):
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", *suites(expected), "-q", "-p", "no:cacheprovider",
             TRACEBACK, "--lw-report-dir", str(tmp_path), "--junitxml", str(junit), *lab],
            cwd=ROOT, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    name = mutant.relative_to(ROOT)
    assert proc.returncode == 1, f"the suites did not fail on {name} (exit {proc.returncode}):\n{output[-3000:]}"
    problems = unmet(expected, outcomes(junit))
    assert not problems, f"{name}:\n" + "\n".join(problems)
