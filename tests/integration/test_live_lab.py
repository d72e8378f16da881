"""Live mode for real, without a real house: the home lab as the "real" hosts, reached over SSH.

The home lab comes up (Docker mode) and its matrix is probed the Docker way.
Then every node gets an sshd that listens on the node's loopback only (so no
probe can see it), reached through `docker exec ... socat` as an ssh_config
ProxyCommand: no management network, no second path between nodes. An
inventory of ssh:// specs points live mode at them, and the isolation suite
runs in live mode in a subprocess:

- as root everywhere: every test passes (the Docker-host one skips, saying
  why), every matrix verdict is the one Docker mode saw, nothing is left behind;
- with the phone reached as a plain user: its probes go through connect() and
  ping sockets and still give the Docker verdicts; the checks that need raw
  packets there skip, naming the phone;
- the latency suite: every budget's samples and every budgeted path's traceroute
  come from the agent pushed over SSH (one zipapp, its timing module inside),
  and pass; only the checks of emulated links skip (nothing is emulated live);
- the pace holds across calls: five back-to-back calls of 100 probes at
  max_pps 100 take at least four seconds, and the peak is 100.

Host keys are checked: the nodes' sshd keys go into a known_hosts file the
ssh_config names (live mode runs ssh with StrictHostKeyChecking=yes).
"""

import asyncio
import json
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from labwarden.realise.compose import ComposeLab
from labwarden.checks.matrix import run_matrix
from labwarden.declared.inventory import load_inventory
from labwarden.errors import LabError
from labwarden.declared.lab import load_lab
from labwarden.probe import NodeJob, Probe, _call_agent, encode
from labwarden.realise.live import LiveLab

ROOT = Path(__file__).resolve().parents[2]
SSH_PORT = 2222
PLAIN_USER = "lwprobe"


def start_sshd(lab: ComposeLab, node: str, public_key: str) -> None:
    container = lab.containers[node].name
    subprocess.run(["docker", "exec", "-i", container, "sh", "-c",
                    "mkdir -p /run/sshd && cat > /etc/labwarden/live_keys"],
                   input=public_key, text=True, check=True, timeout=30)
    subprocess.run(["docker", "exec", "-d", container, "/usr/sbin/sshd", "-D", "-e", "-p", str(SSH_PORT),
                    "-o", "ListenAddress=127.0.0.1", "-o", "PermitRootLogin=prohibit-password",
                    "-o", "AuthorizedKeysFile=/etc/labwarden/live_keys", "-o", "StrictModes=no",
                    "-o", "PidFile=/run/sshd-live.pid"], check=True, timeout=30)


def host_key(lab: ComposeLab, node: str) -> str:
    """The node's sshd key, as known_hosts holds it ("ssh-ed25519 AAAA...")."""
    pub = subprocess.run(["docker", "exec", lab.containers[node].name, "cat", "/etc/ssh/ssh_host_ed25519_key.pub"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return " ".join(pub.split()[:2])


@pytest.fixture(scope="module")
def ssh_lab(tmp_path_factory):
    """(lab, policy, the Docker mode's matrix, ssh_config), sshd running in every node."""
    tmp = tmp_path_factory.mktemp("ssh-lab")
    topology, policy = load_lab(ROOT / "topologies" / "homelab")
    key = tmp / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    with ComposeLab(topology, policy, log=lambda m: None) as lab:
        docker_mode = asyncio.run(run_matrix(lab, policy))
        public_key = (tmp / "id_ed25519.pub").read_text()
        with ThreadPoolExecutor(8) as pool:  # the nodes' docker execs at once, not one after the other
            list(pool.map(lambda node: start_sshd(lab, node, public_key), topology.nodes))
            keys = dict(zip(topology.nodes, pool.map(lambda node: host_key(lab, node), topology.nodes)))
        subprocess.run(["docker", "exec", lab.containers["phone"].name, "useradd", "-m", PLAIN_USER],
                       check=True, timeout=30)
        known_hosts = tmp / "known_hosts"  # each node's own host key, under the name ssh is given
        known_hosts.write_text("".join(f"{node} {keys[node]}\n" for node in topology.nodes))
        ssh_config = tmp / "ssh_config"
        ssh_config.write_text(
            "Host *\n  User root\n  IdentityFile {key}\n  IdentitiesOnly yes\n"
            "  UserKnownHostsFile {known}\n  LogLevel ERROR\n  ConnectTimeout 20\n"
            "  ProxyCommand docker exec -i {project}-%h-1 socat - TCP:127.0.0.1:{port}\n"
            .format(key=key, known=known_hosts, project=lab.project, port=SSH_PORT))
        yield lab, policy, docker_mode, ssh_config


def write_inventory(ssh_lab, tmp_path, users=None, max_pps=1000):
    lab, _, _, ssh_config = ssh_lab
    users = users or {}
    inventory = tmp_path / "live.yaml"
    inventory.write_text(yaml.safe_dump({
        "topology": "homelab", "max_pps": max_pps, "ssh_config": str(ssh_config),
        # IPv6 too: the live lab is dual-stack like the Docker one (no IPv6 range: no IPv6 live)
        "ranges": [str(s.subnet) for s in lab.topology.segments.values()] + [str(r) for r in lab.topology.lab_ranges6()],
        "nodes": {n: {"host": f"ssh://{users[n] + '@' if n in users else ''}{n}"} for n in lab.topology.nodes}}))
    return inventory


def run_live(ssh_lab, tmp_path, suites, users=None):
    inventory = write_inventory(ssh_lab, tmp_path, users)
    out = tmp_path / "live-report"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *suites, "-q", "-p", "no:cacheprovider", "--tb=short", "-rs",
         "--lw-lab", "live", "--lw-inventory", str(inventory), "--lw-report-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=1200)
    doc = json.loads((out / "labwarden.json").read_text()) if (out / "labwarden.json").is_file() else {}
    cases = list(ET.parse(out / "junit.xml").getroot().iter("testcase")) if (out / "junit.xml").is_file() else []
    skipped = {f"{c.get('classname')}::{c.get('name')}": c.find("skipped").get("message")
               for c in cases if c.find("skipped") is not None}
    return proc, doc, cases, skipped


def same_verdicts(ssh_lab, doc) -> dict:
    _, policy, docker_mode, _ = ssh_lab
    live = {p["flow"]: p["observed"] for p in doc["probes"] if p["group"] == "segmentation matrix"}
    docker = {f.label(policy): c.observed.verdict for f, c in docker_mode.cells.items()}
    return {f: (docker[f], live.get(f)) for f in docker if docker[f] != live.get(f)}


def test_isolation_suite_over_ssh_sees_what_docker_mode_sees(ssh_lab, tmp_path):
    lab = ssh_lab[0]
    proc, doc, cases, skipped = run_live(ssh_lab, tmp_path, ["suites/isolation"])
    output = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, output
    assert "raw-socket probes everywhere (root)" in proc.stdout, output
    assert sorted(skipped) == ["suites.isolation.test_no_leak::test_nothing_outside_answers",
                               "suites.isolation.test_no_leak::test_nothing_outside_answers_ipv6"], skipped
    assert set(skipped.values()) == {
        "emulated lab only: it probes the Docker host's bridges, which a live lab does not have"}, skipped
    assert len(cases) > 1000
    assert doc["header"]["mode"] == "live (read-only)" and "router_config" not in doc["header"]
    assert 0 < doc["header"]["peak_pps"] <= 1000, doc["header"]  # the pace kept, inventory's max_pps 1000
    differ = same_verdicts(ssh_lab, doc)
    assert not differ, f"{len(differ)} verdicts differ (docker, live): {dict(list(differ.items())[:20])}"
    leftovers = {n: subprocess.run(["docker", "exec", lab.containers[n].name, "sh", "-c",
                                    "ls -d /tmp/labwarden-* 2>/dev/null"],
                                   capture_output=True, text=True).stdout.split() for n in lab.topology.nodes}
    assert not any(leftovers.values()), f"the agent was left behind: {leftovers}"


def test_a_node_without_root_probes_with_connect_and_skips_raw_checks(ssh_lab, tmp_path):
    proc, doc, cases, skipped = run_live(ssh_lab, tmp_path, ["suites/isolation/test_matrix.py",
                                                             "suites/isolation/test_discovery.py"],
                                         users={"phone": PLAIN_USER})
    output = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, output
    assert "no root on phone: connect()-based probes only there" in proc.stdout, output
    assert doc["header"]["connect_only"] == "phone"
    differ = same_verdicts(ssh_lab, doc)
    assert not differ, f"{len(differ)} verdicts differ (docker, live): {dict(list(differ.items())[:20])}"
    phone = [p for p in doc["probes"] if p["src"] == "personal/phone" and p["observed"] == "open"]
    assert phone and all("no root" in p["detail"] or "seen by the socket" in p["detail"] for p in phone), phone[:3]
    # the snooping check captures on every node, the phone too: it skips, saying why
    assert skipped and all("live mode: no root on phone" in why for why in skipped.values()), skipped
    assert any("test_capture_sees_nothing" in name for name in skipped)


def test_latency_suite_over_ssh_measures_budgets_and_traces_routes(ssh_lab, tmp_path):
    policy = ssh_lab[1]
    proc, doc, cases, skipped = run_live(ssh_lab, tmp_path, ["suites/latency"])
    output = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, output
    passed = {c.get("name") for c in cases if not any(c.find(k) is not None for k in ("failure", "error", "skipped"))}
    budgets = [f"test_budget[{b.label}]" for b in policy.budgets]
    assert budgets and set(budgets) <= passed, (sorted(passed), output)
    routes = {(b.src, b.dst, b.kind == "icmp" or b.port) for b in policy.budgets}  # as the suite traces them
    assert len([n for n in passed if n.startswith("test_route[")]) == len(routes), (sorted(passed), output)
    assert skipped and all("nothing is emulated" in why for why in skipped.values()), skipped
    tables = {s["title"] for s in doc["sections"] if s["kind"] == "table"}
    assert "latency budgets" in tables and any(t.startswith("traceroute ") for t in tables), tables
    traced = [s["data"]["rows"] for s in doc["sections"] if s["title"].startswith("traceroute ")]
    assert all(rows and rows[-1]["cells"][1] != "*" for rows in traced), traced


def test_the_pace_holds_across_back_to_back_calls(ssh_lab, tmp_path):
    lab, policy = ssh_lab[0], ssh_lab[1]
    inventory = load_inventory(write_inventory(ssh_lab, tmp_path, max_pps=100), lab.topology)
    web = lab.topology.nodes["web"].addresses["servers"]
    probes = [Probe("tcp", IPv4Address(web), port) for port in range(1000, 1100)]
    with LiveLab(lab.topology, policy, inventory, log=lambda m: None) as live:
        began = time.monotonic()
        for _ in range(5):
            answers = asyncio.run(live.run({"laptop": NodeJob(probes=probes)}))
            assert len(answers["laptop"].observations) == 100
        took = time.monotonic() - began
        assert took >= 4.0, f"500 probes at max_pps 100 in {took:.2f} s"
        assert live.peak_pps() == 100
        print(f"five calls of 100 probes at max_pps 100: {took:.2f} s")


def test_an_unknown_host_key_is_refused_unless_the_node_opts_out(ssh_lab, tmp_path):
    lab, policy, _, ssh_config = ssh_lab
    strangers = tmp_path / "ssh_config"  # the same hosts, but no key known for any of them
    (tmp_path / "empty_known_hosts").write_text("")
    strangers.write_text(ssh_config.read_text().replace(
        str(ssh_config.parent / "known_hosts"), str(tmp_path / "empty_known_hosts")))
    path = write_inventory((lab, policy, None, strangers), tmp_path)
    with pytest.raises(LabError, match="Host key verification failed"):
        LiveLab(lab.topology, policy, load_inventory(path, lab.topology), log=lambda m: None).up()
    doc = yaml.safe_load(path.read_text())
    for node in doc["nodes"].values():
        node["check_host_key"] = False
    path.write_text(yaml.safe_dump(doc))
    with LiveLab(lab.topology, policy, load_inventory(path, lab.topology), log=lambda m: None) as live:
        assert len(live.transports) == len(lab.topology.nodes)


def test_a_request_over_128_kib_travels_on_stdin_in_both_modes(ssh_lab, tmp_path):
    """One argument is capped at 128 KiB: a 24,000-port scan batch (Docker mode, through the
    prober's `docker exec -i`) and a padded request (live mode, over the SSH channel) are over it."""
    lab, policy = ssh_lab[0], ssh_lab[1]
    web = lab.topology.nodes["web"].addresses["servers"]
    probes = [Probe("tcp", IPv4Address(web), port) for port in range(1, 24_001)]
    request = {"nodes": {"laptop": NodeJob(probes=probes).request(lab.transports["laptop"].netns)}}
    assert len(encode(request)) > 128 * 1024
    answers = asyncio.run(lab.run({"laptop": NodeJob(probes=probes)}))
    seen = {p.port: o.verdict for p, o in zip(probes, answers["laptop"].observations)}
    counts = {v: sum(1 for x in seen.values() if x == v) for v in set(seen.values())}
    assert len(seen) == 24_000, counts  # every probe of the batch arrived and was answered
    # web listens on 80 and 443; 22 and 9418 pass the router to it (git's ports) and meet a RST.
    # "error": the agent says its sniffer lost frames (one node's 24,000 answers on a busy machine)
    expected = {80: "open", 443: "open", 22: "closed", 9418: "closed"}
    assert all(seen[port] in (verdict, "error") for port, verdict in expected.items()), (seen, counts)
    assert counts.get("error", 0) < 12_000, counts
    inventory = load_inventory(write_inventory(ssh_lab, tmp_path), lab.topology)
    rng = random.Random(14)
    padding = [f"10.100.{rng.randrange(256)}.{rng.randrange(256)}/32" for _ in range(40_000)]
    big = {"timeout": 0.2, "allowed": [str(r) for r in inventory.ranges] + padding, "nodes": {}}
    assert len(encode(big)) > 128 * 1024
    with LiveLab(lab.topology, policy, inventory, log=lambda m: None) as live:
        answer = _call_agent(live.transports["laptop"], big)
    assert answer["nodes"] == {} and "rusage" in answer, answer
