"""IPv6, without Docker: the dual-stack homelab as declared, its oracle (pinholes, rules
for one family), the matrix's IPv6 cells and controls, and the agent's IPv6 parsing."""

import shutil
import socket
import struct
import sys
from ipaddress import IPv6Address, IPv6Network, ip_address, ip_network
from pathlib import Path

import pytest
import yaml

from labwarden.checks.matrix import controls, matrix_flows
from labwarden.declared.lab import load_lab
from labwarden.declared.topology import load_topology
from labwarden.errors import ConfigError
from labwarden.realise.compose import listens
from labwarden.declared.policy import Service

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "labwarden" / "agent"))
import agent  # noqa: E402

HOMELAB = Path(__file__).resolve().parents[2] / "topologies" / "homelab"


@pytest.fixture(scope="module")
def policy():
    return load_lab(HOMELAB).policy


@pytest.fixture
def lab(tmp_path):
    folder = tmp_path / "homelab"
    shutil.copytree(HOMELAB, folder)
    return folder


def edit(folder, name, change):
    file = folder / name
    doc = yaml.safe_load(file.read_text())
    change(doc)
    file.write_text(yaml.safe_dump(doc, sort_keys=False))


# ---------------------------------------------------------------- the address plan

def test_every_homelab_segment_and_node_is_dual_stack(policy):
    topo = policy.topology
    assert {s: str(seg.subnet6) for s, seg in topo.segments.items()} == {
        "wan": "2001:db8:ffff::/64", "servers": "2001:db8:0:10::/64",
        "personal": "2001:db8:0:1::/64", "ai": "2001:db8:0:20::/64"}
    for node in topo.nodes.values():
        assert set(node.addresses6) == set(node.addresses), node.name
    assert topo.nodes["web"].addresses6 == {"servers": IPv6Address("2001:db8:0:10::10")}
    assert topo.nodes["web"].gateway6 == IPv6Address("2001:db8:0:10::1")
    assert topo.nodes["visitor"].routes6 == {IPv6Network("2001:db8::/48"): IPv6Address("2001:db8:ffff::2")}
    assert topo.nodes["visitor"].routes == {ip_network("198.18.0.0/15"): ip_address("203.0.113.2")}
    assert topo.nodes["router"].gateway6 == IPv6Address("2001:db8:ffff::10")


def test_ipv6_lookups(policy):
    topo = policy.topology
    assert topo.node_at("2001:db8:0:1::10").name == "laptop"
    assert topo.segment_of("2001:db8:0:20::99").name == "ai"
    assert topo.segment_of("2001:db8:dead::1") is None
    assert topo.on_link("web", "2001:db8:0:10::11")
    assert not topo.on_link("web", "2001:db8:0:1::10")
    assert topo.nodes["web"].all_addresses() == [ip_address("198.18.10.10"), ip_address("2001:db8:0:10::10")]


def test_an_airplane_stays_ipv4(tmp_path):
    topo = load_topology("airplane")
    assert all(s.subnet6 is None for s in topo.segments.values())
    assert all(not n.addresses6 and n.gateway6 is None for n in topo.nodes.values())


@pytest.mark.parametrize("change, field, problem", [
    (lambda d: d["services"]["web"]["x-labwarden"]["ipv6"].update(servers="2001:db8:0:1::10"),
     "services.web.x-labwarden.ipv6.servers", "is not a host address of segment servers"),
    (lambda d: d["services"]["web"]["x-labwarden"]["ipv6"].update(servers="fe80::10"),
     "services.web.x-labwarden.ipv6.servers", "not a unicast address a lab node can hold"),
    (lambda d: d["services"]["web"]["x-labwarden"]["ipv6"].update(personal="2001:db8:0:1::99"),
     "services.web.x-labwarden.ipv6.personal", "not a segment web is attached to"),
    (lambda d: d["services"]["web"]["x-labwarden"].update(gateway6="2001:db8:0:1::1"),
     "services.web.x-labwarden.gateway6", "a next hop must be on-link"),
    (lambda d: d["services"]["git"]["x-labwarden"]["ipv6"].update(servers="2001:db8:0:10::10"),
     "services.git.x-labwarden.ipv6.servers", "already the address of web"),
    (lambda d: d["networks"]["ai"]["x-labwarden"].update(ipv6="2001:db8:0:10::/64"),
     "networks.ai.x-labwarden.ipv6", "overlaps segment servers"),
    (lambda d: d["networks"]["ai"]["x-labwarden"].update(ipv6="198.18.20.0/24"),
     "networks.ai.x-labwarden.ipv6", "is not an IPv6 prefix"),
    (lambda d: d["networks"]["servers"].pop("x-labwarden"),
     "services.router.x-labwarden.ipv6.servers", "segment servers has no IPv6 prefix"),
])
def test_bad_ipv6_declarations_name_their_field(lab, change, field, problem):
    edit(lab, "compose.yaml", change)
    with pytest.raises(ConfigError) as err:
        load_topology(lab)
    assert field in str(err.value) and problem in str(err.value)


# ---------------------------------------------------------------- the oracle

@pytest.mark.parametrize("src, dst, service, verdicts, reached, reason", [
    ("visitor", "2001:db8:0:10::10", "tcp/80", {"open"}, "web", "pinhole 'public web'"),
    ("visitor", "2001:db8:0:10::10", "tcp/443", {"open"}, "web", "pinhole 'public web tls'"),
    ("visitor", "2001:db8:0:10::10", "tcp/22", {"filtered"}, None, "default deny"),
    ("visitor", "2001:db8:ffff::2", "tcp/80", {"filtered"}, None, "default deny"),  # no DNAT on IPv6
    ("visitor", "2001:db8:0:1::10", "tcp/22", {"filtered"}, None, "default deny"),
    ("web", "2001:db8:0:1::10", "tcp/22", {"filtered"}, None, "default deny"),
    ("laptop", "2001:db8:0:10::10", "tcp/80", {"open"}, "web", "allow 'personal uses the servers'"),
    ("laptop", "2001:db8:0:1::1", "tcp/22", {"open"}, "router", "allow 'personal manages the router'"),
    ("web", "2001:db8:0:10::11", "tcp/9418", {"open"}, "git", "same segment"),
    ("visitor", "2001:db8:ffff::30", "tcp/80", {"closed"}, "edge", "same segment"),  # tunnels: IPv4 only
    ("visitor", "203.0.113.30", "tcp/80", {"open"}, "edge", "same segment"),
])
def test_homelab_oracle_on_ipv6(policy, src, dst, service, verdicts, reached, reason):
    expected = policy.expect(policy.flow(src, dst, service))
    assert (set(expected.verdicts), expected.reached, expected.reason) == (verdicts, reached, reason)


def test_ipv6_cells_name_their_address(policy):
    flow = policy.flow("web", "2001:db8:0:1::10", "tcp/22")
    assert flow.label(policy) == "servers/web -> personal/laptop tcp/22 (2001:db8:0:1::10)"
    assert policy.flow("web", "198.18.1.10", "tcp/22").label(policy) == "servers/web -> personal/laptop tcp/22"
    assert policy.flow("laptop", "2001:db8:0:1::1", "icmp").label(policy) == \
        "personal/laptop -> router@personal icmp (2001:db8:0:1::1)"


def test_a_rule_may_hold_for_one_family(tmp_path, lab):
    def ipv4_only(doc):
        doc["allow"][0]["family"] = "ipv4"
    edit(lab, "policy.yaml", ipv4_only)
    policy = load_lab(lab).policy
    assert policy.expect(policy.flow("laptop", "198.18.10.10", "tcp/80")).reached == "web"
    assert policy.expect(policy.flow("laptop", "2001:db8:0:10::10", "tcp/80")).verdicts == {"filtered"}


def test_a_bad_family_is_named(lab):
    edit(lab, "policy.yaml", lambda doc: doc["allow"][0].update(family="ipv5"))
    with pytest.raises(ConfigError) as err:
        load_lab(lab)
    assert "allow[0].family" in str(err.value) and "ipv4, ipv6" in str(err.value)


def test_the_matrix_probes_every_ipv6_address_on_the_same_ports(policy):
    flows = matrix_flows(policy)
    v4 = [f for f in flows if f.dst.version == 4]
    v6 = [f for f in flows if f.dst.version == 6]
    assert len(v4) == len(v6) > 1000
    assert {(f.src, f.dst_node, f.service) for f in v4} == {(f.src, f.dst_node, f.service) for f in v6}


def test_positive_controls_per_family(policy):
    for src, picked in controls(policy, matrix_flows(policy)).items():
        families = [f.dst.version for f in picked]
        assert families.count(4) >= 1 and families.count(6) >= 1, src


def test_a_service_on_ipv6_listens_on_that_address_or_the_wildcard():
    info = {"tcp6": [{"local": "[::]:80", "state": "LISTEN"}], "tcp": [{"local": "0.0.0.0:22", "state": "LISTEN"}]}
    assert listens(info, Service("tcp", 80), ip_address("2001:db8:0:10::10"))
    assert listens(info, Service("tcp", 80), ip_address("198.18.10.10"))  # dual-stack
    assert not listens(info, Service("tcp", 22), ip_address("2001:db8:0:10::10"))  # IPv4's wildcard only


# ---------------------------------------------------------------- the agent

def ipv6_packet(src, dst, nh, payload, hops=64, ext=b""):
    first = nh if not ext else 60
    header = struct.pack("!IHBB", 6 << 28, len(ext) + len(payload), first, hops)
    header += socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
    return header + ext + payload


def test_the_agent_parses_ipv6_past_extension_headers():
    plain = ipv6_packet("2001:db8::1", "2001:db8::2", 6, b"tcpheader", hops=63)
    assert agent.parse_ip(plain) == ("2001:db8::1", "2001:db8::2", 6, 63, b"tcpheader")
    options = bytes([17, 0]) + b"\x01\x04\0\0\0\0"  # destination options, next header udp
    assert agent.parse_ip(ipv6_packet("2001:db8::1", "2001:db8::2", 17, b"udp", ext=options))[2:] == (17, 64, b"udp")
    assert agent.parse_ipv6(b"\x45" + b"\0" * 39) is None


def test_the_guard_keeps_families_apart():
    # 2001:db8::7f00:1 ends in 127.0.0.1's integer: it must not pass as 127.0.0.0/8
    request = {"allowed": ["198.18.0.0/15"], "nodes": {"web": {"probes": [
        {"id": 0, "proto": "tcp", "dst": "2001:db8::7f00:1", "port": 22}]}}}
    assert agent.guard(request)["refused"] == ["2001:db8::7f00:1"]
    request["allowed"].append("2001:db8::/32")
    assert agent.guard(request) is None
    request["nodes"]["web"]["probes"][0]["dst"] = "fe80::1%servers"
    assert agent.guard(request)["refused"] == ["fe80::1%servers"]
    request["allowed"].append("fe80::/10")
    assert agent.guard(request) is None


def test_an_ipv6_raw_packet_names_its_destination():
    packet = ipv6_packet("2001:db8:0:10::10", "2001:db8:0:1::10", 58, b"\x80\0\0\0\0\1\0\1")
    assert agent.raw_destination({"l3": packet.hex()}) == "2001:db8:0:1::10"
    frame = b"\xff" * 12 + b"\x86\xdd" + packet
    assert agent.raw_destination({"l2": frame.hex(), "iface": "servers"}) == "2001:db8:0:1::10"


def test_icmpv6_errors_are_named():
    assert agent.icmp6_name(1, 1) == "admin-prohibited"
    assert agent.icmp6_name(1, 4) == "port-unreachable"
    assert agent.icmp6_name(3, 0) == "time-exceeded"
    assert agent.is_group("ff02::1") and not agent.is_group("2001:db8::1")
