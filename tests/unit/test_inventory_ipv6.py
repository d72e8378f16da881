"""Live inventories with IPv6, without hosts: IPv6 ranges, segments and addresses move the
dual-stack lab to its real IPv6 addresses and the same oracle judges them; mistakes name
file, field and problem; without an IPv6 range the live lab has no IPv6."""

from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

import pytest
import yaml

from labwarden.declared.inventory import apply_inventory, load_inventory
from labwarden.declared.lab import load_lab
from labwarden.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "topologies" / "homelab" / "live.example.yaml"


@pytest.fixture(scope="module")
def lab_files():
    return load_lab(ROOT / "topologies" / "homelab")


def dual_stack() -> dict:
    """The example inventory, with the house's IPv6 (a ULA prefix per segment)."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["ranges"] += ["fd00:0:0:10::/64", "fd00:0:0:1::/64", "2001:db8::/32"]
    doc["segments"].update(servers=["192.168.10.0/24", "fd00:0:0:10::/64"], personal=["192.168.1.0/24",
                                                                                        "fd00:0:0:1::/64"])
    for name, seg, v6 in (("web", "servers", "fd00:0:0:10::10"), ("laptop", "personal", "fd00:0:0:1::10"),
                          ("router", "servers", "fd00:0:0:10::1")):
        addresses = doc["nodes"][name]["addresses"]
        addresses[seg] = [addresses[seg], v6]
    doc["nodes"]["router"]["addresses"]["personal"] = ["192.168.1.1", "fd00:0:0:1::1"]
    for name in ("git", "phone", "tv"):
        seg = next(iter(doc["nodes"][name]["addresses"]))
        held = {"git": "fd00:0:0:10::11", "phone": "fd00:0:0:1::11", "tv": "fd00:0:0:1::12"}[name]
        doc["nodes"][name]["addresses"][seg] = [doc["nodes"][name]["addresses"][seg], held]
    return doc


def load(tmp_path, doc, topology):
    path = tmp_path / "live.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path, load_inventory(path, topology)


def test_an_ipv6_inventory_moves_the_lab_and_the_same_oracle_judges_it(lab_files, tmp_path):
    topology, policy = lab_files
    _, inventory = load(tmp_path, dual_stack(), topology)
    assert inventory.ipv6
    real, real_policy = apply_inventory(inventory, topology, policy)
    laptop, web = real.nodes["laptop"], real.nodes["web"]
    assert laptop.addresses6 == {"personal": IPv6Address("fd00:0:0:1::10")}
    assert laptop.gateway6 == IPv6Address("fd00:0:0:1::1")     # the router's real address there
    assert real.segments["servers"].subnet6 == IPv6Network("fd00:0:0:10::/64")
    assert real.nodes["gpu"].addresses6 == topology.nodes["gpu"].addresses6  # not given: as declared
    assert real.nodes["visitor"].routes6 == {IPv6Network("2001:db8::/48"): IPv6Address("2001:db8:ffff::2")}
    assert real_policy.expect(real_policy.flow("web", "fd00:0:0:1::10", "tcp/22")).verdicts == {"filtered"}
    assert real_policy.expect(real_policy.flow("laptop", str(web.addresses6["servers"]), "tcp/80")).verdicts \
        == {"open"}


def test_without_an_ipv6_range_the_live_lab_has_no_ipv6(lab_files):
    topology, policy = lab_files
    real, _ = apply_inventory(load_inventory(EXAMPLE, topology), topology, policy)
    assert not real.lab_ranges6() and not any(n.addresses6 or n.gateway6 for n in real.nodes.values())


@pytest.mark.parametrize("change, field, problem", [
    (lambda d: d["ranges"].append("2a00:1450::/32"), "ranges[7]", "includes public address space"),
    (lambda d: d["ranges"].append("fd00::/129"), "ranges[7]", "is not an IPv6 prefix"),
    (lambda d: d["nodes"]["web"]["addresses"].update(servers=["192.168.10.10", "fd00:0:0:99::10"]),
     "nodes.web.addresses.servers", "not in segment servers (fd00:0:0:10::/64)"),
    (lambda d: d["nodes"]["web"]["addresses"].update(servers=["192.168.10.10", "192.168.10.12"]),
     "nodes.web.addresses.servers", "a list of one IPv4 and one IPv6 address"),
    (lambda d: d["nodes"]["web"]["addresses"].update(servers=["192.168.10.10", "fe80::10"]),
     "nodes.web.addresses.servers[1]", "not a unicast address a lab node can hold"),
    (lambda d: d["segments"].update(ai=["192.168.20.0/24", "fd00:0:0:20::1/64"]),
     "segments.ai[1]", "is not an IPv6 prefix"),
    (lambda d: d.update(ranges=[r for r in d["ranges"] if r != "fd00:0:0:1::/64"]),
     "nodes.router.addresses.personal", "outside the inventory's ranges"),
])
def test_ipv6_inventory_mistakes_name_file_field_and_problem(lab_files, tmp_path, change, field, problem):
    doc = dual_stack()
    change(doc)
    path = tmp_path / "live.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as err:
        load_inventory(path, lab_files[0])
    assert err.value.field == field and problem in err.value.problem, str(err.value)
    assert str(path) in str(err.value)


def test_an_ipv6_value_where_the_topology_has_no_ipv6_is_refused(tmp_path):
    topology, _ = load_lab(ROOT / "topologies" / "airplane")
    seg = next(iter(topology.segments))
    node = next(n for n, nd in topology.nodes.items() if seg in nd.addresses)
    doc = {"ranges": ["198.18.0.0/15", "203.0.113.0/24", "192.0.2.0/24", "198.51.100.0/24", "fd00::/8"],
           "nodes": {n: {"host": f"ssh://root@{n}"} for n in topology.nodes}, "segments": {seg: "fd00::/64"}}
    path = tmp_path / "live.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as err:
        load_inventory(path, topology)
    assert err.value.field == f"segments.{seg}" and f"segment {seg} has no IPv6 in airplane" in err.value.problem
    del doc["segments"]
    doc["nodes"][node]["addresses"] = {seg: ["fd00::10"]}
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as err:
        load_inventory(path, topology)
    assert err.value.field == f"nodes.{node}.addresses.{seg}[0]" and "has no IPv6 address on" in err.value.problem
