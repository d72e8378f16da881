"""The nftables model on IPv6, without Docker: which tables see which family, the family a
match or a reject carries, ICMPv6, what probes of IPv6 addresses see, dual-stack rule
fuzzing, and an nft trace of IPv6 flows read back to the config's line."""

from ipaddress import IPv4Address as A
from ipaddress import IPv6Address as A6
from ipaddress import IPv6Network as N6
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labwarden.declared.lab import load_lab
from labwarden.fuzz.rules import NEIGHBOUR_DISCOVERY, destinations, probe_flows, rulesets
from labwarden.routers.nftables.model import Chain, Match, Packet, Rule, Ruleset
from labwarden.routers.nftables.trace import explain, parse_config, parse_events, stories, trace_ruleset
from labwarden.routers.nftables.verdicts import World, kernel_silence, predict

ROOT = Path(__file__).resolve().parents[2]
LAPTOP6, WEB6, ROUTER6 = A6("2001:db8:0:1::10"), A6("2001:db8:0:10::10"), A6("2001:db8:0:10::1")


@pytest.fixture(scope="module")
def world():
    return World.of(load_lab(ROOT / "topologies" / "homelab").policy)


def packet(version=6, proto="tcp", dport=22, **kw):
    saddr, daddr = (LAPTOP6, WEB6) if version == 6 else (A("198.18.1.10"), A("198.18.10.10"))
    icmp = proto in ("icmp", "ipv6-icmp")
    base = dict(hook="forward", iif="personal", oif="servers", saddr=saddr, daddr=daddr, proto=proto,
                dport=None if icmp else dport, icmp_type=(128 if version == 6 else 8) if icmp else None)
    return Packet(**{**base, **kw})


def fwd(*rules, policy="accept", family="inet", priority=0, name="forward"):
    return Chain(name, tuple(rules), "forward", priority, policy, family)


DROP = Rule((), "drop")


def test_an_ip_table_sees_no_ipv6_packet_and_an_inet_table_both():
    for family, sees4, sees6 in (("ip", True, False), ("ip6", False, True), ("inet", True, True)):
        rs = Ruleset((fwd(DROP, family=family),))
        assert (rs.evaluate(packet(4)).verdict == "drop") == sees4, family
        assert (rs.evaluate(packet(6)).verdict == "drop") == sees6, family


def test_base_chains_of_every_table_that_sees_the_packet_run_in_priority_order():
    rs = Ruleset((fwd(Rule((), "accept"), name="a", family="ip6", priority=-5),
                  fwd(DROP, name="b", family="ip", priority=0),
                  fwd(Rule((), "reject", "icmpx admin-prohibited"), name="c", family="inet", priority=5)))
    assert rs.evaluate(packet(4)).decided_by.chain == "b"
    six = rs.evaluate(packet(6))
    assert six.verdict == "reject" and [s.chain for s in six.steps] == ["a", "c"]


def test_a_network_match_carries_its_family_negated_or_not():
    not_v4 = Rule((Match("saddr", (N6("2001:db8::/32"),), negate=True, proto="ip"),), "drop")
    assert Ruleset((fwd(not_v4),)).evaluate(packet(6)).verdict == "accept"  # `ip saddr != X`: IPv4 only
    v6 = Rule((Match("daddr", (N6("2001:db8:0:10::/64"),), proto="ip6"),), "drop")
    assert Ruleset((fwd(v6),)).evaluate(packet(6)).verdict == "drop"
    assert Ruleset((fwd(v6),)).evaluate(packet(4)).verdict == "accept"
    ip_protocol = Rule((Match("l4proto", ("tcp",), negate=True, proto="ip"),), "drop")
    assert Ruleset((fwd(ip_protocol),)).evaluate(packet(6, "udp")).verdict == "accept"
    nexthdr = Rule((Match("l4proto", ("udp",), proto="ip6"),), "drop")
    assert Ruleset((fwd(nexthdr),)).evaluate(packet(6, "udp")).verdict == "drop"
    for families, six in ((("ipv6",), "drop"), (("ipv4",), "accept")):
        rs = Ruleset((fwd(Rule((Match("nfproto", families),), "drop")),))
        assert rs.evaluate(packet(6)).verdict == six


def test_icmpv6_is_its_own_protocol_and_its_own_types():
    echo6 = packet(6, "ipv6-icmp")
    assert Ruleset((fwd(Rule((Match("l4proto", ("icmp",)),), "drop")),)).evaluate(echo6).verdict == "accept"
    assert Ruleset((fwd(Rule((Match("l4proto", ("ipv6-icmp",)),), "drop")),)).evaluate(echo6).verdict == "drop"
    v4_type = Rule((Match("icmp_type", ("echo-request",)),), "drop")
    v6_type = Rule((Match("icmp_type", ("echo-request",), proto="icmpv6"),), "drop")
    assert Ruleset((fwd(v4_type),)).evaluate(echo6).verdict == "accept"
    assert Ruleset((fwd(v6_type),)).evaluate(echo6).verdict == "drop"
    assert Ruleset((fwd(v6_type),)).evaluate(packet(4, "icmp")).verdict == "accept"


def test_a_reject_with_an_icmp_type_is_about_its_family_only():
    for arg, hits4, hits6 in (("icmp host-unreachable", True, False), ("icmpv6 admin-prohibited", False, True),
                              ("icmpx admin-prohibited", True, True), (None, True, True)):
        rs = Ruleset((fwd(Rule((), "reject", arg)),))
        assert (rs.evaluate(packet(4)).verdict == "reject") == hits4, arg
        assert (rs.evaluate(packet(6)).verdict == "reject") == hits6, arg


def test_render_puts_each_family_in_its_own_table():
    rs = Ruleset((fwd(Rule((Match("saddr", (N6("2001:db8:0:1::/64"),), proto="ip6"),
                            Match("icmp_type", ("echo-request",), proto="icmpv6")), "reject", "icmpv6 admin-prohibited"),
                      family="ip6"),
                  fwd(Rule((Match("nfproto", ("ipv6",)), Match("l4proto", ("ipv6-icmp",))), "reject",
                           "icmpx no-route"), name="forward_late", family="inet", priority=10)))
    text = rs.render()
    assert "table ip6 fuzz {" in text and "table inet fuzz {" in text and "table ip fuzz" not in text
    assert ("ip6 saddr 2001:db8:0:1::/64 icmpv6 type echo-request reject with icmpv6 type admin-prohibited"
            in text)
    assert "meta nfproto ipv6 meta l4proto ipv6-icmp reject with icmpx type no-route" in text


def test_probes_of_ipv6_addresses(world):
    allow_echo6 = Ruleset((fwd(Rule((Match("ct_state", ("established", "related")),), "accept"),
                               Rule((Match("icmp_type", ("echo-request",), proto="icmpv6"),), "accept"),
                               policy="drop"),))
    assert predict(allow_echo6, world, "laptop", WEB6, "icmp", None).verdict == "open"
    assert predict(allow_echo6, world, "laptop", A("198.18.10.10"), "icmp", None).verdict == "filtered"
    assert predict(allow_echo6, world, "laptop", WEB6, "tcp", 80).verdict == "filtered"
    # without ct state the reply is judged too: an ICMPv6 echo reply is no echo request
    no_ct = Ruleset((fwd(Rule((Match("icmp_type", ("echo-request",), proto="icmpv6"),), "accept"), policy="drop"),))
    assert predict(no_ct, world, "laptop", WEB6, "icmp", None).verdict == "filtered"
    # the router's own IPv6 address meets input; its port-unreachable is a closed UDP port
    own = Ruleset((Chain("input", (Rule((), "reject", "icmpv6 port-unreachable"),), "input", 0, "accept", "ip6"),))
    assert predict(own, world, "laptop", ROUTER6, "udp", 5000).verdict == "closed"
    assert predict(own, world, "laptop", A("198.18.10.1"), "tcp", 5000).verdict == "closed"  # IPv4: no rule, its RST
    assert predict(own, world, "laptop", ROUTER6, "tcp", 5000).verdict == "rejected"
    # a closed UDP port behind the router answers with a RELATED ICMPv6 error
    related = Ruleset((fwd(Rule((Match("ct_state", ("new", "related")),), "accept"), policy="drop"),))
    assert predict(related, world, "laptop", WEB6, "udp", 9).verdict == "closed"
    assert kernel_silence(A6("ff02::1"), world.subnets.values())
    assert kernel_silence(WEB6, world.subnets.values()) is None


def test_rule_fuzzing_aims_at_ipv6_addresses_on_a_dual_stack_lab(world):
    aims = destinations(world, "laptop")
    assert WEB6 in aims and ROUTER6 in aims and A("198.18.10.10") in aims
    assert LAPTOP6 not in aims  # its own segment's: not through the router
    airplane = World.of(load_lab(ROOT / "topologies" / "airplane").policy)
    assert all(a.version == 4 for n in airplane.node_addresses for a in destinations(airplane, n))


@settings(max_examples=150, database=None, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_dual_stack_rulesets_keep_neighbour_discovery_and_one_family_a_rule(world, data):
    rs = data.draw(rulesets(world))
    for chain in rs.chains:
        if chain.hook == "input" and chain.family != "ip":
            assert chain.rules[0] == NEIGHBOUR_DISCOVERY  # or the router stops answering on IPv6
        for rule in chain.rules:
            families = {m.family() for m in rule.matches} | {rule.family()}
            assert len(families - {None}) <= 1, rule.render()  # nft: conflicting protocols
            if chain.family != "inet":
                assert families - {None} <= {6 if chain.family == "ip6" else 4}, rule.render()
    src, dst, proto, port = data.draw(probe_flows(world, rs))
    assert predict(rs, world, src, dst, proto, port).verdict in ("open", "closed", "rejected", "filtered")


def test_the_trace_table_marks_both_families():
    text = trace_ruleset([A("198.18.1.10"), LAPTOP6])
    assert "ip saddr { 198.18.1.10 } meta nftrace set 1" in text
    assert "ip6 daddr { 2001:db8:0:1::10 } meta nftrace set 1" in text
    assert "ip6" not in trace_ruleset([A("198.18.1.10")])


# `nft monitor trace` as Linux 6.18 prints IPv6 packets (a netns: lines taken from it, addresses changed)
TRACE6 = """\
trace id 5981d6d6 inet labwarden_trace prerouting packet: iif "personal" @ll,0,112 0x86dd ip6 saddr 2001:db8:0:1::10 ip6 daddr 2001:db8:0:10::10 ip6 dscp cs0 ip6 ecn not-ect ip6 hoplimit 64 ip6 flowlabel 443915 ip6 nexthdr tcp ip6 length 40 tcp sport 48724 tcp dport 22 tcp flags == syn tcp window 65476
trace id 5981d6d6 inet labwarden_trace prerouting rule ip6 saddr { 2001:db8:0:1::10 } meta nftrace set 1 # handle 3 (verdict continue)
trace id 5981d6d6 inet labwarden_trace prerouting policy accept
trace id 5981d6d6 inet filter forward packet: iif "personal" oif "servers" ip6 saddr 2001:db8:0:1::10 ip6 daddr 2001:db8:0:10::10 ip6 dscp cs0 ip6 ecn not-ect ip6 hoplimit 63 ip6 flowlabel 443915 ip6 nexthdr tcp ip6 length 40 tcp sport 48724 tcp dport 22 tcp flags == syn tcp window 65476
trace id 5981d6d6 inet filter forward rule ip6 daddr 2001:db8:0:10::10 tcp dport 22 reject with tcp reset # handle 7 (verdict drop)
trace id 5981d6d6 inet labwarden_trace prerouting packet: iif "personal" @ll,0,112 0x86dd ip6 saddr 2001:db8:0:1::10 ip6 daddr 2001:db8:0:10::10 ip6 dscp cs0 ip6 ecn not-ect ip6 hoplimit 64 ip6 flowlabel 885589 ip6 nexthdr ipv6-icmp ip6 length 64 icmpv6 type echo-request icmpv6 code no-route icmpv6 id 7 icmpv6 sequence 1
trace id 5981d6d6 inet labwarden_trace prerouting policy accept
trace id 5981d6d6 inet filter forward packet: iif "personal" oif "servers" ip6 saddr 2001:db8:0:1::10 ip6 daddr 2001:db8:0:10::10 ip6 dscp cs0 ip6 ecn not-ect ip6 hoplimit 63 ip6 flowlabel 885589 ip6 nexthdr ipv6-icmp ip6 length 64 icmpv6 type echo-request icmpv6 code no-route icmpv6 id 7 icmpv6 sequence 1
trace id 5981d6d6 inet filter forward rule icmpv6 type echo-request accept # handle 8 (verdict accept)
"""
CONFIG6 = """\
table inet filter {
\tchain forward {
\t\ttype filter hook forward priority 0; policy drop;
\t\tip6 daddr 2001:db8:0:10::10 tcp dport 22 reject with tcp reset
\t\ticmpv6 type echo-request accept
\t}
}
"""


def test_a_trace_names_the_rule_that_decided_an_ipv6_flow():
    packets = parse_events(TRACE6.splitlines())
    assert len(packets) == 2  # one trace id, two packets: told apart without an IPv4 id
    flows = {"ssh": ({LAPTOP6}, WEB6, "tcp", 22, {WEB6}), "echo": ({LAPTOP6}, WEB6, "icmp", None, {WEB6})}
    told = stories(packets, flows)
    listing = ("table inet filter { # handle 1\n\tchain forward { # handle 2\n"
               "\t\tip6 daddr 2001:db8:0:10::10 tcp dport 22 reject with tcp reset # handle 7\n"
               "\t\ticmpv6 type echo-request accept # handle 8\n\t}\n}\n")
    assert parse_config(CONFIG6)[("inet", "filter", "forward")]["rules"][0].line == 4
    assert explain(told["ssh"], listing, CONFIG6, "router/nftables.conf") == (
        "DROPPED", "by forward rule 'ip6 daddr 2001:db8:0:10::10 tcp dport 22 reject with tcp reset' "
                   "(router/nftables.conf:4)")
    assert explain(told["echo"], listing, CONFIG6, "router/nftables.conf") == (
        "ACCEPTED", "by forward rule 'icmpv6 type echo-request accept' (router/nftables.conf:5)")


def test_a_rst_from_any_address_of_the_next_hop_router_is_genuine_on_ipv6_too(world):
    """Rule fuzzing found it: edge -> the router's servers address 2001:db8:0:10::1 tcp/21 (input
    accepted, nobody listens) was called forged (RST, hop limit 64, not on-link) where the model
    said closed: the agent's `near` (Lab.near) held the next-hop routers' IPv4 addresses only."""
    from types import SimpleNamespace

    from labwarden.realise.lab import Lab
    topology = load_lab(ROOT / "topologies" / "homelab").topology
    near = Lab.near(SimpleNamespace(topology=topology), "edge")
    assert ROUTER6 in near and A("198.18.10.1") in near and A6("2001:db8:0:1::1") in near
    assert ROUTER6 in world.near["edge"]  # what the model takes as 0 hops away
    assert predict(Ruleset((Chain("input", (), "input", 0, "accept"),)), world, "edge", ROUTER6, "tcp", 21).verdict \
        == "closed"
