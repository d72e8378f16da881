"""Loading the reference home lab's topology: segments, nodes, lookups."""

import shutil
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
import yaml

from labwarden.errors import LabwardenError
from labwarden.declared.lab import load_lab
from labwarden.declared.topology import load_topology

HOMELAB = Path(__file__).resolve().parents[2] / "topologies" / "homelab"


@pytest.fixture(scope="module")
def topo():
    return load_topology(HOMELAB)


@pytest.fixture
def lab(tmp_path):
    folder = tmp_path / "homelab"
    shutil.copytree(HOMELAB, folder)
    return folder


def edit_compose(folder, change):
    file = folder / "compose.yaml"
    doc = yaml.safe_load(file.read_text())
    change(doc)
    file.write_text(yaml.safe_dump(doc, sort_keys=False))


def test_loads_by_name_and_by_path(topo, monkeypatch):
    monkeypatch.chdir(HOMELAB.parents[1])
    by_name = load_topology("homelab")
    assert by_name.name == topo.name == "homelab"
    assert by_name.path == HOMELAB
    assert by_name.compose_file == HOMELAB / "compose.yaml"
    assert by_name.nodes == topo.nodes


def test_a_name_is_found_next_to_the_package_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_topology("homelab").path == HOMELAB


def test_a_lab_folder_is_read_once(monkeypatch):
    """compose.yaml gives nodes, segments and impaired links from one parse; policy.yaml
    gives the policy and its budgets: two files, two reads."""
    read = []
    parse = yaml.safe_load
    monkeypatch.setattr(yaml, "safe_load", lambda text: read.append(text) or parse(text))
    topology, policy = load_lab(HOMELAB.parent / "airplane")
    assert len(read) == 2
    assert [link.name for link in topology.links] and policy.budgets


def test_segments(topo):
    assert list(topo.segments) == ["wan", "servers", "personal", "ai"]
    servers = topo.segments["servers"]
    assert servers.subnet == IPv4Network("198.18.10.0/24")
    assert servers.gateway == IPv4Address("198.18.10.254")


def test_node_addresses(topo):
    assert set(topo.nodes) == {"router", "web", "git", "laptop", "phone", "tv", "gpu", "visitor", "scanner",
                               "edge"}  # laptop-tunnel shares the laptop's namespace: not a node
    assert topo.nodes["web"].addresses == {"servers": IPv4Address("198.18.10.10")}
    assert topo.nodes["laptop"].address_on("personal") == IPv4Address("198.18.1.10")
    assert topo.nodes["gpu"].segments == ["ai"]


def test_router_has_four_segments_named_interfaces_and_its_firewall(topo):
    router = topo.nodes["router"]
    assert router.segments == ["wan", "servers", "personal", "ai"]
    assert router.address_on("wan") == IPv4Address("203.0.113.2")
    assert router.interfaces == {s: s for s in router.segments}
    assert router.firewall == HOMELAB / "router" / "nftables.conf"
    assert router.gateway == IPv4Address("203.0.113.10")


def test_gateways_and_routes(topo):
    assert topo.nodes["web"].gateway == IPv4Address("198.18.10.1")
    assert topo.nodes["web"].routes == {}
    assert topo.nodes["web"].firewall is None
    visitor = topo.nodes["visitor"]
    assert visitor.gateway is None
    assert visitor.routes == {IPv4Network("198.18.0.0/15"): IPv4Address("203.0.113.2")}


def test_address_on_a_segment_the_node_is_not_on(topo):
    with pytest.raises(LabwardenError, match="web is not attached to segment personal"):
        topo.nodes["web"].address_on("personal")


def test_lab_ranges(topo):
    assert topo.lab_ranges() == [IPv4Network(n) for n in
                                 ("203.0.113.0/24", "198.18.10.0/24", "198.18.1.0/24", "198.18.20.0/24")]


@pytest.mark.parametrize("address, node", [
    ("198.18.1.11", "phone"), ("198.18.10.1", "router"), ("203.0.113.2", "router"),
    ("198.18.10.254", None),  # the bridge's address: nobody in the lab holds it
    ("198.18.10.99", None), ("192.0.2.1", None)])
def test_node_at(topo, address, node):
    found = topo.node_at(address)
    assert (found.name if found else None) == node


def test_segment_of(topo):
    assert topo.segment_of("198.18.20.77").name == "ai"
    assert topo.segment_of(IPv4Address("203.0.113.200")).name == "wan"
    assert topo.segment_of("192.0.2.1") is None


def test_on_link(topo):
    laptop = topo.nodes["laptop"]
    assert topo.on_link(laptop, "198.18.1.12")
    assert topo.on_link(laptop, "198.18.1.1")
    assert not topo.on_link(laptop, "198.18.10.10")
    assert not topo.on_link("laptop", "192.0.2.1")
    assert all(topo.on_link(topo.nodes["router"], n.addresses[s])
               for n in topo.nodes.values() for s in n.segments)


def test_nodes_and_segments_are_hashable_values(topo):
    assert len({*topo.nodes.values()}) == len(topo.nodes)
    assert len({*topo.segments.values()}) == 4


def test_interfaces_can_be_renamed(lab):
    edit_compose(lab, lambda d: d["services"]["router"]["x-labwarden"].update(interfaces={"wan": "eth0"}))
    router = load_topology(lab).nodes["router"]
    assert router.interfaces == {"wan": "eth0", "servers": "servers", "personal": "personal", "ai": "ai"}


def test_a_service_sharing_another_nodes_namespace_is_not_a_node(lab):
    edit_compose(lab, lambda d: d["services"].update(sidecar={"image": "x", "network_mode": "service:web"}))
    assert "sidecar" not in load_topology(lab).nodes
