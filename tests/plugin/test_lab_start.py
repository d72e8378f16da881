"""A lab that cannot start stops the run once: one error naming the cause and the fix, a
non-zero exit, and a JUnit report that says why. The lab is made unable to start without
breaking the machine: DOCKER_HOST points at a socket that does not exist."""

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
ROOT = Path(__file__).resolve().parents[2]
NO_DOCKER = "unix:///nonexistent/labwarden-test.sock"
CAUSE = f"cannot reach the Docker engine at {NO_DOCKER}"


@pytest.fixture
def no_docker(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", NO_DOCKER)


def test_the_isolation_suite_stops_at_the_first_error(pytester, no_docker):
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest_subprocess(str(ROOT / "suites" / "isolation"), "-p", "no:cacheprovider",
                                           "--lw-topology", str(ROOT / "topologies" / "homelab"),
                                           "--lw-report-dir", str(pytester.path), f"--junitxml={junit}")
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.INTERRUPTED, out[-3000:]
    result.assert_outcomes(errors=1)
    assert "Interrupted: the lab could not start (the error above says why)" in out
    # the cause is told in the error, and again in the short summary, whole where the summary
    # is not cut to the terminal's width (CI=true): never once per test
    assert 1 <= out.count(CAUSE) <= 2 and "systemctl start docker" in out and "Traceback" not in out
    errors = [e.get("message", "") + (e.text or "") for e in ET.parse(junit).iter("error")]
    assert len(errors) == 1 and CAUSE in errors[0], errors


def test_labwarden_commands_print_one_line_and_exit_2(no_docker):
    for argv in (["status"], ["matrix", "--topology", "homelab"]):
        proc = subprocess.run([sys.executable, "-m", "labwarden.cli", *argv], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith(f"labwarden: {CAUSE}") and "Traceback" not in proc.stderr
