"""`labwarden init --openwrt` (a lab drafted from examples/openwrt-backup, no Docker) and
`labwarden learn`'s pure half (labwarden.checks.learn.learned on the oracle's own verdicts)."""

import json
import tarfile
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from labwarden.cli import main
from labwarden.cli.init import init_from_router, init_lab
from labwarden.checks.learn import learned, learned_text, summary
from labwarden.checks.matrix import matrix_flows
from labwarden.declared.lab import load_lab
from labwarden.declared.policy import Service
from labwarden.declared.policy_file import load_policy
from labwarden.errors import ConfigError
from labwarden.probe import Observation

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "openwrt-backup"
WAN = IPv4Network("10.29.0.0/24")


@pytest.fixture(scope="module")
def drafted(tmp_path_factory):
    folder = init_lab("byol-example", EXAMPLE, None, tmp_path_factory.mktemp("labs"), WAN)
    return folder, load_lab(folder)


def test_init_writes_a_lab_that_loads(drafted):
    folder, (topology, policy) = drafted
    assert sorted(p.name for p in folder.iterdir()) == ["compose.yaml", "policy.yaml", "router"]
    router = topology.nodes["router"]
    # bridges and VLAN devices resolved to the names fw4's ruleset matches on
    assert router.interfaces == {"lan": "lan0", "servers": "srv0", "gpu": "gpu0", "guest": "guest0", "wan": "wan0"}
    assert str(topology.segments["servers"].subnet) == "192.168.20.0/24"  # from `ipaddr '192.168.20.1/24'`
    assert str(topology.segments["wan"].subnet) == str(WAN)               # wan is dhcp: the lab's own
    assert set(policy.zones) == {"lan", "servers", "gpu", "guest", "wan"}
    # a node on each redirect's target, serving its port
    assert {(f.name, f.to, f.port, f.daddr) for f in policy.forwards} == {
        ("Forward-HTTPS-to-web", "servers-10", 443, "any"), ("Forward-SSH-to-bastion", "servers-11", 22, "any")}
    assert Service("tcp", 443) in policy.services["servers-10"]
    assert policy.blocked == "reject" and policy.syn_limit.rate == 25
    ruleset = (folder / "router" / "ruleset.nft").read_text()
    assert "CHANGED: nothing" in ruleset and 'define lan_devices = { "lan0" }' in ruleset


def test_review_markers_point_at_the_stock_ipsec_rules(drafted):
    folder, _ = drafted
    lines = (folder / "policy.yaml").read_text().splitlines()
    reviews = [i for i, line in enumerate(lines) if "REVIEW:" in line]
    marked = {line.split("stock rule ")[1].split(":")[0] for line in (lines[i] for i in reviews) if "stock rule" in line}
    assert {"Allow-IPSec-ESP", "Allow-ISAKMP", "Allow-Ping"} <= marked
    isakmp = next(i for i in reviews if "Allow-ISAKMP" in lines[i])
    assert lines[isakmp - 1].startswith("  # firewall:") and "rule 'Allow-ISAKMP'" in lines[isakmp - 1]
    assert "enabled '0'" in lines[isakmp + 1] and "udp/500" in lines[isakmp + 1]  # disabled: commented out


def test_drafted_intent_matches_openwrt_homelab_zone_by_zone(drafted):
    """The same zones, the same verdicts: what the hand-made lab's oracle expects between two
    zones (reached or not) is what the drafted lab's expects."""
    _, (_, ours) = drafted
    _, theirs = load_lab(ROOT / "topologies" / "openwrt-homelab")
    services = [Service.parse(s) for s in ("tcp/22", "tcp/53", "udp/53", "tcp/80", "tcp/443", "tcp/2222",
                                           "tcp/11434", "udp/67", "udp/500", "icmp")]

    def verdicts(policy):
        table = {}
        for src in policy.topology.nodes:
            if src == policy.router:
                continue
            for dst, node in policy.topology.nodes.items():
                for address in node.addresses.values():
                    if dst == src or policy.topology.on_link(src, address) and dst != policy.router:
                        continue
                    dst_zone = "router" if dst == policy.router else policy.zone_of(dst)
                    where = policy.topology.segment_of(address).name if dst == policy.router else ""
                    for s in services:
                        expect = policy.expect(policy.flow(src, address, s))
                        reached = "router" if expect.reached == policy.router else (
                            policy.zone_of(expect.reached) if expect.reached else None)
                        table.setdefault((policy.zone_of(src), dst_zone, where, str(s)), set()).add(reached)
        return table

    mine, hand = verdicts(ours), verdicts(theirs)
    names = {"lan": "lan", "servers": "servers", "gpu": "gpu", "guest": "guest", "wan": "wan", "": ""}
    assert {k for k in mine} == {k for k in hand if k[2] in names}
    assert {k: v for k, v in mine.items() if hand[k] != v} == {}


def test_init_reads_a_backup_archive(tmp_path):
    archive = tmp_path / "backup-OpenWrt-2026-11-30.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(EXAMPLE / "etc", arcname="etc")
    assert main(["init", "home", "--openwrt", str(archive), "--ruleset", str(EXAMPLE / "ruleset.nft"),
                 "--into", str(tmp_path)]) == 0
    assert load_lab(tmp_path / "home").policy.router == "router"
    # no ruleset: the error says how to get one
    with pytest.raises(ConfigError, match="fw4 print"):
        init_lab("other", archive, None, tmp_path, WAN)
    with pytest.raises(ConfigError, match="already exists"):
        init_lab("home", archive, EXAMPLE / "ruleset.nft", tmp_path, WAN)


def test_init_errors_name_the_file_and_line(tmp_path):
    backup = tmp_path / "backup"
    (backup / "etc" / "config").mkdir(parents=True)
    (backup / "etc" / "config" / "network").write_text((EXAMPLE / "etc/config/network").read_text())
    with pytest.raises(ConfigError, match="etc/config/firewall: missing"):
        init_lab("x", backup, EXAMPLE / "ruleset.nft", tmp_path, WAN)
    (backup / "etc" / "config" / "firewall").write_text("config zone\n\toption name 'lan\n")
    with pytest.raises(ConfigError) as err:
        init_lab("x", backup, EXAMPLE / "ruleset.nft", tmp_path, WAN)
    assert err.value.file.endswith("etc/config/firewall") and err.value.field == "line 2"
    not_fw4 = tmp_path / "rules.nft"
    not_fw4.write_text("table inet filter {}\n")
    with pytest.raises(ConfigError, match="not a firewall4 ruleset"):
        init_lab("x", EXAMPLE, not_fw4, tmp_path, WAN)
    with pytest.raises(ConfigError, match="overlaps the lab's wan"):
        init_lab("x", EXAMPLE, None, tmp_path, IPv4Network("192.168.0.0/16"))


def _as_the_oracle_says(policy, extra=()):
    """A perfect lab: every matrix flow observed as the policy expects (plus `extra` opened)."""
    observed, landed = {}, {}
    for flow in matrix_flows(policy):
        expect = policy.expect(flow)
        verdict = sorted(expect.verdicts)[0]
        if (policy.zone_of(flow.src), flow.dst_node and policy.zone_of(flow.dst_node), flow.service) in extra:
            verdict = "open"
        observed[flow] = Observation(verdict, flow.dst if verdict != "filtered" else None, "oracle")
        delivery = policy.delivery(flow)
        if delivery and policy.zone_of(flow.src) == policy.outside and flow.proto != "icmp":
            landed[flow] = ((delivery[0], delivery[1].port),)
    return observed, landed


@pytest.mark.parametrize("lab", ["homelab", "openwrt-homelab"])
def test_learned_policy_admits_what_was_observed(lab, tmp_path):
    _, policy = load_lab(ROOT / "topologies" / lab)
    observed, landed = _as_the_oracle_says(policy)
    learn = learned(policy, observed, landed)
    out = tmp_path / "policy.learned.yaml"
    out.write_text(learned_text(policy, learn, lab))
    check = load_policy(policy.topology, out)
    assert [f.label(check) for f, o in observed.items() if not check.expect(f).admits(o.verdict)] == []
    assert {f.public for f in check.forwards} == {f.public for f in policy.forwards}
    assert not any("is that intended" in line for line in summary(policy, learn))


def test_learned_names_the_extra_flows_of_a_mutant():
    _, policy = load_lab(ROOT / "topologies" / "homelab")
    observed, landed = _as_the_oracle_says(policy, extra={("servers", "personal", Service("tcp", 22))})
    lines = summary(policy, learned(policy, observed, landed))
    extra = [line for line in lines if line.startswith("servers → personal")]
    assert len(extra) == 1 and "tcp/22" in extra[0] and "is that intended?" in extra[0]


ROUTER_DATA = Path(__file__).resolve().parent / "data" / "linux-router"


def test_init_from_a_running_linux_router(tmp_path):
    """The outputs of `ip -j addr`, `ip -j route`, `nft -j list ruleset` and `nft list ruleset`
    as read from the router of the lab drafted from examples/openwrt-backup (fw4's ruleset)."""
    outputs = (*(json.loads((ROUTER_DATA / f).read_text()) for f in ("addr.json", "route.json", "ruleset.json")),
               (ROUTER_DATA / "ruleset.txt").read_text())
    folder = init_from_router("from-router", outputs, "ssh://root@router", tmp_path, IPv4Network("10.28.0.0/24"))
    topology, policy = load_lab(folder)
    # one zone per interface; the outside is zone wan, as the suites know it
    assert policy.zones == {"lan0": ["lan0"], "srv0": ["srv0"], "gpu0": ["gpu0"], "guest0": ["guest0"], "wan": ["wan0"]}
    assert str(topology.segments["wan0"].subnet) == "10.28.0.0/24"           # never the real outside
    assert (policy.syn_limit.rate, policy.syn_limit.burst) == (25, 50)      # fw4's syn_flood chain
    # fw4's jumps followed: iifname lan0 -> forward_lan -> accept_to_wan -> oifname wan0 accept
    assert {(sorted(r.sources)[0], sorted(r.targets)[0], r.any) for r in policy.allow} >= {
        ("lan0", "wan", True), ("lan0", "srv0", True), ("lan0", "gpu0", True), ("srv0", "wan", True),
        ("guest0", "wan", True), ("lan0", "router", True)}
    assert not any("srv0" in r.sources and "lan0" in r.targets for r in policy.allow)
    assert {(f.public, f.to, f.port) for f in policy.forwards} == {
        (Service("tcp", 443), "srv0-10", 443), (Service("tcp", 2222), "srv0-11", 22)}
    assert policy.blocked == "reject" and sorted(policy.masquerade) == ["gpu0", "guest0", "lan0", "srv0"]
    text = (folder / "policy.yaml").read_text()
    assert text.count("REVIEW:") >= len(policy.allow)
    ruleset = (folder / "router" / "ruleset.nft").read_text()
    assert ruleset.startswith("# labwarden:") and "flush ruleset\ntable inet fw4 {" in ruleset


def test_the_outside_zone_is_wan_in_the_lab_whatever_its_uci_name(tmp_path):
    backup = tmp_path / "backup"
    (backup / "etc" / "config").mkdir(parents=True)
    (backup / "etc" / "config" / "network").write_text((EXAMPLE / "etc/config/network").read_text())
    firewall = (EXAMPLE / "etc/config/firewall").read_text()
    (backup / "etc" / "config" / "firewall").write_text(firewall.replace("'wan'", "'internet'"))
    _, policy = load_lab(init_lab("renamed", backup, EXAMPLE / "ruleset.nft", tmp_path, WAN))
    assert set(policy.zones) == {"lan", "servers", "gpu", "guest", "wan"} and policy.outside == "wan"
    assert any(r.name == "Allow-Ping" and r.sources == {"wan"} for r in policy.allow)
    assert "firewall zone 'internet' is zone wan" in (tmp_path / "renamed" / "compose.yaml").read_text()
