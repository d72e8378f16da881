"""Router kinds (labwarden.routers): the registry, detection from a file's content, the
router_kind key of a topology, and what the agent reads back after an iptables-restore."""

import shutil
import sys
from pathlib import Path

import pytest
import yaml

from labwarden import routers
from labwarden.declared.topology import ROUTER_KINDS, load_topology
from labwarden.errors import ConfigError, LabwardenError

ROOT = Path(__file__).resolve().parents[2]
HOMELAB = ROOT / "topologies" / "homelab"
sys.path.insert(0, str(ROOT / "labwarden" / "agent"))
from agent import XT_RULE, XT_TABLE  # noqa: E402  (the agent is a standalone script)


def test_every_kind_a_topology_may_name_is_registered():
    assert set(routers.KINDS) == set(ROUTER_KINDS)
    for name in routers.KINDS:
        assert routers.kind(name).name == name


def test_an_unknown_kind_lists_the_known_ones():
    with pytest.raises(LabwardenError, match=r"unknown router kind 'pf'; known kinds: nftables, iptables"):
        routers.kind("pf")


def test_each_kind_loads_the_whole_file_through_its_own_setup_key():
    assert routers.kind("nftables").load("flush ruleset\n") == {"nft": "flush ruleset\n"}
    assert routers.kind("iptables").load("*filter\nCOMMIT\n") == {"iptables": "*filter\nCOMMIT\n"}
    assert routers.kind("nftables").version_command == "nft --version"
    assert routers.kind("iptables").version_command == "iptables --version"


def test_only_nftables_traces_and_the_others_say_so():
    nft = routers.kind("nftables")
    assert nft.can_trace and "nft_add" in nft.trace_setup(["198.18.1.10"]) and "nft_add" in nft.untrace_setup()
    assert nft.header() == {"router_kind": "nftables"}
    ipt = routers.kind("iptables")
    assert not ipt.can_trace
    assert ipt.header() == {"router_kind": "iptables", "router_trace": "not traced: a router of kind "
                                                                       "iptables cannot tell which rule decided"}
    with pytest.raises(LabwardenError, match="router of kind iptables cannot trace"):
        ipt.trace_setup(["198.18.1.10"])


@pytest.mark.parametrize("path, name", [
    ("router/nftables.conf", "nftables"),
    ("router/rules.v4", "iptables"),
    ("mutants/forward-accept.nft", "nftables"),
    ("mutants/iptables-forward-accept.v4", "iptables"),
    ("mutants/iptables-dnat-to-gpu.v4", "iptables"),
])
def test_the_kind_is_detected_from_the_files_content(path, name):
    assert routers.detect((HOMELAB / path).read_text()).name == name


def test_a_table_line_without_commit_is_not_iptables():
    assert routers.detect("# *filter\n*filter\n-A INPUT -j DROP\n").name == "nftables"
    assert routers.detect("").name == "nftables"


@pytest.fixture
def lab(tmp_path):
    folder = tmp_path / "homelab"
    shutil.copytree(HOMELAB, folder)
    return folder


def set_router(folder, **x):
    file = folder / "compose.yaml"
    doc = yaml.safe_load(file.read_text())
    doc["services"]["router"]["x-labwarden"].update(x)
    file.write_text(yaml.safe_dump(doc, sort_keys=False))


def test_a_topology_names_its_routers_kind(lab):
    set_router(lab, firewall="router/nftables.conf", router_kind="iptables")
    router = load_topology(lab).nodes["router"]
    assert router.router_kind == "iptables"
    # declared wins for the router's own file; a --lw-router-config is judged by its content
    assert routers.of_router(router, router.firewall).name == "iptables"
    assert routers.of_router(router, router.firewall, declared=False).name == "nftables"


def test_without_the_key_the_kind_comes_from_the_firewall_file(lab):
    set_router(lab, firewall="router/rules.v4")
    router = load_topology(lab).nodes["router"]
    assert router.router_kind is None
    assert routers.of_router(router, router.firewall).name == "iptables"


def test_an_unknown_kind_in_a_topology_names_file_field_and_the_known_kinds(lab):
    set_router(lab, router_kind="pf")
    with pytest.raises(ConfigError) as err:
        load_topology(lab)
    assert err.value.file.endswith("compose.yaml")
    assert err.value.field == "services.router.x-labwarden.router_kind"
    assert "unknown router kind 'pf'; known kinds: nftables, iptables" in err.value.problem


def test_the_agent_counts_tables_and_rules_of_an_iptables_restore_file():
    text = (HOMELAB / "router/rules.v4").read_text()
    counts = {table: len(XT_RULE.findall(body)) for table, body in XT_TABLE.findall(text)}
    assert counts == {"raw": 1, "filter": 23, "nat": 2}


def test_iptables_loads_rules_v6_beside_rules_v4_and_says_when_there_is_none(tmp_path):
    ipt = routers.kind("iptables")
    v4 = HOMELAB / "router/rules.v4"
    assert ipt.load("V4", v4) == {"iptables": "V4", "ip6tables": (HOMELAB / "router/rules.v6").read_text()}
    assert ipt.header(v4, dual_stack=True)["router_ipv6"] == "ip6tables-restore rules.v6"
    lone = tmp_path / "edge.v4"
    lone.write_text(v4.read_text())
    assert ipt.load("V4", lone) == {"iptables": "V4"}  # nothing for IPv6: the suites judge the hole
    assert ipt.load("V4") == {"iptables": "V4"}
    assert ipt.header(lone, dual_stack=True)["router_ipv6"].startswith("not filtered: no edge.v6 beside edge.v4")
    assert "router_ipv6" not in ipt.header(lone, dual_stack=False)
