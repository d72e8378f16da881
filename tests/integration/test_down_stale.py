"""`labwarden down --topology T --stale` (CI's clean-up on a shared runner) removes what a
killed run of T left, and nothing a live run of T is using: a live run holds T's lock.

The "labs" here are bare Docker networks labelled as a run of a topology of this test's
own (`wfstale`: no shipped topology, no other run), with Docker's own choice of subnet."""

import fcntl
import secrets
from types import SimpleNamespace

import docker
import pytest

from labwarden.realise.cleanup import PROJECT_LABEL, down_stale, labwarden_projects, topology_lock

TOPOLOGY = SimpleNamespace(name="wfstale")  # down_stale needs only the name


@pytest.fixture
def client():
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as err:
        pytest.skip(f"no Docker engine: {err}")
    made = []

    def lab(project: str) -> str:
        net = client.networks.create(f"{project}_seg", labels={PROJECT_LABEL: project})
        made.append(net)
        return project

    client.lab = lab
    yield client
    for net in made:  # whatever the test left
        try:
            net.remove()
        except docker.errors.NotFound:
            pass


def test_a_killed_runs_lab_is_removed_and_nothing_else(client):
    stale = client.lab(f"lw-wfstale-{secrets.token_hex(3)}")
    kept = client.lab("lw-wfstale-kept")
    other = client.lab(f"lw-wfstale-x-{secrets.token_hex(3)}")  # topology `wfstale-x`, not ours
    assert down_stale(TOPOLOGY) == [stale]
    left = labwarden_projects(client)
    assert stale not in left and kept in left and other in left


def test_a_live_runs_lab_is_left_alone(client):
    live = client.lab(f"lw-wfstale-{secrets.token_hex(3)}")
    with topology_lock(TOPOLOGY.name) as lock:  # as ComposeLab.up() holds it until down()
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert down_stale(TOPOLOGY) is None
        assert live in labwarden_projects(client)
    assert down_stale(TOPOLOGY) == [live]  # once that run is gone (killed: the lock with it)
