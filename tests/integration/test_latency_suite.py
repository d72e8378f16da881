"""suites/latency as a user runs it: with a budget tighter than the lab's link it fails, naming
the path, the budget and the figure. And the relays end with their lab."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from labwarden.realise.compose import ComposeLab
from labwarden.declared.lab import load_lab

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "tests" / "integration" / "latency_lab"


def run_suite(topology: Path, report_dir: Path):
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "suites/latency",
                           "--lw-topology", str(topology), "--lw-report-dir", str(report_dir), "-q"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_a_budget_tighter_than_the_profile_fails(tmp_path):
    lab = tmp_path / "latency_lab"  # the same name: runs of this lab take turns
    shutil.copytree(LAB, lab)
    policy = (lab / "policy.yaml").read_text().split("budgets:")[0]
    (lab / "policy.yaml").write_text(policy + "budgets:\n  laptop -> server tcp/80: [p95 < 20 ms]\n")
    done = run_suite(lab, tmp_path / "reports")
    assert done.returncode == 1, done.stdout[-3000:]
    assert "FAILED suites/latency/test_budgets.py::test_budget[cabin/laptop -> uplink/server tcp/80]" in done.stdout
    assert "cabin/laptop -> uplink/server tcp/80: budget 'p95 < 20 ms' broken: measured p95 1" in done.stdout
    # the emulation itself and the route are fine: only the budget fails
    assert "1 failed" in done.stdout and "traceroute cabin/laptop -> 198.18.72.10 (tcp/80)" in done.stdout
    header = json.loads((tmp_path / "reports" / "labwarden.json").read_text())["header"]
    assert header["impairment"]["links"][0]["link"] == "sky" and header["impairment"]["reason"]


def test_the_relay_goes_with_the_lab():
    instance = ComposeLab(*load_lab(LAB), log=lambda *a: None)
    with instance:
        if instance.impairment.method != "delayline":
            pytest.skip("netem carries the links here")
        pid = instance.impairment.readback["sat"]["pid"]
        os.kill(pid, 0)  # running (the prober shares the host's pid namespace)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
