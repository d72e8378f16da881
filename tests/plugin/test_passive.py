"""Installed, labwarden must not change pytest runs that do not use it (labwarden.plugin.passive).

Each run is a pytest of its own in an empty folder. A run that uses labwarden writes its
reports: tests/plugin/test_reporting.py (found by the fixtures it uses, no --lw- option).
"""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNRELATED = "def test_one():\n    assert 1 + 1 == 2\n"
USES_POLICY = "def test_policy(labwarden_policy):\n    assert labwarden_policy.router\n"


def pytest_in(folder, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=folder, capture_output=True, text=True, timeout=180)


def files(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if "__pycache__" not in p.parts)


def test_an_unrelated_run_writes_nothing_and_says_nothing(tmp_path):
    (tmp_path / "test_x.py").write_text(UNRELATED)
    proc = pytest_in(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert files(tmp_path) == ["test_x.py"]  # no reports/junit.xml, labwarden.json, labwarden.html
    said = [line for line in (proc.stdout + proc.stderr).splitlines()
            if "labwarden" in line and not line.startswith("plugins: ")]  # pytest's own list names it
    assert not said, said


def test_an_unrelated_run_loads_no_lab(tmp_path):
    """A broken homelab where labwarden would look for it: an unrelated run never reads it."""
    (tmp_path / "topologies" / "homelab").mkdir(parents=True)
    (tmp_path / "topologies" / "homelab" / "policy.yaml").write_text("not: [a policy\n")
    (tmp_path / "test_x.py").write_text(UNRELATED)
    proc = pytest_in(tmp_path, "test_x.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # ... and the same folder with a test that uses labwarden: the broken lab ends the run, once
    (tmp_path / "test_y.py").write_text(USES_POLICY)
    proc = pytest_in(tmp_path)
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    assert proc.stderr.count("labwarden: ") == 1 and "labwarden: topologies/homelab" in proc.stderr, proc.stderr
    assert not (tmp_path / "reports").exists()


def test_the_users_own_junitxml_is_kept(tmp_path):
    (tmp_path / "test_x.py").write_text(UNRELATED)
    proc = pytest_in(tmp_path, "--junitxml", "mine.xml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert files(tmp_path) == ["mine.xml", "test_x.py"]


def test_a_deselected_labwarden_test_does_not_count(tmp_path):
    (tmp_path / "test_x.py").write_text(UNRELATED)
    (tmp_path / "test_y.py").write_text(USES_POLICY)
    proc = pytest_in(tmp_path, "-k", "test_one")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert files(tmp_path) == ["test_x.py", "test_y.py"]


@pytest.mark.parametrize("how", ["fixture", "marker", "option"])
def test_a_run_that_uses_labwarden_writes_its_reports(tmp_path, how):
    """Through a fixture of labwarden's (via one of the user's own), its `lab` marker, or a --lw- option."""
    tests = {
        "fixture": textwrap.dedent("""
            import pytest

            @pytest.fixture
            def router(labwarden_topology, labwarden_policy):
                return labwarden_topology.nodes[labwarden_policy.router]

            def test_router(router):
                assert router.name
        """),
        "marker": "import pytest\n\n@pytest.mark.lab\ndef test_one():\n    pass\n",
        "option": UNRELATED,
    }
    (tmp_path / "test_x.py").write_text(tests[how])
    proc = pytest_in(tmp_path, *(["--lw-probe-timeout", "2"] if how == "option" else []))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == \
        ["junit.xml", "labwarden.html", "labwarden.json"]
    assert "labwarden report: " in proc.stdout


def test_help_needs_no_lab(tmp_path):
    (tmp_path / "topologies" / "homelab").mkdir(parents=True)
    (tmp_path / "topologies" / "homelab" / "policy.yaml").write_text("not: [a policy\n")
    proc = pytest_in(tmp_path, "--help")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "--lw-topology=NAME|PATH" in proc.stdout and "--lw-inventory=PATH" in proc.stdout
    assert files(tmp_path) == ["topologies", "topologies/homelab", "topologies/homelab/policy.yaml"]


@pytest.mark.parametrize("uses", [False, True], ids=["unrelated", "uses-labwarden"])
def test_on_xdist_workers_the_controller_learns_whether_labwarden_took_part(tmp_path, uses):
    """The controller collects nothing (its workers do): an unrelated `-n 2` run writes
    nothing, one that uses labwarden's fixtures writes the reports (labwarden.plugin.workers)."""
    pytest.importorskip("xdist", reason="pytest-xdist is in the dev extra")
    (tmp_path / "test_x.py").write_text(UNRELATED)
    if uses:  # no lab is started: the policy alone is needed (the shipped topologies, linked in)
        (tmp_path / "test_y.py").write_text(USES_POLICY)
        (tmp_path / "topologies").symlink_to(ROOT / "topologies", target_is_directory=True)
    proc = pytest_in(tmp_path, "-n", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if uses:
        assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["junit.xml", "labwarden.html",
                                                                           "labwarden.json"]
    else:
        assert files(tmp_path) == ["test_x.py"]
