"""The plugin as a user meets it: bad input stops the run before anything
starts, and neither a failure nor Ctrl-C leaves anything behind."""

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest

from labwarden.declared.mutants import Expected, outcomes, unmet

ROOT = Path(__file__).resolve().parents[2]


def lab_leftovers(client, topology: str) -> list[str]:
    prefix = f"lw-{topology}-"
    # filtered by the engine: listing every container inspects each, and another run's may be
    # gone by then (404)
    names = [c.name for c in client.containers.list(all=True, filters={"name": prefix})
             if c.name.startswith(prefix)]
    return names + [n.name for n in client.networks.list() if n.name.startswith(prefix)]


def run_pytest(*args, **kw):
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture
def broken_lab(tmp_path):
    """A copy of the home lab whose policy names a zone that does not exist."""
    lab = tmp_path / "brokenlab"
    shutil.copytree(ROOT / "topologies" / "homelab", lab)
    policy = lab / "policy.yaml"
    policy.write_text(policy.read_text().replace("from: personal, to: servers", "from: guests, to: servers", 1))
    return lab


def test_bad_policy_stops_before_anything_starts(broken_lab):
    proc = run_pytest("suites/isolation", "--lw-topology", str(broken_lab))
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert f"{broken_lab}/policy.yaml: allow[0].from: unknown zone 'guests'" in proc.stderr, proc.stderr
    assert not lab_leftovers(docker.from_env(), "brokenlab")


def test_missing_router_config_is_named(tmp_path):
    proc = run_pytest("suites/isolation", "--lw-router-config", str(tmp_path / "nope.nft"))
    assert proc.returncode == 4
    assert "--lw-router-config: no such file" in proc.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_tears_the_lab_down(tmp_path, sig):
    """The home lab under a name of its own (other runs of the home lab on this engine are
    not it; it waits for their subnets, the same, on its own: labwarden.realise.ranges).
    SIGTERM (a CI runner cancelling the job) unwinds the same way."""
    client = docker.from_env()
    lab = tmp_path / "ctrlc"
    shutil.copytree(ROOT / "topologies" / "homelab", lab)
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                             "suites/isolation/test_matrix.py", "--lw-topology", str(lab)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300  # another run of the home lab may hold its subnets meanwhile
        while not any(c.name.endswith("labwarden-prober-1") and c.name.startswith("lw-ctrlc-")
                      for c in client.containers.list(filters={"name": "lw-ctrlc-"})):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("the lab never came up:\n" + proc.communicate()[0][-3000:])
            time.sleep(0.2)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "KeyboardInterrupt" in out, out[-2000:]
    assert not lab_leftovers(client, "ctrlc"), out[-2000:]


def test_attach_is_refused_with_keep_lab():
    proc = run_pytest("suites/isolation/test_matrix.py", "--lw-attach", "lw-homelab-abc123", "--lw-keep-lab")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "--lw-attach: lw-homelab-abc123: a lab attached to is another run's: it cannot be kept" in proc.stderr


def test_attaching_to_no_lab_is_an_error_never_a_catch(tmp_path):
    """A mutant's run on a shared lab that is not there errors (and stops): nothing is caught."""
    junit = tmp_path / "junit.xml"
    proc = run_pytest("suites/isolation/test_matrix.py", "--lw-attach", "lw-homelab-000000", "--tb=line",
                      "--lw-report-dir", str(tmp_path), "--junitxml", str(junit))
    assert proc.returncode == 2, proc.stdout + proc.stderr  # interrupted: the lab could not start
    assert "no lab lw-homelab-000000 of topology homelab runs on this Docker engine to attach to" in proc.stdout
    seen = outcomes(junit)
    assert {o.state for o in seen.values()} == {"error"}, seen
    cell = "suites/isolation/test_matrix.py::test_cell[servers/web -> personal/laptop tcp/22]"
    assert unmet((Expected(cell, ("expected filtered",)),), seen)
