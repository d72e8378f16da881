"""The nftables model of rule fuzzing, without Docker: its semantics, its rendering, and
every difference rule fuzzing found between it and the kernel (kept here, fixed)."""

from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from labwarden.fuzz.rules import RuleChecker, destinations, port_constants, probe_flows, rulesets
from labwarden.routers.nftables.model import EPHEMERAL, Chain, Match, NamedSet, Packet, Rule, Ruleset
from labwarden.routers.nftables.verdicts import World, kernel_silence, predict
from labwarden.declared.lab import load_lab

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world():
    return World.of(load_lab(ROOT / "topologies" / "homelab").policy)


def fwd(*rules, policy="drop", extra=()):
    return Ruleset((Chain("forward", tuple(rules), "forward", 0, policy), *extra))


def packet(proto="tcp", dport=22, **kw):
    base = dict(hook="forward", iif="servers", oif="personal", saddr=A("198.18.10.10"), daddr=A("198.18.1.10"),
                proto=proto, dport=dport if proto != "icmp" else None,
                icmp_type=8 if proto == "icmp" else None, ct="new")
    return Packet(**{**base, **kw})


ESTABLISHED = Rule((Match("ct_state", ("established", "related")),), "accept")


def test_render_reads_like_a_config():
    rs = Ruleset((Chain("forward", (
        Rule((Match("iifname", ("servers",)), Match("oifname", ("personal", "wan"), negate=True),
              Match("dport", ((22, 22), (80, 90)), proto="tcp")), "accept", counter=True),
        Rule((Match("saddr", (N("198.18.1.0/24"),), set_name="addrs"),), "jump", "c0"),
        Rule((Match("dport", ((53, 53),), proto="th"),), "reject", "icmp admin-prohibited"),
        Rule((Match("l4proto", ("tcp",), proto="ip"),), "reject", "tcp reset"),
    ), "forward", 0, "drop"), Chain("c0", (Rule((), "return"),))),
        (NamedSet("addrs", "ipv4_addr", (N("198.18.1.0/24"),)),))
    text = rs.render()
    assert text.startswith("flush ruleset\n")
    assert 'iifname "servers" oifname != { "personal", "wan" } tcp dport { 22, 80-90 } counter accept' in text
    assert "ip saddr @addrs jump c0" in text
    assert "meta l4proto { tcp, udp } th dport 53 reject with icmp type admin-prohibited" in text
    assert "ip protocol tcp reject with tcp reset" in text
    assert "type filter hook forward priority 0; policy drop;" in text
    assert "elements = { 198.18.1.0/24 }" in text


def test_a_transport_match_carries_its_protocol():
    rs = fwd(Rule((Match("dport", ((22, 22),), negate=True, proto="tcp"),), "drop"), policy="accept")
    assert rs.evaluate(packet("tcp", 80)).verdict == "drop"
    assert rs.evaluate(packet("udp", 80)).verdict == "accept"  # `tcp dport != 22` is not about UDP
    assert rs.evaluate(packet("icmp")).verdict == "accept"


def test_accept_ends_one_base_chain_only():
    late = Chain("late", (Rule((Match("dport", ((22, 22),), proto="tcp"),), "drop"),), "forward", 10, "accept")
    rs = fwd(Rule((), "accept"), extra=(late,))
    decision = rs.evaluate(packet("tcp", 22))
    assert decision.verdict == "drop" and decision.decided_by.chain == "late"
    assert rs.evaluate(packet("tcp", 80)).verdict == "accept"


def test_goto_does_not_come_back_but_jump_does():
    sub = Chain("c0", (Rule((Match("dport", ((80, 80),), proto="tcp"),), "accept"),))
    jumped = fwd(Rule((), "jump", "c0"), Rule((), "accept"), extra=(sub,))
    gone = fwd(Rule((), "goto", "c0"), Rule((), "accept"), extra=(sub,))
    assert jumped.evaluate(packet("tcp", 22)).verdict == "accept"
    decision = gone.evaluate(packet("tcp", 22))
    assert decision.verdict == "drop" and decision.decided_by.text == "policy drop"
    assert gone.evaluate(packet("tcp", 80)).verdict == "accept"


def test_return_resumes_after_the_jump_and_continue_goes_on():
    sub = Chain("c0", (Rule((), "return"), Rule((), "drop")))
    rs = fwd(Rule((), "jump", "c0"), Rule((), "continue"), Rule((), "accept"), extra=(sub,))
    assert rs.evaluate(packet()).verdict == "accept"


def test_oifname_on_the_input_hook_is_empty():
    rs = Ruleset((Chain("input", (Rule((Match("oifname", ("wan",), negate=True),), "drop"),), "input", 0,
                        "accept"),))
    assert rs.evaluate(packet(hook="input", oif="")).verdict == "drop"


def test_a_reply_needs_its_own_rule(world):
    allow_ssh = Rule((Match("dport", ((22, 22),), proto="tcp"),), "accept")
    # laptop -> git:22 through a forward chain with no `ct state established`: the SYN-ACK dies
    assert predict(fwd(allow_ssh), world, "laptop", A("198.18.10.11"), "tcp", 22).verdict == "filtered"
    assert predict(fwd(ESTABLISHED, allow_ssh), world, "laptop", A("198.18.10.11"), "tcp", 22).verdict == "open"
    assert predict(fwd(ESTABLISHED, allow_ssh), world, "laptop", A("198.18.10.11"), "tcp", 23).verdict == "filtered"


def test_a_closed_udp_port_answers_with_a_related_error(world):
    allow_udp = Rule((Match("l4proto", ("udp",)),), "accept")
    only_established = Rule((Match("ct_state", ("established",)),), "accept")
    assert predict(fwd(only_established, allow_udp), world, "laptop", A("198.18.10.10"), "udp", 9).verdict == "filtered"
    assert predict(fwd(ESTABLISHED, allow_udp), world, "laptop", A("198.18.10.10"), "udp", 9).verdict == "closed"


def test_how_the_agent_sees_the_routers_answers(world):
    def inp(*rules):
        return Ruleset((Chain("input", rules, "input", 0, "accept"),))
    reset = Rule((Match("dport", ((80, 80),), proto="tcp"),), "reject", "tcp reset")
    unreachable = Rule((Match("l4proto", ("udp",)),), "reject")
    # a RST in the name of the next hop's address is a closed port (the agent knows the
    # router's addresses: found by rule fuzzing, a wan node probing 198.18.1.1 tcp/21);
    # a RST in the name of a node behind the router is forged by the router
    assert predict(inp(reset), world, "laptop", A("198.18.1.1"), "tcp", 80).verdict == "closed"
    assert predict(inp(reset), world, "laptop", A("198.18.10.1"), "tcp", 80).verdict == "closed"
    assert predict(inp(reset), world, "visitor", A("198.18.1.1"), "tcp", 21).verdict == "closed"
    reset_fwd = fwd(Rule((Match("dport", ((80, 80),), proto="tcp"),), "reject", "tcp reset"))
    assert predict(reset_fwd, world, "laptop", A("198.18.10.10"), "tcp", 80).verdict == "rejected"
    # the router answers a rejected UDP probe to its own address from that address: closed
    assert predict(inp(unreachable), world, "laptop", A("198.18.10.1"), "udp", 9).verdict == "closed"
    assert predict(inp(), world, "laptop", A("198.18.10.1"), "tcp", 22).verdict == "open"
    assert predict(inp(), world, "laptop", A("198.18.1.1"), "tcp", 81).verdict == "closed"
    assert predict(fwd(Rule((), "reject", "icmp host-prohibited")), world, "laptop", A("198.18.10.10"), "udp",
                   53).verdict == "rejected"


REJECT_ALL = (Rule((Match("l4proto", ("tcp",)),), "reject", "tcp reset"), Rule((), "reject"))


def test_a_segments_broadcast_is_the_routers_own_and_nobody_answers_it(world):
    """Measured (Linux 6.18, a router namespace between two /24s, every reject kind): a
    probe to the broadcast address of a segment the router is on meets the *input* hook
    and gets no RST and no ICMP error, whatever the rule (openwrt-homelab's fw4 config:
    gpu -> 198.51.100.255 tcp/4700 rejected by `tcp reset`, observed filtered)."""
    both = Ruleset((Chain("input", REJECT_ALL, "input", 0, "drop"), Chain("forward", REJECT_ALL, "forward", 0, "drop")))
    for proto, port in (("tcp", 4700), ("udp", 4700), ("icmp", None)):
        seen = predict(both, world, "gpu", A("203.0.113.255"), proto, port)
        assert seen.verdict == "filtered" and seen.packet.hook == "input", seen.explain()
        assert seen.decision.verdict == "reject"  # the rule decided; the kernel still answers nothing
    accept = Ruleset((Chain("input", (), "input", 0, "accept"),))
    assert predict(accept, world, "laptop", A("198.18.10.255"), "tcp", 22).verdict == "filtered"
    assert "broadcast" in kernel_silence(A("198.18.10.255"), [N("198.18.10.0/24")])


def test_a_segments_network_address_is_an_ordinary_one(world):
    """Measured: Linux adds no broadcast route for the network address; it is forwarded
    like any address nobody holds, and a reject answers it."""
    both = Ruleset((Chain("forward", REJECT_ALL, "forward", 0, "drop"),))
    seen = predict(both, world, "gpu", A("203.0.113.0"), "tcp", 4700)
    assert seen.verdict == "rejected" and seen.packet.hook == "forward"
    assert predict(both, world, "gpu", A("203.0.113.0"), "udp", 4700).verdict == "rejected"
    assert predict(fwd(Rule((), "accept")), world, "gpu", A("203.0.113.0"), "tcp", 4700).verdict == "filtered"
    assert kernel_silence(A("198.18.10.0"), [N("198.18.10.0/24")]) is None


def test_multicast_and_the_limited_broadcast_are_never_answered():
    """Measured: multicast meets prerouting only (no input, no forward); 255.255.255.255
    meets input; neither is answered by any reject."""
    assert "multicast" in kernel_silence(A("224.0.0.251"), [])
    assert "multicast" in kernel_silence(A("239.1.1.1"), [])
    assert "limited broadcast" in kernel_silence(A("255.255.255.255"), [])
    assert kernel_silence(A("198.18.10.10"), [N("198.18.10.0/24")]) is None
    assert kernel_silence(A("198.18.11.255"), [N("198.18.10.0/24")]) is None  # not the router's segment


def test_rule_fuzzing_probes_the_edges_of_the_routers_other_segments(world):
    dsts = destinations(world, "laptop")
    assert A("198.18.10.255") in dsts and A("203.0.113.255") in dsts
    assert A("198.18.1.255") not in dsts  # its own segment: discovery
    # an address nobody holds meets a failed ARP, whose host-unreachable comes seconds later, in
    # time for a later probe or not (found by rule fuzzing: git -> 198.51.100.0 icmp)
    assert A("198.18.10.0") not in dsts


@pytest.fixture(scope="module")
def airplane():
    return World.of(load_lab(ROOT / "topologies" / "airplane").policy)


def test_nodes_beyond_other_routers_are_judged_on_the_routers_side(airplane):
    """The airplane's gateway is on cabin and uplink only: the internet is reached over the
    satellite. Rule fuzzing failed there with KeyError 'internet' (it took every node for
    the router's neighbour)."""
    assert airplane.iface_towards(A("198.18.60.30")) == "uplink"
    inp = Ruleset((Chain("input", (Rule((), "reject", "tcp reset"),), "input", 0, "accept"),))
    seen = predict(inp, airplane, "edge", A("198.18.50.1"), "tcp", 22)
    assert seen.packet.iif == "uplink"
    assert seen.verdict == "closed"  # the router's RST crosses two routers: its ttl is no longer 64
    # flows that never cross the router are not drawn: edge -> satellite goes round it
    assert A("198.18.51.1") not in destinations(airplane, "edge")
    assert A("198.18.50.10") in destinations(airplane, "edge")
    assert A("198.18.51.255") in destinations(airplane, "laptop")
    assert A("198.18.51.255") not in destinations(airplane, "edge")  # the satellite takes it first


@settings(max_examples=200, database=None, derandomize=True, deadline=None,
          suppress_health_check=list(HealthCheck))
@given(data=__import__("hypothesis").strategies.data())
def test_generated_rulesets_stay_inside_the_grammar(world, data):
    rs = data.draw(rulesets(world))
    assert all(lo >= EPHEMERAL.stop or hi < EPHEMERAL.start
               for c in rs.chains for r in c.rules for m in r.matches if m.key == "dport" for lo, hi in m.values)
    names = {c.name for c in rs.chains}
    assert all(r.arg in names for c in rs.chains for r in c.rules if r.verdict in ("jump", "goto"))
    for s in rs.sets:
        elements = sorted(s.elements)
        if s.kind == "inet_service":
            assert all(a[1] + 1 < b[0] for a, b in zip(elements, elements[1:]))
    src, dst, proto, port = data.draw(probe_flows(world, rs))
    assert predict(rs, world, src, dst, proto, port).verdict in ("open", "closed", "rejected", "filtered")
    assert port_constants(rs) <= set(range(0, 65536))


class ScriptedChecker(RuleChecker):
    """A RuleChecker whose kernel answers are scripted per flow, one per probe (the last repeats)."""

    def __init__(self, world, script, **kw):
        super().__init__(lab=None, policy=None, world=world, **kw)
        self.script = {flow: list(verdicts) for flow, verdicts in script.items()}

    def observe(self, cases, timeout):
        out = {}
        for ruleset, flows in cases:
            for flow in flows:
                verdicts = self.script[flow]
                out[(ruleset, flow)] = (verdicts.pop(0) if len(verdicts) > 1 else verdicts[0], "scripted")
        return out


def test_rule_fuzzing_counts_a_difference_that_does_not_come_again_as_flaky(world):
    ruleset = fwd(ESTABLISHED, policy="drop")            # the model: laptop -> web:80 filtered
    flow = ("laptop", A("198.18.10.10"), "tcp", 80)
    [diff] = ScriptedChecker(world, {flow: ["open", "filtered"]}).check([(ruleset, [flow])])
    assert diff.flaky == ("filtered", "scripted") and "FLAKY: the kernel said open" in diff.message()
    # a silence that answers as the model says when probed alone was a wait too short
    allow = fwd(ESTABLISHED, Rule((), "accept"))
    assert ScriptedChecker(world, {flow: ["filtered", "open"]}).check([(allow, [flow])]) == []
    lossy = ScriptedChecker(world, {flow: ["filtered", "filtered", "open"]}, loss_retries=1)
    assert lossy.check([(allow, [flow])]) == []
    [diff] = ScriptedChecker(world, {flow: ["filtered"]}).check([(allow, [flow])])
    assert diff.kernel == "filtered" and diff.flaky is None
