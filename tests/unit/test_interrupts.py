"""Interrupts: teardown runs to its end, late creations are swept, the CLI's exit codes."""

import os
import signal
import subprocess
import sys
import time

import pytest

from labwarden import cli
from labwarden.realise import cleanup, compose
from labwarden.realise.cleanup import interrupts_deferred, remove_project
from labwarden.realise.ranges import RangesLock


def test_a_signal_during_teardown_waits_for_its_end():
    old = signal.signal(signal.SIGTERM, signal.default_int_handler)
    done = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with interrupts_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.1)  # a handler would have raised here
                done.append("all of it")
        assert done == ["all of it"]
        assert signal.getsignal(signal.SIGTERM) is signal.default_int_handler
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, old)


class LateEngine:
    """A Docker API whose container from a killed `compose up` appears after the first listing."""

    def __init__(self):
        self.listings, self.removed = 0, []
        self.api = self

    def containers(self, all, filters):
        self.listings += 1
        return [{"Id": "late", "Names": ["/late"]}] if self.listings == 2 else []

    def networks(self, filters):
        return [{"Id": "n1", "Name": "net"}] if self.listings == 1 else []

    def volumes(self, filters):
        return {"Volumes": None}

    def remove_container(self, cid, force):
        self.removed.append(cid)

    def remove_network(self, nid):
        self.removed.append(nid)


def test_what_lands_after_a_pass_is_removed_too(tmp_path, monkeypatch):
    monkeypatch.setattr(cleanup, "override_file", lambda project: tmp_path / f"{project}.override.yaml")
    engine = LateEngine()
    remove_project(engine, "lw-x-abcdef")
    assert engine.removed == ["n1", "late"]
    assert engine.listings == 3  # the last listing found nothing: done


@pytest.mark.parametrize("command", ["matrix --topology airplane", "diff --topology airplane --before HEAD",
                                     "up --topology airplane", "status"])
def test_docker_unreachable_is_exit_2_in_one_line(command):
    proc = subprocess.run([sys.executable, "-m", "labwarden.cli", *command.split()], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, DOCKER_HOST="unix:///nonexistent"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("labwarden: cannot reach the Docker engine")


@pytest.mark.parametrize("error,code,one_line", [
    (subprocess.TimeoutExpired(["docker", "compose", "up"], 300), 2, True),  # a hung engine
    (FileNotFoundError(2, "No such file or directory", "docker"), 2, True),  # no docker CLI
    (RuntimeError("a bug"), 2, False),    # its traceback, but never "the policy is violated" (1)
    (KeyboardInterrupt(), 130, True),
])
def test_exit_codes(monkeypatch, capsys, error, code, one_line):
    def fail(args):
        raise error
    monkeypatch.setattr(cli, "cmd_status", fail)
    assert cli.main(["status"]) == code
    err = capsys.readouterr().err
    assert err.startswith("labwarden: ") == one_line and (err.count("\n") == 1) == one_line, err


def test_a_kept_lab_found_running_is_not_removed_by_a_run_that_used_it(monkeypatch, tmp_path):
    """`labwarden matrix` on a kept lab, interrupted while attaching to it: the lab stays."""
    removed = []
    monkeypatch.setattr(compose, "remove_project", lambda client, project: removed.append(project))
    lab = object.__new__(compose.ComposeLab)
    lab.__dict__.update(_attached=True, _interrupted_compose=False, _ranges=RangesLock([], "lab"), _client=None,
                        project="lw-homelab-kept", _override=tmp_path / "none.yaml", attach=False)
    lab.down()
    assert removed == []
    lab.__dict__.update(_attached=False, attach=True)  # another's lab, whose attaching failed early
    lab.down()
    assert removed == []
    lab.attach = False
    lab.down()
    assert removed == ["lw-homelab-kept"]
