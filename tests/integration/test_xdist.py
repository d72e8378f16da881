"""`pytest -n 2` (pytest-xdist) on the home lab: the workers share one lab and the
controller writes one report whose cells are a serial run's (issue 14). Two runs of
suites/isolation, one serial and one on two workers, each in a subprocess with its own report
folder; each run's lab waits for the other's subnets (labwarden.realise.ranges)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import docker
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("xdist", reason="pytest-xdist is in the dev extra")


def run_pytest(*args):
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=2400)  # a wait for the subnets (up to 900 s) included


def cells(report: dict) -> dict:
    """Every probe of the report: (group, flow, address, service) -> what was expected and observed,
    and whether that is ok (a flow's label alone can name two probes: a node's two addresses)."""
    return {(p["group"], p["flow"], p["dst_address"], p["service"]): (tuple(p["expected"]), p["observed"], p["ok"])
            for p in report["probes"]}


def junit_cases(path: Path) -> dict:
    root = ET.parse(path).getroot()
    return {f"{c.get('classname')}::{c.get('name')}": [e.tag for e in c if e.tag in ("failure", "error", "skipped")]
            for c in root.iter("testcase")}


def leftovers(client, prefix="lw-homelab-") -> set:
    return {c.name for c in client.containers.list(all=True, filters={"name": prefix}) if c.name.startswith(prefix)}


@pytest.mark.lab
def test_two_workers_report_the_cells_of_a_serial_run(tmp_path):
    client = docker.from_env()
    before = leftovers(client)  # other runs' labs on this engine are not this test's
    began = time.monotonic()
    serial = run_pytest("suites/isolation", "--lw-report-dir", str(tmp_path / "serial"))
    assert serial.returncode == 0, serial.stdout[-3000:] + serial.stderr[-2000:]
    middle = time.monotonic()
    parallel = run_pytest("-n", "2", "suites/isolation", "--lw-report-dir", str(tmp_path / "xdist"))
    assert parallel.returncode == 0, parallel.stdout[-3000:] + parallel.stderr[-2000:]
    # figures for the README (`-s` shows them), never asserted; a wait for another run's lab is in them
    print(f"\nserial {middle - began:.1f} s, -n 2 {time.monotonic() - middle:.1f} s:"
          f"\n{serial.stdout.splitlines()[-1]}\n{parallel.stdout.splitlines()[-1]}")

    one = json.loads((tmp_path / "serial" / "labwarden.json").read_text())
    two = json.loads((tmp_path / "xdist" / "labwarden.json").read_text())
    assert len(cells(one)) == len(one["probes"]) > 2000  # the home lab's matrix, both families
    assert cells(two) == cells(one)
    assert [m["title"] for m in two["matrices"]] == [m["title"] for m in one["matrices"]]
    assert two["header"]["outcome"] == one["header"]["outcome"] and two["header"]["xdist_workers"] == 2
    assert (tmp_path / "xdist" / "labwarden.html").stat().st_size > 0
    assert junit_cases(tmp_path / "xdist" / "junit.xml") == junit_cases(tmp_path / "serial" / "junit.xml")
    assert leftovers(client) <= before


@pytest.mark.lab
@pytest.mark.parametrize("whom, sig", [("group", signal.SIGINT), ("controller", signal.SIGTERM)])
def test_interrupting_two_workers_leaves_nothing_behind(tmp_path, whom, sig):
    """Ctrl-C in a terminal signals the whole process group (controller and workers); a CI
    runner cancelling the job may signal only the controller, which then ends its workers
    (execnet interrupts them). On the airplane lab, under a name of its own: the home lab's
    subnets are the most used on this engine."""
    client = docker.from_env()
    lab = tmp_path / "xdistc"
    shutil.copytree(ROOT / "topologies" / "airplane", lab)
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-n", "2",
                             "suites/isolation/test_matrix.py", "--lw-topology", str(lab),
                             "--lw-report-dir", str(tmp_path / "rep")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 600  # another run of the airplane may hold its subnets meanwhile
        while not any(c.name.endswith("labwarden-prober-1") for c in client.containers.list(filters={"name": "lw-xdistc-"})):
            if proc.poll() is not None or time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail("the lab never came up:\n" + proc.communicate()[0][-3000:])
            time.sleep(0.2)
        if whom == "group":
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not leftovers(client, "lw-xdistc-"), out[-3000:]
    assert not [n.name for n in client.networks.list() if n.name.startswith("lw-xdistc-")], out[-3000:]
