"""The isolation suite catches broken router configs.

Each file in topologies/<lab>/mutants/ is a router config with one mistake; its
header names the suite file that must catch it and the failure text expected:

    # labwarden-suite: suites/isolation/test_matrix.py
    # labwarden-expect-fail: servers/web -> personal/laptop tcp/22: expected filtered

The suite runs for real (its own lab, the mutant loaded into the router) and
must fail, naming that cell. A header may name several suites, each followed by
its own expected failures: every one of them must catch the mutant.

When the mistake is not in the router's config (a tunnel client that exposes its
whole node), the mutant is a lab folder, topologies/<lab>/mutants/<name>/, with
the same header in its compose.yaml; the suite runs with --topology that folder.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MUTANTS = sorted((ROOT / "topologies").glob("*/mutants/*.nft"))


def header(path: Path, key: str) -> list[str]:
    return re.findall(rf"^# labwarden-{key}: (.+)$", path.read_text(), re.M)


def suites(path: Path) -> list[tuple[str, list[str]]]:
    """(suite, the failures it must name), in the header's order."""
    found: list[tuple[str, list[str]]] = []
    for key, value in re.findall(r"^# labwarden-(suite|expect-fail): (.+)$", path.read_text(), re.M):
        if key == "suite":
            found.append((value, []))
        elif found:
            found[-1][1].append(value)
    return found


CASES = [(m, suite, expected, i) for m in MUTANTS for i, (suite, expected) in enumerate(suites(m))]


@pytest.mark.parametrize("mutant,suite,expected", [c[:3] for c in CASES],
                         ids=[f"{m.parents[1].name}/{m.stem}" + (f"-{Path(s).parent.name}" if i else "")
                              for m, s, _, i in CASES])
def test_suite_catches_mutant(mutant, suite, expected):
    assert expected, f"{mutant} names no expected failure for {suite}"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", suite, "-q", "-p", "no:cacheprovider", "--tb=line",
         "--topology", mutant.parents[1].name, "--router-config", str(mutant)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, f"the suite did not fail on {mutant.name} (exit {proc.returncode}):\n{output[-3000:]}"
    missing = [e for e in expected if e not in output]
    assert not missing, f"{mutant.name}: the failures do not name {missing}:\n{output[-3000:]}"


MUTANT_LABS = sorted((ROOT / "topologies").glob("*/mutants/*/compose.yaml"))
LAB_CASES = [(m.parent, suite, expected) for m in MUTANT_LABS for suite, expected in suites(m)]


@pytest.mark.parametrize("folder,suite,expected", LAB_CASES,
                         ids=[f"{f.parents[1].name}/{f.name}-{Path(s).stem}" for f, s, _ in LAB_CASES])
def test_suite_catches_mutant_lab(folder, suite, expected):
    assert expected, f"{folder} names no expected failure for {suite}"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", suite, "-q", "-p", "no:cacheprovider", "--tb=line",
         "--topology", str(folder)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, f"the suite did not fail on {folder.name} (exit {proc.returncode}):\n{output[-3000:]}"
    missing = [e for e in expected if e not in output]
    assert not missing, f"{folder.name}: the failures do not name {missing}:\n{output[-3000:]}"
