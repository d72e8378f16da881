"""The agent as shipped: one zipapp holding every module of labwarden/agent/, the same bytes
on every build, runnable alone (as live mode pushes it) with latency samples, and the
delay line behind its `delayline` argument. No Docker: the agent probes from here."""

import base64
import json
import socket
import subprocess
import sys
import threading
import zipfile

import pytest

from labwarden.errors import LabError
from labwarden.probe import encode
from labwarden.probe import ship


@pytest.fixture()
def pyz(tmp_path):
    """The zipapp's bytes alone in an empty folder, as live mode leaves it on a host."""
    path = tmp_path / "agent.pyz"
    path.write_bytes(ship.agent_bytes())
    return path


def run(pyz, *args, timeout=30):
    return subprocess.run([sys.executable, str(pyz), *args], capture_output=True, text=True, timeout=timeout)


def test_the_zipapp_holds_every_agent_module_and_the_same_bytes_each_build(pyz):
    names = zipfile.ZipFile(pyz).namelist()
    assert names == sorted(p.name for p in ship.SOURCE.glob("*.py"))
    assert {"__main__.py", "agent.py", "timing.py", "delayline.py", "delayline_setup.py"} <= set(names)
    assert ship.agent_bytes() == pyz.read_bytes()
    assert pyz.read_bytes().startswith(ship.SHEBANG)
    # live mode pushes it base64-encoded over the ssh channel's stdin: keep it small anyway
    assert len(base64.b64encode(pyz.read_bytes())) < 100_000


def test_the_agent_answers_from_the_zipapp_with_latency_samples(pyz):
    """A TCP connect-time sample needs timing.py: the module live mode once left behind."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    accepting = threading.Thread(target=lambda: [server.accept()[0].close() for _ in range(3)], daemon=True)
    accepting.start()
    request = {"timeout": 1.0, "allowed": [], "nodes": {"here": {
        "netns": None, "info": True,
        "latency": [{"id": 0, "kind": "tcp", "dst": "127.0.0.1", "port": port, "count": 3,
                     "interval_s": 0.01, "timeout_s": 2.0}]}}}
    try:
        done = run(pyz, encode(request))
    finally:
        server.close()
    assert done.returncode == 0, done.stderr
    here = json.loads(done.stdout.strip().splitlines()[-1])["nodes"]["here"]
    assert here["error"] is None, here
    assert any(i["name"] == "lo" for i in here["info"]["interfaces"])
    (row,) = here["latency"]
    assert len(row["samples"]) == 3 and all(s is not None for s in row["samples"]), row


def test_the_delay_line_runs_from_the_same_zipapp(pyz):
    done = run(pyz, "delayline")
    assert done.returncode == 2
    assert "usage: agent.pyz delayline start" in json.loads(done.stdout)["error"]
    assert "usage: agent.py REQUEST" in json.loads(run(pyz).stdout)["error"]  # no argument: the agent's


def test_the_built_file_is_kept_under_its_content_hash(tmp_path, monkeypatch):
    monkeypatch.setattr(ship, "CACHE", tmp_path / "labwarden")
    ship.agent_zipapp.cache_clear()
    try:
        path = ship.agent_zipapp()
        assert path.parent == tmp_path / "labwarden" and path.read_bytes() == ship.agent_bytes()
        assert (path.parent.stat().st_mode & 0o777) == 0o700
        path.write_bytes(b"tampered")
        ship.agent_zipapp.cache_clear()
        assert ship.agent_zipapp() == path and path.read_bytes() == ship.agent_bytes()
        (tmp_path / "labwarden").chmod(0o777)
        ship.agent_zipapp.cache_clear()
        with pytest.raises(LabError, match="writable by nobody else"):
            ship.agent_zipapp()
    finally:
        ship.agent_zipapp.cache_clear()
