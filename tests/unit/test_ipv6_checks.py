"""The isolation checks on IPv6, without Docker: the packets they craft (neighbour
solicitations, the echo to ff02::1, rogue router advertisements and DHCPv6 replies,
forged IPv6 sources), how captured IPv6 frames are decoded and counted, and which
flows the stateful and anti-spoofing checks send on each family."""

import sys
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from pathlib import Path
from types import SimpleNamespace

import pytest
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6ND_NA, ICMPv6ND_NS, IPv6
from scapy.layers.l2 import Ether

from labwarden.checks import exposure
from labwarden.checks.matrix import one_way_pairs
from labwarden.declared.lab import load_lab
from labwarden.probe import packets

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "suites" / "isolation"))
from test_stateful import related_flows  # noqa: E402

HOMELAB = Path(__file__).resolve().parents[2] / "topologies" / "homelab"
MAC = "02:42:c6:12:01:0a"
LAPTOP6 = IPv6Address("2001:db8:0:1::10")


@pytest.fixture(scope="module")
def policy():
    return load_lab(HOMELAB).policy


def test_a_neighbour_solicitation_asks_for_its_target_at_its_group():
    targets = [IPv6Address("2001:db8:0:10::10"), IPv6Address("2001:db8:0:10::1:abcd")]
    for item, target in zip(packets.nd_sweep("personal", MAC, LAPTOP6, targets), targets):
        frame = Ether(bytes.fromhex(item["l2"]))
        ns = frame[ICMPv6ND_NS]
        assert item["iface"] == "personal" and ns.tgt == str(target)
        group = IPv6Address("ff02::1:ff00:0").packed[:13] + target.packed[13:]
        assert frame[IPv6].dst == str(IPv6Address(group)) and frame[IPv6].hlim == 255
        assert frame.dst == "33:33:" + ":".join(f"{b:02x}" for b in group[-4:])
        patched = ns.cksum
        del frame[IPv6].payload.cksum
        assert Ether(bytes(frame))[ICMPv6ND_NS].cksum == patched  # the patched checksum is right
        assert packets.decode([{"hex": item["l2"]}])[0].nd_target() == target


def test_captured_ipv6_frames_are_decoded():
    echo = packets.decode([{"hex": packets.all_nodes_echo("eth0", MAC, LAPTOP6)["l2"]}])[0]
    assert (echo.kind, echo.src, echo.dst) == ("echo6-request", LAPTOP6, IPv6Address("ff02::1"))
    marked = bytes.fromhex(packets.marked_udp(LAPTOP6, IPv6Address("2001:db8:ffff::10"), b"mark", 40000)["l3"])
    seen = packets.decode([{"hex": (bytes(12) + b"\x86\xdd" + marked).hex(), "dir": "in"}])[0]
    assert seen.kind == "udp" and seen.src == LAPTOP6 and b"mark" in seen.payload
    # past a hop-by-hop header (MLD reports carry one), and an IPv4 packet is still IPv4
    hop = IPv6(marked[:40])
    hop.nh, hop.plen = 0, len(marked) - 40 + 8
    with_hbh = bytes(hop)[:40] + bytes([17, 0, 5, 2, 0, 0, 1, 0]) + marked[40:]
    assert packets.decode([{"hex": (bytes(12) + b"\x86\xdd" + with_hbh).hex()}])[0].kind == "udp"
    v4 = bytes.fromhex(packets.marked_udp(IPv4Address("198.18.1.10"), IPv4Address("203.0.113.10"), b"m", 1)["l3"])
    assert packets.decode([{"hex": (bytes(12) + b"\x08\x00" + v4).hex()}])[0].src == IPv4Address("198.18.1.10")


def test_a_rogue_router_sends_an_advertisement_and_a_dhcpv6_reply_that_change_nothing():
    web6 = IPv6Address("2001:db8:0:10::10")
    routed = packets.rogue_router(web6, LAPTOP6, b"rogue")
    framed = packets.rogue_router(web6, "ff02::1", b"rogue", ("servers", MAC))
    seen = packets.decode([{"hex": (bytes(12) + b"\x86\xdd" + bytes.fromhex(i["l3"])).hex()} for i in routed])
    seen += packets.decode([{"hex": i["l2"]} for i in framed])
    assert [s.kind for s in seen] == ["ra", "udp", "ra", "udp"]
    assert all(b"rogue" in s.payload and s.src == web6 for s in seen)
    assert seen[1].payload[:4] == bytes.fromhex("02230222")  # DHCPv6 server -> client
    ra = IPv6(bytes.fromhex(routed[0]["l3"]))
    assert ra.payload.routerlifetime == 0 and not ra.src.startswith("fe80")  # ignored by hosts
    assert Ether(bytes.fromhex(framed[0]["l2"])).dst == "33:33:00:00:00:01"


def test_an_ipv6_sweep_tries_low_interface_ids_and_every_declared_address(policy):
    targets = exposure.sweep_targets6(policy.topology, "personal")
    prefix = IPv6Network("2001:db8:0:1::/64")
    assert all(t in prefix for t in targets) and LAPTOP6 in targets and prefix[1] in targets
    declared = {n.addresses6["personal"] for n in policy.topology.nodes.values() if "personal" in n.addresses6}
    assert set(targets) == {prefix[i] for i in range(1, exposure.SWEEP6_HOSTS + 1)} | declared


def _sighting(policy, observer, segment, frames, count_router=False):
    lab = SimpleNamespace(topology=policy.topology)
    answer = SimpleNamespace(captured=frames, observations=[])
    return exposure._sighting(lab, policy, observer, exposure.NodeJob(), answer, segment, count_router)


def test_an_ipv6_sweep_counts_advertisements_and_echo_replies_from_the_segment(policy):
    web6, laptop6 = IPv6Address("2001:db8:0:10::10"), LAPTOP6
    na = bytes(Ether(src=MAC, dst=MAC) / IPv6(src=str(laptop6), dst=str(web6)) /
               ICMPv6ND_NA(tgt=str(laptop6)))
    reply = bytes(Ether(src=MAC, dst=MAC) / IPv6(src=str(laptop6), dst=str(web6)) /
                  ICMPv6EchoReply())
    found = _sighting(policy, "web", "personal", [{"hex": na.hex()}, {"hex": reply.hex()}])
    assert found.nd == {laptop6} and found.ping == {laptop6} and found.families() == {6}
    assert "neighbour solicitation: 2001:db8:0:1::10" in str(found)
    # the router's own addresses are no secret; a frame from elsewhere is not the segment's
    router_na = na.replace(laptop6.packed, IPv6Address("2001:db8:0:1::1").packed)
    assert not _sighting(policy, "web", "personal", [{"hex": router_na.hex()}]).any()
    assert not _sighting(policy, "web", "ai", [{"hex": na.hex()}, {"hex": reply.hex()}]).any()


def test_stateful_checks_run_on_both_families(policy):
    pairs = one_way_pairs(policy)
    labels = {(f.label(policy), r.label(policy)) for f, r in pairs}
    assert ("personal/laptop -> servers/web tcp/80 (2001:db8:0:10::10)",
            "servers/web -> personal/laptop tcp/22 (2001:db8:0:1::10)") in labels
    assert {f.dst.version for f, _ in pairs} == {4, 6}
    related = related_flows(policy)
    assert {f.dst.version for f in related} == {4, 6}
    assert all(policy.expect(f).verdicts == {"closed"} for f in related)


def test_forged_sources_are_tried_on_both_families(policy):
    plan = exposure._spoof_plan(policy, "web", 6)
    genuine = [p for p in plan if p[5]]
    forged = [p for p in plan if not p[5]]
    assert len(genuine) == 1 and genuine[0][1] == IPv6Address("2001:db8:0:10::10")
    assert all(p[1].version == 6 and p[3].version == 6 for p in plan)
    assert IPv6Address("2001:db8:0:1::10") in {p[1] for p in forged}  # a personal address
    assert not exposure._spoof_plan(policy, "web", 4)[0][1].version == 6


def test_a_fetch_to_an_ipv6_address_names_it_as_a_literal():
    """test_local_only follows IPv6 connections too (checks.landing.locate fetches them)."""
    from labwarden.checks.fetch import fetch_for
    web = fetch_for("2001:db8:0:10::10", 80)
    assert web.dst == IPv6Address("2001:db8:0:10::10") and b"Host: [2001:db8:0:10::10]\r\n" in web.send
    assert fetch_for(IPv6Address("2001:db8:0:20::10"), 22).send == b""


def test_a_udp_reply_only_the_socket_saw_is_read_on_ipv6():
    """An AF_INET6 socket's peer is a 4-tuple; the agent failed the whole node's batch on it
    ('too many values to unpack'), found by the ipv4-only-filter mutant under load."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "labwarden" / "agent"))
    import agent
    settled = []
    book = SimpleNamespace(connect_only=False, answers=lambda probe, src: True,
                           settle=lambda probe, verdict, src, **kw: settled.append((verdict, src)))
    probe = SimpleNamespace(port=53, seen_at=1.0, socket_saw=("2001:db8:0:1::10", 53, 0, 0))
    agent.UdpProber().fallback(probe, book)
    assert settled == [("open", "2001:db8:0:1::10")]


def test_a_segment_is_swept_on_the_families_it_is_hidden_on(policy):
    """wan reaches web's IPv6 address through the pinhole, so it may know the server VLAN on
    IPv6; on IPv4 (DNAT of the public address only) the server VLAN stays hidden from wan."""
    assert exposure.hidden_families(policy, "visitor", "servers") == {4}
    assert exposure.hidden_families(policy, "web", "personal") == {4, 6}
    assert exposure.hidden_families(policy, "laptop", "servers") == set()
    assert exposure.hidden_segments(policy, "visitor", 6) == ["personal", "ai"]
    assert "servers" in exposure.hidden_segments(policy, "visitor")
