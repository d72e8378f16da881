"""Live mode without hosts: the inventory is checked up front, real addresses replace the
lab's, setup jobs are refused, and probes go in paced rounds."""

import asyncio
import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest
import yaml

import labwarden.realise.live as live
from labwarden.errors import ConfigError, LabError, ProbeError
from labwarden.realise.lab import Lab
from labwarden.realise.live import LiveLab
from labwarden.declared.inventory import apply_inventory, load_inventory
from labwarden.declared.lab import load_lab
from labwarden.probe import NodeAnswer, NodeJob, Observation, Probe

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "topologies" / "homelab" / "live.example.yaml"


@pytest.fixture(scope="module")
def lab_files():
    return load_lab(ROOT / "topologies" / "homelab")


def write(tmp_path, doc) -> Path:
    path = tmp_path / "live.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_the_example_inventory_is_valid_and_moves_the_lab_to_real_addresses(lab_files):
    topology, policy = lab_files
    inventory = load_inventory(EXAMPLE, topology)
    assert inventory.max_pps == 100 and inventory.hosts["laptop"] == "ssh://me@192.168.1.10"
    real, real_policy = apply_inventory(inventory, topology, policy)
    assert real.nodes["laptop"].addresses == {"personal": IPv4Address("192.168.1.10")}
    assert real.nodes["laptop"].interfaces == {"personal": "wlan0"}
    assert str(real.segments["servers"].subnet) == "192.168.10.0/24"
    assert real_policy.public == IPv4Address("203.0.113.2")
    # the oracle works on the real addresses, with the policy's own rules
    flow = real_policy.flow("web", "192.168.1.10", "tcp/22")
    assert flow.label(real_policy) == "servers/web -> personal/laptop tcp/22"
    assert real_policy.expect(flow).verdicts == {"filtered"}
    assert real_policy.expect(real_policy.flow("laptop", "192.168.10.10", "tcp/80")).verdicts == {"open"}


@pytest.mark.parametrize("change, field, problem", [
    (lambda d: d.pop("ranges"), "ranges", "missing"),
    (lambda d: d["nodes"].pop("tv"), "nodes", "no host for tv"),
    (lambda d: d["nodes"]["web"].update(addresses={"servers": "192.168.99.10"}),
     "nodes.web.addresses.servers", "not in segment servers"),
    (lambda d: d.update(ranges=["192.168.1.0/24"]), "nodes.router.addresses.wan", "outside the inventory's ranges"),
    (lambda d: d.update(max_pps=0), "max_pps", "not a positive number"),
    (lambda d: d.update(topology="airplane"), "topology", "the inventory is for 'airplane'"),
    (lambda d: d["nodes"]["web"].update(sudo=True), "nodes.web.sudo", "unknown key"),
    (lambda d: d["nodes"]["web"].update(interfaces={"servers": "a" * 16}), "nodes.web.interfaces.servers",
     "is not a valid Linux interface name (1-15 characters"),
    (lambda d: d["nodes"]["web"].update(interfaces={"wan": "eth0"}), "nodes.web.interfaces.wan",
     "web is not attached to wan (attached: servers)"),
    (lambda d: d.update(ranges=["192.168.1.0/33"]), "ranges[0]", "is not an IPv4 subnet"),
])
def test_inventory_mistakes_name_file_field_and_problem(lab_files, tmp_path, change, field, problem):
    doc = yaml.safe_load(EXAMPLE.read_text())
    change(doc)
    path = write(tmp_path, doc)
    with pytest.raises(ConfigError) as err:
        load_inventory(path, lab_files[0])
    assert err.value.field == field and problem in err.value.problem, str(err.value)
    assert str(path) in str(err.value)


def fake_lab(lab_files, tmp_path, max_pps, calls, late=0.0):
    topology, policy = lab_files
    doc = {"ranges": ["198.18.0.0/15", "203.0.113.0/24"], "max_pps": max_pps,
           "nodes": {n: {"host": f"ssh://root@{n}"} for n in topology.nodes}}
    inventory = load_inventory(write(tmp_path, doc), topology)
    lab = LiveLab(topology, policy, inventory, log=lambda m: None)

    async def run_jobs(transports, jobs, allowed, timeout):
        calls.append((time.monotonic(), {n: (len(j.probes), len(j.send), j.capture_s) for n, j in jobs.items()},
                      allowed, {j.start_at for j in jobs.values()}, time.time()))
        return {n: NodeAnswer([Observation("filtered", None, "fake") for _ in j.probes], [], None,
                              {"late_s": late} if late else {})
                for n, j in jobs.items()}
    return lab, run_jobs


def test_probes_go_in_rounds_of_max_pps_a_second_apart(lab_files, tmp_path, monkeypatch):
    calls = []
    lab, fake = fake_lab(lab_files, tmp_path, 40, calls)
    monkeypatch.setattr(live, "run_jobs", fake)
    probes = [Probe("tcp", IPv4Address("198.18.10.10"), p) for p in range(1, 101)]
    jobs = {"laptop": NodeJob(probes=probes, send=[{"l3": "00"}] * 10, capture_s=1.5),
            "web": NodeJob(probes=probes[:5])}
    answers = asyncio.run(lab.run(jobs))
    assert len(answers["laptop"].observations) == 100 and len(answers["web"].observations) == 5
    rounds = [c[1] for c in calls]
    assert rounds == [{"laptop": (30, 10, 1.5), "web": (5, 0, None)},
                      {"laptop": (40, 0, 1.5)}, {"laptop": (30, 0, 1.5)}]
    starts = [c[0] for c in calls]
    assert all(b - a >= 0.99 for a, b in zip(starts, starts[1:]))
    # a node captures: every agent of the round starts sending at one time, a little ahead
    assert all(len(c[3]) == 1 and None not in c[3] for c in calls)
    asyncio.run(lab.run({"laptop": NodeJob(probes=probes[:3])}))
    assert calls[-1][3] == {None}  # nobody captures: no need to wait for each other
    assert calls[0][2] == ["198.18.0.0/15", "203.0.113.0/24"]  # the inventory's ranges, nothing else


def test_live_mode_refuses_to_change_a_host(lab_files, tmp_path, monkeypatch):
    calls = []
    lab, fake = fake_lab(lab_files, tmp_path, 100, calls)
    monkeypatch.setattr(live, "run_jobs", fake)
    with pytest.raises(ProbeError, match="live mode never changes a host: refused the setup of router"):
        asyncio.run(lab.run({"router": NodeJob(setup={"nft": "flush ruleset"})}))
    assert not calls
    assert lab.router_firewall() is None


def test_a_live_lab_is_a_lab_with_nothing_emulated(lab_files, tmp_path, monkeypatch):
    calls = []
    lab, fake = fake_lab(lab_files, tmp_path, 100, calls)
    monkeypatch.setattr(live, "run_jobs", fake)
    assert isinstance(lab, Lab) and lab.router_firewall() is None
    assert lab.impairment.links == [] and lab.impairment.round_trip_allowance_s() == 0.0
    assert not lab.impairment.lossy and "nothing is emulated" in lab.impairment.reason
    probe = Probe("tcp", IPv4Address("198.18.10.10"), 80)
    rounds = asyncio.run(lab.run_rounds([{"laptop": NodeJob(probes=[probe])}, {"web": NodeJob(probes=[probe] * 2)}]))
    assert [{n: len(a.observations) for n, a in r.items()} for r in rounds] == [{"laptop": 1}, {"web": 2}]
    assert [c[1] for c in calls] == [{"laptop": (1, 0, None)}, {"web": (2, 0, None)}]  # one after the other
    with pytest.raises(LabError, match="live mode runs nothing in the nodes"):
        lab.exec("web", "true")


def test_a_round_whose_agents_start_late_is_repeated_then_refused(lab_files, tmp_path, monkeypatch):
    calls = []
    lab, fake = fake_lab(lab_files, tmp_path, 100, calls, late=0.5)
    monkeypatch.setattr(live, "run_jobs", fake)
    jobs = {"router": NodeJob(capture_s=1.0), "web": NodeJob(probes=[Probe("icmp", IPv4Address("198.18.20.10"))])}
    with pytest.raises(ProbeError, match="agents kept starting late"):
        asyncio.run(lab.run(jobs))
    leads = [min(c[3]) - c[4] for c in calls]
    assert len(calls) == live.START_TRIES and leads[1] > leads[0] * 1.5
