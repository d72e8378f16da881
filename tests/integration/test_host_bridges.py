"""The host's side of a dual-stack lab's bridges is silenced (realise/ipv6.py), and
test_no_leak's IPv6 check fails without it.

The homelab comes up as usual (its bridges silenced); a conftest beside a copy of
test_no_leak.py then turns IPv6 back on for the host's side of every lab bridge through
the same prober path (`ipv6.set_host_ipv6`), as Docker leaves them, and waits for their
link-local addresses. test_nothing_outside_answers_ipv6 must then fail naming a host
link-local address that answered; in an ordinary run (silenced) it passes.
"""

import shutil
import subprocess
import sys
from pathlib import Path

from test_failed_controls import outcomes

ROOT = Path(__file__).resolve().parents[2]
CONFTEST = '''
import json
import subprocess
import time

import pytest

from labwarden.realise import ipv6


@pytest.fixture(scope="session")
def lab(lab):
    """The lab, with IPv6 back on at the host's side of its bridges (as Docker leaves them)."""
    names = ipv6.bridges(lab)
    on, done = ipv6.set_host_ipv6(lab, names, disabled=False)
    assert on == names, done.stderr
    for _ in range(50):  # the kernel gives each its link-local again (after DAD)
        out = subprocess.run(["ip", "-j", "-6", "addr"], capture_output=True, text=True).stdout
        ready = {l["ifname"] for l in json.loads(out or "[]") for a in l.get("addr_info", [])
                 if a.get("scope") == "link" and not a.get("tentative")}
        if set(names) <= ready:
            break
        time.sleep(0.1)
    return lab
'''


def test_no_leak_fails_when_a_host_bridge_keeps_ipv6(tmp_path):
    (tmp_path / "suites" / "isolation").mkdir(parents=True)
    shutil.copy(ROOT / "suites" / "isolation" / "test_no_leak.py", tmp_path / "suites" / "isolation")
    for name in ("conftest.py", "__init__.py"):
        if (ROOT / "suites" / "isolation" / name).exists():
            shutil.copy(ROOT / "suites" / "isolation" / name, tmp_path / "suites" / "isolation")
    (tmp_path / "conftest.py").write_text(CONFTEST)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "suites/isolation/test_no_leak.py", "-q", "-p", "no:cacheprovider",
         "--tb=line", "--rootdir", str(tmp_path), "--lw-topology", str(ROOT / "topologies" / "homelab"),
         "--lw-report-dir", str(tmp_path / "report"), "--junitxml", str(tmp_path / "junit.xml")],
        cwd=tmp_path, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    results = outcomes(tmp_path / "junit.xml")
    outcome, message = results["test_no_leak.py::test_nothing_outside_answers_ipv6"]
    assert outcome == "failed", (outcome, message[-2000:])
    assert "IPv6 addresses outside the lab answered" in message and "fe80::" in message, message[-2000:]
    assert results["test_no_leak.py::test_nothing_outside_answers"][0] == "passed"  # IPv4 is not touched
