"""A `labwarden matrix`/`diff` interrupted (SIGINT) or killed (SIGTERM) at any moment
removes its lab: no container, network, volume or override file of the run stays.

The airplane lab under a name of its own (`intr`: other runs of airplane on this engine
are not it); it waits for their subnets, the same, on its own (labwarden.realise.ranges)."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest

from labwarden.realise import private
from labwarden.realise.cleanup import OVERRIDE_SUFFIX, PROJECT_LABEL

ROOT = Path(__file__).resolve().parents[2]
NAME = "intr"


def leftovers(client) -> list[str]:
    mine = lambda labels: (labels or {}).get(PROJECT_LABEL, "").startswith(f"lw-{NAME}-")  # noqa: E731
    found = [c["Names"][0] for c in client.api.containers(all=True, filters={"label": PROJECT_LABEL})
             if mine(c["Labels"])]
    found += [n["Name"] for n in client.api.networks(filters={"label": PROJECT_LABEL}) if mine(n["Labels"])]
    found += [v["Name"] for v in client.api.volumes(filters={"label": PROJECT_LABEL}).get("Volumes") or []
              if mine(v["Labels"])]
    return found + [str(p) for p in private.folder().glob(f"lw-{NAME}-*{OVERRIDE_SUFFIX}")]


def handles_sigterm(pid: int) -> bool:
    """Whether the process catches SIGTERM yet (before, it is still importing: nothing started)."""
    caught = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)))


def started(client, what: str) -> bool:
    """Whether the run got that far: `compose` (something of it exists), `prober` (it runs)."""
    names = [c["Names"][0] for c in client.api.containers(all=True, filters={"label": PROJECT_LABEL})
             if c["Names"][0].startswith(f"/lw-{NAME}-")]
    nets = [n for n in client.api.networks() if n["Name"].startswith(f"lw-{NAME}-")]
    if what == "compose":
        return bool(names or nets)
    return any(n.endswith("labwarden-prober-1") for n in names)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    folder = tmp_path_factory.mktemp("labs") / NAME
    shutil.copytree(ROOT / "topologies" / "airplane", folder)
    return folder


@pytest.mark.parametrize("command,sig,moment,delay,how", [
    ("matrix", signal.SIGTERM, "start", 0.3, "pid"),      # image check, lock, or compose up
    ("matrix", signal.SIGINT, "compose", 0.0, "pid"),     # compose up has created something, not all
    ("matrix", signal.SIGINT, "compose", 0.2, "group"),   # a terminal's Ctrl-C: compose gets it too
    ("matrix", signal.SIGTERM, "compose", 0.3, "pid"),
    ("matrix", signal.SIGINT, "prober", 1.5, "twice"),    # and again 0.5 s later, during teardown
    ("diff", signal.SIGTERM, "prober", 4.0, "pid"),       # probing or loading the after config
])
def test_an_interrupted_run_leaves_nothing(lab, command, sig, moment, delay, how, tmp_path):
    client = docker.from_env()
    assert not leftovers(client), "an earlier run left something"
    extra = ["--before", str(lab / "gateway" / "nftables.conf"), "--report-dir", str(tmp_path)] \
        if command == "diff" else []
    proc = subprocess.Popen([sys.executable, "-m", "labwarden.cli", command, "--topology", str(lab), *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # a group of its own, as a terminal's job
    try:
        deadline = time.monotonic() + 180
        while not handles_sigterm(proc.pid) or moment != "start" and not started(client, moment):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, f"the run never reached {moment}"
            time.sleep(0.05)
        time.sleep(delay)
        assert proc.poll() is None, f"the run ended before the signal: {proc.communicate()}"
        (os.killpg if how == "group" else os.kill)(proc.pid, sig)
        if how == "twice":
            time.sleep(0.5)
            proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out, err[-3000:])
    assert err.rstrip().endswith("labwarden: interrupted"), err[-3000:]
    assert not leftovers(client), err[-3000:]
