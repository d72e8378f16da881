"""IPv6 on the openwrt-homelab (firewall4's `inet` rules as rendered): the oracle's
`nd_blocked` zones and IPv4-only forwards, the routers' IPv6 addresses as `near`, and the
`--lw-attach` route reset (`only_these_routes`) on both families. No Docker."""

import dataclasses
import shutil
from ipaddress import ip_address
from pathlib import Path

import pytest

from labwarden.declared.lab import load_lab
from labwarden.errors import ConfigError
from labwarden.realise.lab import Lab
from test_ipv6 import agent, edit  # the homelab's IPv6 tests: the agent module, a policy edit

OPENWRT = Path(__file__).resolve().parents[2] / "topologies" / "openwrt-homelab"


@pytest.fixture(scope="module")
def policy():
    return load_lab(OPENWRT).policy


@pytest.fixture
def lab(tmp_path):
    return Path(shutil.copytree(OPENWRT, tmp_path / "openwrt-homelab"))


def test_every_openwrt_segment_and_node_is_dual_stack(policy):
    topology = policy.topology
    assert all(s.subnet6 is not None for s in topology.segments.values())
    for node in topology.nodes.values():
        assert set(node.addresses6) == set(node.addresses), node.name
    assert str(topology.nodes["web"].addresses6["servers"]) == "2001:db8:1:20::10"


@pytest.mark.parametrize("src, dst, service, verdicts, reached", [
    ("laptop", "2001:db8:1:1::11", "icmp", {"open"}, "phone"),              # own segment
    ("laptop", "2001:db8:1:20::1", "tcp/53", {"open"}, "router"),           # lan input ACCEPT
    ("laptop", "2001:db8:1:20::10", "tcp/443", {"filtered", "rejected"}, None),  # router can't resolve web
    ("web", "2001:db8:1:20::11", "tcp/22", {"open"}, "git"),                 # on-link: no router
    ("web", "2001:db8:1:20::1", "tcp/53", {"filtered", "rejected"}, None),   # web can't resolve the router
    ("web", "2001:db8:fffe::10", "tcp/80", {"filtered", "rejected"}, None),
    ("visitor", "2001:db8:1:20::10", "tcp/443", {"filtered", "rejected"}, None),  # no pinhole either
    ("laptop", "198.19.20.10", "tcp/443", {"open"}, "web"),                  # IPv4 unchanged
    ("visitor", "198.51.100.2", "tcp/443", {"open"}, "web"),                 # the DNAT stays
])
def test_nd_blocked_zones_on_ipv6(policy, src, dst, service, verdicts, reached):
    expected = policy.expect(policy.flow(src, ip_address(dst), service))
    assert (expected.verdicts, expected.reached) == (verdicts, reached)


def test_without_nd_blocked_ipv6_follows_the_allows(lab):
    edit(lab, "policy.yaml", lambda doc: doc.pop("nd_blocked"))
    policy = load_lab(lab).policy
    assert policy.expect(policy.flow("laptop", ip_address("2001:db8:1:20::10"), "tcp/443")).reached == "web"


def test_an_ipv4_forward_makes_no_pinhole(lab):
    def both(doc):
        doc.pop("nd_blocked")
        doc["forwards"][0].pop("family")
    edit(lab, "policy.yaml", both)
    policy = load_lab(lab).policy
    flow = policy.flow("visitor", ip_address("2001:db8:1:20::10"), "tcp/443")
    assert policy.expect(flow).reached == "web"           # a pinhole
    # a loaded policy does not change (expect() remembers its answers): a new one with the family
    policy = dataclasses.replace(policy, forwards=[dataclasses.replace(policy.forwards[0], family=4),
                                                   *policy.forwards[1:]])
    assert policy.expect(flow).reached is None            # family: ipv4: a DNAT only
    assert policy.expect(policy.flow("visitor", ip_address("198.51.100.2"), "tcp/443")).reached == "web"


@pytest.mark.parametrize("key, value, problem", [
    ("nd_blocked", ["attic"], "unknown zone 'attic'"),
    ("forwards", None, "forwards[0].family"),
])
def test_bad_ipv6_policy_keys_are_named(lab, key, value, problem):
    def change(doc):
        if key == "forwards":
            doc["forwards"][0]["family"] = "ipv5"
        else:
            doc[key] = value
    edit(lab, "policy.yaml", change)
    with pytest.raises(ConfigError) as err:
        load_lab(lab)
    assert problem in str(err.value)


def test_near_holds_the_routers_ipv6_addresses(policy):
    class Topology:  # Lab.near reads the lab's topology only
        topology = policy.topology
    near = {str(a) for a in Lab.near(Topology(), "laptop")}
    assert {"198.19.20.1", "2001:db8:1:20::1", "2001:db8:fffe::2"} <= near


def test_stray_routes_of_both_families_go_the_kernels_stay():
    v4 = [{"dst": "default", "gateway": "198.19.1.1", "dev": "lan"},
          {"dst": "198.19.1.0/24", "dev": "lan", "protocol": "kernel"},
          {"dst": "10.99.0.0/16", "gateway": "198.19.1.66", "dev": "lan"}]
    v6 = [{"dst": "2001:db8:1:1::/64", "dev": "lan", "protocol": "kernel"},
          {"dst": "fe80::/64", "dev": "lan", "protocol": "kernel"},
          {"dst": "ff00::/8", "dev": "lan", "type": "multicast"},
          {"dst": "2001:db8:1::/48", "gateway": "2001:db8:fffe::2", "dev": "wan"},
          {"dst": "2001:db8:66::/48", "gateway": "fe80::66", "dev": "lan", "protocol": "ra"},
          {"dst": "default", "gateway": "2001:db8:1:1::1", "dev": "lan"}]
    routes = [["default", "198.19.1.1"], ["2001:db8:1::/48", "2001:db8:fffe::2"], ["default", "2001:db8:1:1::1"]]
    assert agent.stray_routes(v4, v6, routes) == [
        ["route", "del", "10.99.0.0/16", "via", "198.19.1.66"],
        ["route", "del", "2001:db8:66::/48", "via", "fe80::66", "dev", "lan"]]
