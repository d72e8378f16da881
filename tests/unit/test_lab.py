"""The Lab protocol with no Docker: both labs implement all of it, a lab is started with its
tunnels waited for (one that stays down is logged, not fatal), and clean-up is idempotent."""

import tempfile
from pathlib import Path

import docker
import pytest

from labwarden.checks import tunnel
from labwarden.declared.lab import load_lab
from labwarden.errors import LabError, ProbeError
from labwarden.realise import cleanup, private
from labwarden.realise.compose import ComposeLab
from labwarden.realise.impair import Impairment
from labwarden.realise.lab import Lab
from labwarden.realise.live import LiveLab

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kind", [ComposeLab, LiveLab])
def test_every_lab_implements_the_whole_protocol(kind):
    assert issubclass(kind, Lab) and not kind.__abstractmethods__


class StartedLab(Lab):
    """A lab that only records being started and stopped."""

    def __init__(self):
        self.topology, self.policy = load_lab(ROOT / "topologies" / "homelab")
        self.project, self.transports, self.timings = "fake", {}, {}
        self.impairment = Impairment([])
        self.logged, self.events = [], []
        self.log = self.logged.append

    def up(self):
        self.events.append("up")
        return self

    def down(self):
        self.events.append("down")

    def router_firewall(self):
        return None

    def router_kind(self):
        return None

    def allowed_ranges(self, extra=()):
        return []

    async def run(self, jobs, timeout=1.0, allow_extra=()):
        raise AssertionError("not sent: the tunnel checks are scripted here")

    def mac(self, node, segment):
        return "02:00:00:00:00:01"

    def exec(self, node, *argv):
        raise AssertionError("not run")


def test_start_waits_for_the_tunnels_and_logs_one_that_stays_down(monkeypatch):
    asked = []

    async def status(lab, policy, t, src, timeout=1.0, read_s=tunnel.READ_S):
        asked.append(src)
        return tunnel.PageCheck(t, src, None, None, None, "tunnel down", "the edge refused")

    monkeypatch.setattr(tunnel, "status", status)
    monkeypatch.setattr(tunnel, "TUNNELS_WITHIN_S", 0.3)
    lab = StartedLab()
    assert tunnel.start(lab) is lab
    assert lab.events == ["up"] and len(asked) >= 2 and set(asked) == {"visitor"}  # asked again until the deadline
    assert lab.logged == ["labwarden: lab fake: tunnels not up after 0 s: laptop page: tunnel down (the edge refused)"]


def test_start_stops_asking_once_the_tunnels_are_up(monkeypatch):
    states = iter(["tunnel down", "up"])

    async def status(lab, policy, t, src, timeout=1.0, read_s=tunnel.READ_S):
        return tunnel.PageCheck(t, src, None, None, None, next(states), "")

    monkeypatch.setattr(tunnel, "status", status)
    lab = tunnel.start(StartedLab())
    assert lab.events == ["up"] and lab.logged == []


def test_a_lab_whose_tunnel_check_breaks_is_taken_down(monkeypatch):
    async def status(*args, **kw):
        raise ProbeError("the agent crashed")

    monkeypatch.setattr(tunnel, "status", status)
    lab = StartedLab()
    with pytest.raises(ProbeError, match="the agent crashed"):
        tunnel.start(lab)
    assert lab.events == ["up", "down"]


class FakeEngine:
    """docker.APIClient's few calls clean-up makes; `gone` ids/names were removed meanwhile."""

    def __init__(self, project, gone=(), busy=()):
        label = {cleanup.PROJECT_LABEL: project}
        self.objects = {"containers": [{"Id": "tunnel", "Labels": label, "HostConfig": {"NetworkMode": "container:x"}},
                                       {"Id": "web", "Labels": label, "HostConfig": {"NetworkMode": "bridge"}}],
                        "networks": [{"Id": "servers", "Name": f"{project}_servers", "Labels": label}],
                        "volumes": [{"Name": "keys", "Labels": label}]}
        self.gone, self.busy, self.removed = set(gone), set(busy), []

    def _remove(self, kind, key, name):
        if name in self.gone:
            raise docker.errors.NotFound(f"no such {kind}: {name}")
        if name in self.busy:
            raise docker.errors.APIError("409 Conflict", explanation=f"error while removing network: {name} has active endpoints")
        self.removed.append(name)
        self.objects[kind] = [o for o in self.objects[kind] if o[key] != name]

    def _listed(self, kind, filters):
        key, _, value = filters["label"].partition("=")
        return [o for o in self.objects[kind] if key in o["Labels"] and value in ("", o["Labels"][key])]

    def containers(self, all=False, filters=None):
        return self._listed("containers", filters)

    def networks(self, filters=None):
        return self._listed("networks", filters)

    def volumes(self, filters=None):
        return {"Volumes": self._listed("volumes", filters)}

    def remove_container(self, ident, force=False):
        self._remove("containers", "Id", ident)

    def remove_network(self, ident):
        self._remove("networks", "Id", ident)

    def remove_volume(self, name, force=False):
        self._remove("volumes", "Name", name)


class FakeClient:
    def __init__(self, api):
        self.api = api


@pytest.fixture
def tmp_tempdir(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    return tmp_path


def test_a_project_is_removed_namespace_sharers_first_and_removing_it_again_is_no_error(tmp_tempdir):
    cleanup.override_file("lw-homelab-abc123").write_text("services: {}\n")
    client = FakeClient(FakeEngine("lw-homelab-abc123", gone={"keys"}))  # the volume went meanwhile
    cleanup.remove_project(client, "lw-homelab-abc123")
    cleanup.remove_project(client, "lw-homelab-abc123")
    assert client.api.removed == ["tunnel", "web", "servers"]
    assert not cleanup.override_file("lw-homelab-abc123").exists()


def test_down_all_removes_every_labwarden_project_and_stale_override_files(tmp_tempdir, monkeypatch):
    engine = FakeEngine("lw-airplane-kept")
    engine.objects["containers"].append({"Id": "theirs", "Labels": {cleanup.PROJECT_LABEL: "someone-else"},
                                         "HostConfig": {}})
    monkeypatch.setattr(cleanup, "docker_client", lambda: FakeClient(engine))
    stale = cleanup.override_file("lw-homelab-dead00")  # a run killed before its containers started
    stale.write_text("services: {}\n")
    unrelated = private.folder() / "image.lock"
    unrelated.write_text("")
    assert cleanup.down_all() == ["lw-airplane-kept"]
    assert engine.removed == ["tunnel", "web", "servers", "keys"]  # not someone else's container
    assert not stale.exists() and unrelated.exists()
    assert cleanup.down_all() == []  # idempotent


def test_what_docker_refuses_to_remove_is_named_after_everything_else_is_removed(tmp_tempdir):
    client = FakeClient(FakeEngine("lw-homelab-abc123", busy={"servers"}))
    with pytest.raises(LabError) as err:
        cleanup.remove_project(client, "lw-homelab-abc123")
    assert client.api.removed == ["tunnel", "web", "keys"]
    assert str(err.value) == ("lab lw-homelab-abc123: Docker refused to remove network lw-homelab-abc123_servers: "
                              "error while removing network: servers has active endpoints")
