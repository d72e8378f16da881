"""The lab lock is keyed by address ranges (realise/ranges.py): labs whose subnets overlap
wait for each other, whatever their names; disjoint ones run at once; a holder that died
blocks nobody. No Docker: the locks are files in a private folder of the test's own."""

import fcntl
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from ipaddress import ip_network
from pathlib import Path

import pytest

from labwarden.declared.topology import load_topology
from labwarden.errors import LabError
from labwarden.realise import private
from labwarden.realise.ranges import PREFIX, RangesLock, live_holders, overlapping

ROOT = Path(__file__).resolve().parents[2]
nets = lambda *texts: [ip_network(t) for t in texts]  # noqa: E731


@pytest.fixture(autouse=True)
def tmp(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    return tmp_path


def ranges_of(folder: str):
    return load_topology(ROOT / "topologies" / folder).lab_ranges()


def test_overlap_is_any_shared_address_of_one_family():
    assert overlapping(nets("198.18.0.0/16"), nets("198.18.10.0/24")) == \
        [(ip_network("198.18.0.0/16"), ip_network("198.18.10.0/24"))]
    assert overlapping(nets("198.18.1.0/24", "203.0.113.0/24"), nets("198.18.50.0/24", "198.19.0.0/16")) == []
    assert overlapping(nets("198.18.1.0/24"), nets("2001:db8::/32")) == []
    assert overlapping(nets("2001:db8:1::/48"), nets("2001:db8::/32")) != []


def test_the_shipped_labs_are_keyed_by_their_subnets_not_their_names():
    """A mutant lab folder has the home lab's subnets under another name: it waits for the
    home lab. The three shipped labs share no subnet: they may run at once."""
    homelab, airplane, openwrt = ranges_of("homelab"), ranges_of("airplane"), ranges_of("openwrt-homelab")
    assert overlapping(ranges_of("homelab/mutants/tunnel-on-phone"), homelab)
    assert overlapping(ranges_of("airplane/mutants/slow-uplink"), airplane)
    assert not overlapping(homelab, airplane) and not overlapping(homelab, openwrt) \
        and not overlapping(airplane, openwrt)


def test_overlapping_labs_wait_disjoint_ones_do_not():
    with RangesLock(ranges_of("homelab"), "lab lw-homelab-aaaaaa") as home:
        home.acquire(0)
        with pytest.raises(LabError, match=r"lab lw-tunnel-on-phone-bbbbbb: its address ranges are still in use "
                                           r"after 0 s by lab lw-homelab-aaaaaa \(203\.0\.113\.0/24, 198\.18\.10\.0/24, "
                                           r"198\.18\.1\.0/24, 198\.18\.20\.0/24\); Docker cannot hold"):
            RangesLock(ranges_of("homelab/mutants/tunnel-on-phone"), "lab lw-tunnel-on-phone-bbbbbb").acquire(0)
        with RangesLock(ranges_of("airplane"), "lab lw-airplane-cccccc") as plane:
            plane.acquire(0)  # disjoint: at once
            assert sorted(h.label for h in live_holders()) == ["lab lw-airplane-cccccc", "lab lw-homelab-aaaaaa"]
    assert live_holders() == []
    assert [p.name for p in private.folder().iterdir()] == ["ranges.lock"]  # every claim removed


def test_a_waiting_lab_starts_when_the_holder_releases():
    holder = RangesLock(nets("10.200.0.0/16"), "lab first")
    holder.acquire(0)
    threading.Timer(0.8, holder.release).start()
    said = []
    started = time.monotonic()
    with RangesLock(nets("10.200.3.0/24"), "lab second") as second:
        second.acquire(10, said.append)
        waited = time.monotonic() - started
        assert [h.label for h in live_holders()] == ["lab second"]
    assert 0.7 < waited < 5
    assert said == ["labwarden: lab second: waiting for lab first (10.200.0.0/16 overlaps 10.200.3.0/24)"]


def test_a_holder_that_was_killed_blocks_nobody():
    """SIGKILL: no release ran, the claim's file stays, but its flock went with the process."""
    code = ("import sys, time, ipaddress; from labwarden.realise.ranges import RangesLock; "
            "lock = RangesLock([ipaddress.ip_network('10.201.0.0/16')], 'lab killed'); lock.acquire(0); "
            "print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(tempfile.gettempdir())})
    try:
        assert proc.stdout.readline().strip() == "held"
        assert [h.label for h in live_holders()] == ["lab killed"]
        with pytest.raises(LabError, match="in use after 0 s by lab killed"):
            RangesLock(nets("10.201.1.0/24"), "lab next").acquire(0)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(list(private.folder().glob(f"{PREFIX}*"))) == 1  # left behind
    with RangesLock(nets("10.201.1.0/24"), "lab next") as lock:
        lock.acquire(0)
        assert [h.label for h in live_holders()] == ["lab next"]


def test_a_claim_names_its_lab_and_ranges_and_release_is_idempotent():
    lock = RangesLock(nets("10.202.0.0/24", "2001:db8:202::/48"), "lab lw-x-1/../odd name")
    lock.acquire(0)
    claim, = private.folder().glob(f"{PREFIX}*")
    assert claim.name.startswith("ranges-lab_lw-x-1_.._odd_name-")  # no path in a file name
    assert claim.read_text() == "lab lw-x-1/../odd name\n10.202.0.0/24\n2001:db8:202::/48\n"
    assert claim.stat().st_mode & 0o777 == 0o600
    lock.release()
    lock.release()
    assert not claim.exists()


def test_a_lab_is_also_held_by_name_for_older_runs():
    """An older labwarden on this machine keys the lock by topology name only: hold that too."""
    with RangesLock(nets("10.203.0.0/24"), "lab lw-homelab-aaaaaa", "homelab") as lock:
        lock.acquire(0)
        older = private.open_lock("topology-homelab.lock")
        with pytest.raises(BlockingIOError):
            fcntl.flock(older, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(LabError, match="in use after 0 s by a run of topology homelab;"):
            RangesLock(nets("10.204.0.0/24"), "lab lw-homelab-bbbbbb", "homelab").acquire(0)
    fcntl.flock(older, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released with the ranges
    older.close()
