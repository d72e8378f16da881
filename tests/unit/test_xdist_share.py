"""pytest-xdist's workers share one lab and one report (labwarden.realise.joined,
labwarden.plugin.workers). No Docker: the lab here is a stand-in that counts its ups and
downs, and the locks are files in the test's own folder (flock is per open file, so two
`Shared` of one process take turns as two processes would)."""

import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from labwarden.plugin.workers import merge
from labwarden.realise.impair import Impairment
from labwarden.realise.joined import STATE, Shared
from labwarden.report.model import Report


class FakeLab:
    def __init__(self, project="lw-homelab-abc123"):
        self.project, self.image, self.keep = project, "labwarden-lab:1", False
        self.impairment = Impairment([], reason="none here")
        self.timings = {"up_s": 3.0}
        self.transports = {"web": SimpleNamespace(pid_start=42)}
        self.containers = {"web": SimpleNamespace(status="running"), "tunnel": SimpleNamespace(status="exited")}
        self.downs = 0

    def down(self):
        self.downs += 1


def test_the_first_brings_the_lab_up_the_others_join_it(tmp_path):
    first, second = Shared(tmp_path), Shared(tmp_path)
    lab = first.enter(FakeLab, lambda state: pytest.fail("nobody ran a lab to join"))
    joined = []
    assert second.enter(lambda: pytest.fail("a second lab was brought up"), joined.append) is None
    assert first.owner and not second.owner
    assert joined == [{"project": "lw-homelab-abc123", "image": "labwarden-lab:1", "impairment": lab.impairment,
                       "timings": {"up_s": 3.0}, "pid_start": {"web": 42}, "resting": ["tunnel"]}]
    second.leave(None)
    first.leave(lab)
    assert lab.downs == 1 and not (tmp_path / STATE).exists()


def test_the_owner_takes_the_lab_down_only_when_the_others_are_done(tmp_path):
    first, second = Shared(tmp_path), Shared(tmp_path)
    lab = first.enter(FakeLab, None)
    second.enter(None, lambda state: state)
    left = threading.Timer(0.6, second.leave, (None,))
    left.start()
    began = time.monotonic()
    first.leave(lab)  # waits for the other
    assert time.monotonic() - began >= 0.5 and lab.downs == 1
    left.join()


def test_a_process_after_the_lab_went_down_brings_it_up_again(tmp_path):
    first = Shared(tmp_path)
    lab = first.enter(FakeLab, None)
    first.leave(lab)
    late = Shared(tmp_path)
    again = late.enter(lambda: FakeLab("lw-homelab-def456"), lambda state: pytest.fail("joined a lab that is down"))
    assert late.owner and again.project == "lw-homelab-def456"
    late.leave(again)


def test_a_joiner_that_dies_blocks_nobody(tmp_path):
    """A killed worker's shared lock goes with it (the kernel drops it)."""
    first = Shared(tmp_path)
    lab = first.enter(FakeLab, None)
    code = ("import sys, os, signal; from labwarden.realise.joined import Shared; "
            f"Shared({str(tmp_path)!r}).enter(None, lambda s: s); print('in', flush=True); "
            "os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout == "in\n", proc.stderr
    first.leave(lab)
    assert lab.downs == 1


def test_a_kept_lab_is_left_running(tmp_path):
    first = Shared(tmp_path)
    lab = first.enter(FakeLab, None)
    lab.keep = True
    first.leave(lab)
    assert lab.downs == 0


def test_an_interrupted_owner_takes_the_lab_down_at_once(tmp_path, monkeypatch):
    first, second = Shared(tmp_path), Shared(tmp_path)
    lab = first.enter(FakeLab, None)
    second.enter(None, lambda state: state)
    monkeypatch.setattr(time, "sleep", lambda s: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        first.leave(lab)
    assert lab.downs == 1 and not (tmp_path / STATE).exists()
    second.leave(None)


def _probe(flow, observed, group="segmentation matrix", address="10.0.0.1"):
    return {"flow": flow, "group": group, "observed": observed, "ok": observed == "filtered",
            "dst_address": address, "service": "tcp/22"}


def _output(probes, judged, sections=(), reprobed=()):
    matrix = {"title": "segmentation matrix", "rows": [], "columns": [], "failed_controls": {},
              "reprobed": list(reprobed), "rate_limited": []}
    return {"active": True, "grids": [], "judged": {"segmentation matrix": judged},
            "report": {"header": {"topology": "homelab", "project": "lw-homelab-1"}, "probes": probes,
                       "matrices": [matrix], "sections": list(sections), "lab": {"name": "homelab"}}}


def test_each_cell_is_recorded_as_the_worker_that_judged_it_saw_it():
    """Each worker probed the whole matrix; the report has every cell once, in the matrix's
    order, each as its judge saw it (here b's second look differs: b judged it)."""
    a = _output([_probe("a", "filtered"), _probe("b", "open"), _probe("b", "open", address="10.0.1.1"),
                 _probe("nat", "open", "nat")], [["a", "10.0.0.1", "tcp/22"]],
                sections=[{"kind": "text", "title": "t", "data": "x"}], reprobed=["b"])
    b = _output([_probe("a", "open"), _probe("b", "filtered"), _probe("b", "filtered", address="10.0.1.1")],
                [["b", "10.0.0.1", "tcp/22"]],
                sections=[{"kind": "text", "title": "t", "data": "x"}, {"kind": "text", "title": "u", "data": "y"}])
    report = Report()
    merge(report, [a, b])
    assert [(p["group"], p["flow"], p["observed"]) for p in report.probes] == [
        ("segmentation matrix", "a", "filtered"), ("segmentation matrix", "b", "filtered"),
        ("segmentation matrix", "b", "open"), ("nat", "nat", "open")]  # b at its other address: a's, judged by nobody
    assert [s["title"] for s in report.sections] == ["t", "u"]
    assert len(report.matrices) == 1 and report.matrices[0]["reprobed"] == ["b"]
    assert report.header["topology"] == "homelab" and report.header["xdist_workers"] == 2
    assert report.lab == {"name": "homelab"}


def test_workers_take_turns_on_the_lab_and_a_workers_own_calls_overlap(tmp_path):
    """Two processes' Turns (two open files: flock tells them apart as it tells processes):
    while one worker's call runs, the other's waits; a second call of the first does not."""
    import asyncio
    import threading
    from labwarden.realise.joined import Turns

    log = []

    class Lab:
        def __init__(self, name):
            self.name = name

        async def run(self, jobs, timeout=1.0, allow_extra=()):
            log.append((self.name, "in"))
            await asyncio.sleep(0.3)
            log.append((self.name, "out"))

        async def run_rounds(self, rounds, timeout=1.0):
            return [await self.run(r) for r in rounds]

    one, two = (Turns(tmp_path / "lab.turns").around(Lab(n)) for n in ("one", "two"))

    async def first():
        await asyncio.gather(one.run({}), one.run({}))  # overlap within the process

    thread = threading.Thread(target=asyncio.run, args=(first(),))
    thread.start()
    while not log:
        pass
    asyncio.run(two.run_rounds([{}]))
    thread.join()
    assert log[:2] == [("one", "in"), ("one", "in")]          # one's own calls overlap
    assert log[4:] == [("two", "in"), ("two", "out")]          # two waited for both
