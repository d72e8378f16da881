"""labwarden installed next to pytest-ansible, in a fresh venv: nothing of labwarden's clashes,
and a run that does not use it is left alone (labwarden.plugin.passive).

The venv (a copy of this checkout, not editable, and pytest-ansible from PyPI) is made
once per session: about 1.5 min. The one clash left is between pytest-testinfra, which labwarden
needs for its backends, and pytest-ansible: both register `--ansible-inventory`
(pytest-dev/pytest-testinfra#58, ansible/pytest-ansible#509). labwarden does not use
testinfra's pytest plugin, so `-p no:pytest11.testinfra` (README) settles it.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NO_TESTINFRA = "-p no:pytest11.testinfra"


@pytest.fixture(scope="session")
def venv(tmp_path_factory) -> Path:
    fresh = tmp_path_factory.mktemp("fresh")
    folder, source = fresh / "venv", fresh / "labwarden"
    # a copy: pip builds in the source tree (build/, *.egg-info), which is not this test's to write
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "build", "reports", "*.egg-info", "__pycache__", ".hypothesis", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, timeout=120)
    pip = subprocess.run([str(folder / "bin" / "python"), "-m", "pip", "install", "-q",
                          "--disable-pip-version-check", str(source), "pytest-ansible"],
                         capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stdout[-2000:] + pip.stderr[-2000:]
    return folder


def pytest_in(venv, folder, *args, addopts="") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "VIRTUAL_ENV"))}
    env["PYTEST_ADDOPTS"] = addopts
    return subprocess.run([str(venv / "bin" / "python"), "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def test_help_shows_both_plugins_options(venv, tmp_path):
    proc = pytest_in(venv, tmp_path, "--help", addopts=NO_TESTINFRA)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "--lw-inventory=PATH" in proc.stdout  # ours
    assert "--inventory" in proc.stdout.replace("--lw-inventory", "")  # pytest-ansible's


def test_the_one_clash_left_is_testinfras(venv, tmp_path):
    """When this fails because pytest still starts, testinfra or pytest-ansible fixed it:
    drop the advice from the README."""
    proc = pytest_in(venv, tmp_path, "--help")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    clash = [line for line in output.splitlines() if "conflicting option string" in line]
    assert clash and all("--ansible-inventory" in line and "--lw-" not in line for line in clash), output[-3000:]


def test_an_unrelated_run_writes_nothing(venv, tmp_path):
    (tmp_path / "test_x.py").write_text("def test_one():\n    assert True\n")
    proc = pytest_in(venv, tmp_path, addopts=NO_TESTINFRA)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "1 passed" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == ["test_x.py"]


def test_a_run_that_uses_labwarden_still_reports(venv, tmp_path):
    (tmp_path / "test_x.py").write_text("def test_policy(labwarden_policy):\n    assert labwarden_policy.router\n")
    # one argument: a path given alone would make pytest take this checkout as the rootdir
    proc = pytest_in(venv, tmp_path, f"--lw-topology={ROOT / 'topologies' / 'homelab'}", addopts=NO_TESTINFRA)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["junit.xml", "labwarden.html", "labwarden.json"]
