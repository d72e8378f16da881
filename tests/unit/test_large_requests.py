"""Agent requests of any size travel on the call's stdin, never as a command-line argument
(Linux caps one argument at 128 KiB: a 41-node lab's matrix request is over it)."""

import errno
import random
import subprocess

import pytest
import testinfra

from labwarden.probe import Transport, _call_agent, encode
from labwarden.probe.bound import run_bounded
from labwarden.probe.ship import agent_zipapp
from labwarden.realise.ssh import connect

ARG_MAX_ONE = 128 * 1024  # MAX_ARG_STRLEN


def big_request() -> dict:
    """A request whose encoding is over 128 KiB: random addresses do not compress."""
    rng = random.Random(14)
    allowed = [f"10.{rng.randrange(100, 104)}.{rng.randrange(256)}.{rng.randrange(256)}/32" for _ in range(40_000)]
    return {"timeout": 0.2, "allowed": allowed, "nodes": {}}


def test_the_request_is_over_what_one_argument_may_hold():
    encoded = encode(big_request())
    assert len(encoded) > ARG_MAX_ONE
    with pytest.raises(OSError) as err:  # the way requests travelled before: refused by the kernel
        subprocess.run(["true", encoded])
    assert err.value.errno == errno.E2BIG


def test_run_bounded_writes_stdin_of_any_size():
    data = b"x" * (3 * ARG_MAX_ONE)
    host = testinfra.get_host("local://")
    assert run_bounded(host, 10.0, "local://x", "wc -c", stdin=data).stdout.strip() == str(len(data))


@pytest.mark.parametrize("spec", ["docker-less testinfra local://", "live mode's local://"])
def test_the_agent_answers_a_request_over_128_kib(spec):
    """The real zipapp, through testinfra's local backend and through live mode's bounded one."""
    host = testinfra.get_host("local://") if spec.startswith("docker-less") else connect("local://").host
    answer = _call_agent(Transport(host, None, str(agent_zipapp())), big_request())
    assert answer["nodes"] == {} and "error" not in answer


def test_docker_exec_gets_i_when_a_request_goes_on_stdin():
    host = testinfra.get_host("docker://prober")
    ran = []

    def run_local(command, *args):
        ran.append(host.backend.quote(command, *args))
        return host.backend.result(0, b"", b"{}", b"")
    host.backend.run_local = run_local
    run_bounded(host, 5.0, "docker://prober", "python3 %s -", "/opt/agent.pyz", stdin=b"REQUEST")
    run_bounded(host, 5.0, "docker://prober", "nft --version")
    assert ran == ["docker exec -i prober /bin/sh -c 'python3 /opt/agent.pyz -'",
                   "docker exec prober /bin/sh -c 'nft --version'"]
