"""Live mode's promises, without hosts: one pace per host for the whole run (fake clock),
ranges the user owns, sweeps of bounded size, host specs checked and masked, known host
keys, bounded commands, sudo for the agent only."""

import asyncio
import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest
import yaml

import labwarden.realise.live as live
from labwarden.checks.latency import TimedJob
from labwarden.declared.hostspec import masked, parse_spec
from labwarden.declared.inventory import load_inventory
from labwarden.declared.lab import load_lab
from labwarden.errors import ConfigError, LabError
from labwarden.probe import NodeAnswer, NodeJob, Observation, Probe, Transport, _call_agent, encode
from labwarden.probe.pace import POLL_S, Pace
from labwarden.realise.live import LiveLab
from labwarden.realise.ssh import BoundedLocal, BoundedSsh, connect

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "topologies" / "homelab" / "live.example.yaml"
WEB = IPv4Address("198.18.10.10")


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    async def sleep(self, seconds):
        self.now += seconds


@pytest.fixture(scope="module")
def lab_files():
    return load_lab(ROOT / "topologies" / "homelab")


def inventory_file(tmp_path, change=None) -> Path:
    doc = yaml.safe_load(EXAMPLE.read_text())
    if change:
        change(doc)
    path = tmp_path / "live.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


# ---------------------------------------------------------------- the pace

def test_a_batch_waits_until_the_tokens_of_the_last_second_are_back():
    clock = FakeClock()
    pace = Pace(100, clock)
    first, _ = pace.try_take({"web": 100})
    assert first is not None
    assert pace.try_take({"web": 1}) == (None, POLL_S)  # its call still runs: look again soon
    clock.now += 0.3
    pace.give_back(first)                               # the call ended: back in one second
    clock.now += 0.5
    ticket, wait = pace.try_take({"web": 1})
    assert ticket is None and wait == pytest.approx(0.5)
    assert pace.try_take({"gpu": 100})[0] is not None   # another host has its own bucket
    clock.now += 0.5
    assert pace.try_take({"web": 100})[0] is not None
    assert pace.peak("web") == 100 and pace.peak() == 100


def test_a_call_on_several_hosts_takes_from_all_buckets_or_none():
    clock = FakeClock()
    pace = Pace(10, clock)
    busy, _ = pace.try_take({"b": 10})
    assert pace.try_take({"a": 5, "b": 1})[0] is None
    assert pace.try_take({"a": 10})[0] is not None  # nothing was taken from a by the refused call


def test_five_back_to_back_and_three_concurrent_calls_keep_the_pace():
    clock = FakeClock()
    pace = Pace(100, clock, clock.sleep)
    starts = []

    async def call():
        ticket = await pace.take({"web": 100})
        starts.append(clock.now)
        clock.now += 0.01                       # the agent call
        pace.give_back(ticket)

    async def main():
        for _ in range(5):
            await call()
        await asyncio.gather(call(), call(), call())
    asyncio.run(main())
    assert all(b - a >= 1.0 for a, b in zip(starts, starts[1:])), starts
    assert starts[4] - starts[0] >= 4.0 and pace.peak("web") == 100


def test_a_batch_bigger_than_the_bucket_waits_for_a_full_bucket():
    clock = FakeClock()
    pace = Pace(100, clock)
    small, _ = pace.try_take({"web": 10})
    pace.give_back(small)
    assert pace.try_take({"web": 150})[0] is None
    clock.now += 1.0
    assert pace.try_take({"web": 150})[0] is not None
    assert pace.peak("web") == 150  # the report says so: a latency spec of 150 samples paces itself


def fake_live(lab_files, tmp_path, max_pps, calls):
    topology, policy = lab_files
    doc = {"ranges": ["198.18.0.0/15", "203.0.113.0/24"], "max_pps": max_pps,
           "nodes": {n: {"host": f"ssh://root@{n}"} for n in topology.nodes}}
    path = tmp_path / "live.yaml"
    path.write_text(yaml.safe_dump(doc))
    lab = LiveLab(topology, policy, load_inventory(path, topology), log=lambda m: None)
    clock = FakeClock()
    lab.pace = Pace(max_pps, clock, clock.sleep)

    async def run_jobs(transports, jobs, allowed, timeout):
        calls.append((clock.now, {n: j.cost() for n, j in jobs.items()}))
        clock.now += 0.05
        return {n: NodeAnswer([Observation("filtered", None, "fake") for _ in j.probes], [], None,
                              {"latency": [{"id": s["id"], "samples": [1.0] * s["count"]}
                                           for s in getattr(j, "latency", [])]})
                for n, j in jobs.items()}
    return lab, run_jobs


def test_live_calls_share_one_pace_per_host(lab_files, tmp_path, monkeypatch):
    calls = []
    lab, fake = fake_live(lab_files, tmp_path, 100, calls)
    monkeypatch.setattr(live, "run_jobs", fake)
    probes = [Probe("tcp", WEB, p) for p in range(1, 101)]

    async def main():
        for _ in range(5):
            await lab.run({"laptop": NodeJob(probes=probes)})
        await asyncio.gather(*(lab.run({"laptop": NodeJob(probes=probes)}) for _ in range(3)))
    asyncio.run(main())
    starts = [c[0] for c in calls]
    assert len(calls) == 8 and all(b - a >= 1.0 for a, b in zip(starts, starts[1:])), starts
    assert lab.peak_pps() == 100


def test_latency_samples_and_traceroutes_count_and_are_spread_over_rounds(lab_files, tmp_path, monkeypatch):
    calls = []
    lab, fake = fake_live(lab_files, tmp_path, 100, calls)
    monkeypatch.setattr(live, "run_jobs", fake)
    job = TimedJob(latency=[{"id": i, "kind": "icmp", "dst": str(WEB), "count": 60, "interval_s": 0.01,
                             "timeout_s": 1.0} for i in range(3)],
                   traceroute=[{"id": 0, "dst": str(WEB), "proto": "icmp", "max_hops": 4, "queries": 3,
                                "timeout_s": 1.0}])
    assert job.cost() == 192
    answers = asyncio.run(lab.run({"laptop": job}))
    assert [c[1] for c in calls] == [{"laptop": 60}, {"laptop": 60}, {"laptop": 72}]
    assert sorted(r["id"] for r in answers["laptop"].raw["latency"]) == [0, 1, 2]
    assert lab.peak_pps() <= 100


# ---------------------------------------------------------------- ranges and sweeps

@pytest.mark.parametrize("ranges, field", [
    (["0.0.0.0/0"], "ranges[0]"),                     # ipaddress calls it is_private (both ends are)
    (["192.168.0.0/15"], "ranges[0]"),                # reaches into 192.169.0.0/16
    (["8.8.8.0/24"], "ranges[0]"),
    ([{"range": "8.8.8.0/24", "public_ok": "yes"}], "ranges[0].public_ok"),
    ([{"range": "8.8.8.0/24", "owned": True}], "ranges[0].owned"),
])
def test_ranges_with_public_address_space_are_refused(lab_files, tmp_path, ranges, field):
    path = inventory_file(tmp_path, lambda d: d.update(ranges=ranges))
    with pytest.raises(ConfigError) as err:
        load_inventory(path, lab_files[0])
    assert err.value.field == field, str(err.value)
    if field == "ranges[0]":
        assert "public address space" in err.value.problem and "public_ok: true" in err.value.problem


def test_public_ranges_the_user_owns_are_declared_one_by_one(lab_files, tmp_path):
    def change(doc):
        doc["ranges"].append({"range": "8.8.8.0/29", "public_ok": True})
    inventory = load_inventory(inventory_file(tmp_path, change), lab_files[0])
    assert str(inventory.ranges[-1]) == "8.8.8.0/29" and str(inventory.ranges[3]) == "203.0.113.0/24"


def test_a_segment_too_big_to_sweep_is_refused_with_its_size(lab_files, tmp_path):
    def change(doc):
        doc["ranges"] = ["10.0.0.0/8", {"range": "203.0.113.0/24", "public_ok": True}]
        doc["segments"]["personal"] = "10.0.0.0/8"
        for node in ("laptop", "phone", "tv"):
            doc["nodes"][node]["addresses"] = {"personal": f"10.0.0.{10 + len(node)}"}
        doc["nodes"]["router"]["addresses"]["personal"] = "10.0.0.1"
    with pytest.raises(ConfigError) as err:
        load_inventory(inventory_file(tmp_path, change), lab_files[0])
    assert err.value.field == "segments.personal"
    assert "16777216 addresses" in err.value.problem and "capped at 4096" in err.value.problem


# ---------------------------------------------------------------- host specs

@pytest.mark.parametrize("spec, problem", [
    ("ssh://-oProxyCommand=touch%20x", "not starting with '-'"),
    ("ssh://admin@-oProxyCommand=x", "not starting with '-'"),
    ("ssh://-x@host", "is not a user name"),
    ("ssh://admin:hunter2@192.168.1.10", "ps shows to every user"),
    ("docker://web", "not docker://"),
    ("ssh://admin@host?ssh_extra_args=-oProxyCommand", "unknown option 'ssh_extra_args'"),
    ("ssh://admin@host:99999", "is not a port number"),
    ("ssh://a:b@c@host", "more than one '@'"),
    ("ssh://admin@host name", "whitespace"),
])
def test_host_specs_are_checked_and_never_shown_with_a_password(spec, problem):
    with pytest.raises(ConfigError) as err:
        parse_spec("live.yaml", "nodes.web.host", spec)
    assert problem in err.value.problem, str(err.value)
    assert "hunter2" not in str(err.value)


def test_masked_hides_passwords_and_nothing_else():
    assert masked("paramiko://admin:hunter2@192.168.1.10:22?sudo=true") == \
        "paramiko://admin:***@192.168.1.10:22?sudo=true"
    assert masked("ssh://admin@192.168.1.10") == "ssh://admin@192.168.1.10"
    assert masked("paramiko://a:p@ss@host") == "paramiko://a:***@host"
    assert parse_spec("f", "w", "paramiko://admin:hunter2@192.168.1.10").host == "192.168.1.10"
    assert parse_spec("f", "w", "ssh://admin@[fd00::1]:2222?sudo=true").host == "fd00::1"


def test_a_node_opts_out_of_host_key_checking_by_name(lab_files, tmp_path):
    def change(doc):
        doc["nodes"]["visitor"]["check_host_key"] = False
    inventory = load_inventory(inventory_file(tmp_path, change), lab_files[0])
    assert inventory.unchecked_host_keys == ("visitor",)
    with pytest.raises(ConfigError, match="nodes.web.check_host_key"):
        load_inventory(inventory_file(tmp_path, lambda d: d["nodes"]["web"].update(check_host_key="no")),
                       lab_files[0])


# ---------------------------------------------------------------- connections

def test_ssh_requires_known_host_keys_and_runs_sudo_for_the_agent_only():
    checked = connect("ssh://admin@192.168.1.10:2222?sudo=true", True, "/tmp/cfg")
    assert checked.sudo and not checked.host.backend.sudo  # commands are not wrapped in sudo sh -c
    cmd, args = checked.host.backend._build_ssh_command("id -u")
    line = " ".join(cmd)
    assert "StrictHostKeyChecking=yes" in line and "BatchMode=yes" in line and "sshpass" not in line
    assert "-F %s" in line and "/tmp/cfg" in args
    unchecked = connect("ssh://admin@192.168.1.10", False)
    assert "StrictHostKeyChecking=no" in " ".join(unchecked.host.backend._build_ssh_command("id")[0])
    assert isinstance(checked.host.backend, BoundedSsh)


def test_every_remote_command_is_bounded():
    host = connect("local://").host
    assert isinstance(host.backend, BoundedLocal)
    began = time.monotonic()
    with pytest.raises(LabError, match="no answer within 0.5 s"):
        host.run("sleep 20", timeout=0.5)
    assert time.monotonic() - began < 5
    assert host.run("echo %s", "ok").stdout.strip() == "ok"


def test_paramiko_rejects_unknown_host_keys(tmp_path, monkeypatch):
    paramiko = pytest.importorskip("paramiko")
    seen = {}

    def fake_connect(client, **cfg):
        seen["policy"], seen["cfg"] = client._policy, cfg
    monkeypatch.setattr(paramiko.SSHClient, "connect", fake_connect)
    config = tmp_path / "ssh_config"
    known = tmp_path / "known"
    known.write_text("web ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJ1f2c0FHv5Jd7m0t+Nx4y3jR4RxjfJQ0Z2K0m2r3xA\n")
    config.write_text(f"Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile {known}\n")
    host = connect("paramiko://admin:hunter2@web", True, str(config)).host
    host.backend.client
    assert isinstance(seen["policy"], paramiko.RejectPolicy)   # the ssh_config's "no" does not count
    assert host.backend.client.get_host_keys().lookup("web") is not None
    host = connect("paramiko://admin@web", False, str(config)).host
    host.backend.client
    assert not isinstance(seen["policy"], paramiko.RejectPolicy)


def test_messages_show_the_spec_masked(lab_files, tmp_path):
    pytest.importorskip("paramiko")
    topology, policy = lab_files
    doc = {"ranges": ["198.18.0.0/15", "203.0.113.0/24"],
           "nodes": {n: {"host": "paramiko://admin:hunter2@127.0.0.1:1"} for n in topology.nodes}}
    path = tmp_path / "live.yaml"
    path.write_text(yaml.safe_dump(doc))
    lab = LiveLab(topology, policy, load_inventory(path, topology), log=lambda m: None)
    with pytest.raises(LabError) as err:
        lab.up()
    assert "paramiko://admin:***@127.0.0.1:1" in str(err.value) and "hunter2" not in str(err.value)


def test_with_sudo_only_the_agent_runs_as_root():

    ran = []

    class Backend:
        TAKES_TIMEOUT = True  # as live mode's own backends

        @staticmethod
        def get_pytest_id():
            return "ssh://node"

    class Host:
        backend = Backend()

        def run(self, command, *args, **kwargs):
            assert kwargs["timeout"] > 0  # the batch's bound reaches the backend
            assert kwargs["stdin"] == encode({"nodes": {}}).encode()  # the request: on stdin, not argv
            ran.append(command % args)
            return type("R", (), {"rc": 0, "stdout": '{"nodes": {}}', "stderr": ""})()
    _call_agent(Transport(Host(), None, "/tmp/labwarden-x/agent.pyz", sudo=True), {"nodes": {}})
    _call_agent(Transport(Host(), None, "/tmp/labwarden-x/agent.pyz"), {"nodes": {}})
    assert ran == ["sudo -n python3 /tmp/labwarden-x/agent.pyz -", "python3 /tmp/labwarden-x/agent.pyz -"]
