"""An agent call that outlives its batch's bound, through a real `docker exec`: a
ProbeError naming the host, its node and the bound, soon after the bound; the stuck
`docker exec` is killed, and the container answers the next call."""

import secrets
import subprocess
import time
from ipaddress import IPv4Address

import pytest
import testinfra

from labwarden.errors import ProbeError
from labwarden.probe import NodeJob, Probe, Transport, _call_agent
from labwarden.realise.image import ensure_image


@pytest.fixture
def container():
    name = f"labwarden-bound-test-{secrets.token_hex(3)}"
    subprocess.run(["docker", "run", "-d", "--rm", "--name", name, "--network", "none",
                    "--entrypoint", "sleep", ensure_image(lambda m: None), "300"],
                   check=True, capture_output=True, timeout=60)
    try:
        yield name
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)


def test_a_stalled_agent_ends_at_its_bound(container, monkeypatch):
    host = testinfra.get_host(f"docker://{container}")
    assert host.run("printf 'import time\\ntime.sleep(120)\\n' > /tmp/stalled.py").rc == 0
    monkeypatch.setattr("labwarden.probe.agent_bound", lambda request: 3.0)
    transport = Transport(host, None, "/tmp/stalled.py")
    job = NodeJob(probes=[Probe("tcp", IPv4Address("127.0.0.1"), 1)])
    started = time.monotonic()
    with pytest.raises(ProbeError, match=rf"docker://{container} \(node web\) did not answer within 3 s"):
        _call_agent(transport, {"timeout": 1.0, "nodes": {"web": job.request(None)}})
    assert time.monotonic() - started < 10
    execs = subprocess.run(["pgrep", "-f", f"docker exec {container}"], capture_output=True, text=True)
    assert execs.stdout == ""
    assert host.run("echo ok").stdout == "ok\n"
