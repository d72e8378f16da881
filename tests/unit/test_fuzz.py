"""Flow fuzzing's pure parts, without Docker: flows and their one-line form, the oracle
for odd packets and for addresses the kernel never answers, aims taken from a router
config, reassembly of captured fragments, reading an nft trace back to the config file's
lines, and how failures are confirmed, marked flaky and all reported (with the observations
scripted in place of a lab)."""

from ipaddress import IPv4Address as A
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labwarden.fuzz.flows.aims import config_aims
from labwarden.fuzz.flows.flow import FuzzFlow
from labwarden.fuzz.flows.fuzzer import FlowFuzzer, Seen
from labwarden.fuzz.flows.hunt import hunt, replay_command
from labwarden.fuzz.flows.oracle import ARRIVED, LOST, expect_flow
from labwarden.fuzz.flows.packets import arrivals, craft
from labwarden.fuzz.flows.strategies import (Batch, batches, edge_addresses, interesting_ports, odd_destinations,
                                             odd_flows, probe_destinations, probe_flows)
from labwarden.checks.matrix import matrix_services
from labwarden.routers.nftables.trace import Event, TracedPacket, explain, parse_config, parse_events, parse_listing, stories
from labwarden.declared.lab import load_lab

ROOT = Path(__file__).resolve().parents[2]
HOMELAB = ROOT / "topologies" / "homelab"
OPENWRT = ROOT / "topologies" / "openwrt-homelab"
ODD_PORT = HOMELAB / "mutants" / "odd-port.nft"


@pytest.fixture(scope="module")
def policy():
    return load_lab(HOMELAB).policy


def test_a_flow_reads_back_from_its_spec(policy):
    for flow in (FuzzFlow("web", A("198.18.1.10"), "tcp", 31337),
                 FuzzFlow("laptop", A("198.18.10.10"), "tcp", 22, ("flags", "SF")),
                 FuzzFlow("gpu", A("203.0.113.10"), "icmp", None, ("icmp", "13/0")),
                 FuzzFlow("visitor", A("198.18.10.10"), "udp", 0)):
        assert FuzzFlow.parse(flow.spec(), policy) == flow
    assert FuzzFlow("web", A("198.18.1.10"), "tcp", 31337).label(policy) == \
        "servers/web -> personal/laptop tcp/31337"
    with pytest.raises(ValueError):
        FuzzFlow.parse("web 198.18.1.10", policy)
    command = replay_command(FuzzFlow("web", A("198.18.1.10"), "tcp", 31337, ("flags", "")), "homelab", ODD_PORT)
    assert "--lw-fuzz-replay 'web 198.18.1.10 tcp/31337 flags='" in command
    assert command.endswith("--lw-router-config topologies/homelab/mutants/odd-port.nft") or str(ODD_PORT) in command


def test_odd_packets_never_cross_a_deny(policy):
    def outcome(spec):
        return expect_flow(policy, FuzzFlow.parse(spec, policy)).outcomes
    assert outcome("web 198.18.1.10 tcp/22 flags=SF") == {LOST}            # servers -> personal: denied
    assert outcome("laptop 198.18.10.10 tcp/22 flags=SF") == {ARRIVED, LOST}  # allowed: not promised
    assert outcome("laptop 198.18.10.10 tcp/22 frag=split") == {ARRIVED}    # conntrack reassembles it
    assert outcome("laptop 198.18.10.10 udp/22 frag=split") == {LOST}       # udp/22 is not allowed
    assert outcome("laptop 198.18.10.10 udp/53 ttl=1") == {LOST}
    assert outcome("laptop 198.18.1.11 udp/53 ttl=1") == {ARRIVED}          # on-link: no router
    assert outcome("laptop 203.0.113.10 udp/53 spoof=198.18.10.11") == {LOST}   # antispoof
    assert outcome("visitor 203.0.113.20 udp/53 spoof=198.51.100.77") == {ARRIVED}
    assert outcome("laptop 198.18.10.10 icmp icmp=8/5") == {ARRIVED}        # an echo request of any code
    assert outcome("laptop 198.18.10.10 icmp icmp=13/0") == {LOST}          # not echo: not allowed
    assert outcome("laptop 203.0.113.10 icmp icmp=13/0") == {ARRIVED, LOST}  # 'everyone goes out': any
    assert outcome("laptop 203.0.113.10 tcp/0") == {ARRIVED}


def test_probes_to_nobody_may_be_silent_or_refused(policy):
    assert expect_flow(policy, FuzzFlow("laptop", A("198.18.10.254"), "tcp", 22)).outcomes == \
        {"filtered", "rejected"}
    assert expect_flow(policy, FuzzFlow("web", A("198.18.1.10"), "tcp", 31337)).outcomes == {"filtered"}


def test_a_segments_broadcast_is_never_answered_whatever_the_policy_says():
    """openwrt-homelab rejects what it denies, but a flow to a segment's broadcast address
    is the router's own broadcast: no RST, no ICMP error (see nft_model.kernel_silence).
    The unmodified config failed with `gpu/gpu -> 198.51.100.255 tcp/4700 ... expected
    rejected, observed filtered`."""
    openwrt = load_lab(OPENWRT).policy
    for spec in ("gpu 198.51.100.255 tcp/4700", "gpu 198.51.100.255 udp/53", "gpu 198.19.1.255 icmp",
                 "laptop 198.19.30.255 tcp/22"):  # denied and allowed alike
        expected = expect_flow(openwrt, FuzzFlow.parse(spec, openwrt))
        assert expected.outcomes == {"filtered"} and "broadcast" in expected.reason, spec
    # the network address is an ordinary one to Linux: the router rejects it like any other
    assert expect_flow(openwrt, FuzzFlow.parse("gpu 198.51.100.0 tcp/4700", openwrt)).outcomes == {"rejected"}
    # fw4's port-forwards match any destination address (`daddr: any`): DNAT in prerouting
    # rewrites a broadcast, or an address outside the lab, before it is routed (found on the
    # unmodified config: visitor -> 198.19.19.255 tcp/443 landed on web)
    for spec in ("visitor 198.19.20.255 tcp/443", "visitor 198.19.19.255 tcp/443"):
        expected = expect_flow(openwrt, FuzzFlow.parse(spec, openwrt))
        assert expected.outcomes == {"open"} and "Forward-HTTPS-to-web" in expected.reason, spec


def test_edges_stay_inside_ranges_that_are_never_real(policy):
    edges = edge_addresses(policy)
    assert A("198.18.10.255") in edges and A("198.18.11.0") in edges and A("198.18.10.254") in edges
    assert A("203.0.114.0") not in edges  # a real network


def test_the_odd_port_is_aimed_at_by_the_fuzzer_and_missed_by_the_matrix(policy):
    """The mutant opens tcp/31337 from servers to personal: no port the matrix probes."""
    assert ("tcp", 31337) not in {(s.proto, s.port) for s in matrix_services(policy)}
    aims = config_aims(policy, ODD_PORT.read_text())
    aim = next(a for a in aims if 31337 in a.ports)
    assert set(aim.srcs) == {"web", "git"} and aim.protos == ("tcp",)
    assert set(aim.dsts) == {A("198.18.1.10"), A("198.18.1.11"), A("198.18.1.12")}
    assert 31337 in interesting_ports(policy, aims)
    assert not any(31337 in a.ports for a in config_aims(policy, (HOMELAB / "router/nftables.conf").read_text()))


@settings(max_examples=150, database=None, derandomize=True, deadline=None,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_every_drawn_flow_has_an_expectation_and_packets(policy, data):
    aims = config_aims(policy, ODD_PORT.read_text())
    for flow in data.draw(batches(probe_flows(policy, aims) | odd_flows(policy, aims), 8)).flows:
        expected = expect_flow(policy, flow)
        assert expected.outcomes
        if flow.raw:
            marker = b"lwfuzz-0123456789ab"
            sent = craft(policy, flow, 20001, marker)
            frames = [{"dir": "in", "hex": "00" * 12 + "0800" + item["l3"]} for item in sent]
            assert arrivals(frames, {marker: flow}) == {flow}, flow  # the marker survives reassembly


TRACE = """\
trace id 0f2b8c41 inet labwarden_trace prerouting packet: iif "servers" ether saddr 02:42:c6:12:0a:0a ether daddr 02:42:c6:12:0a:01 ip saddr 198.18.10.10 ip daddr 198.18.1.10 ip dscp cs0 ip ecn not-ect ip ttl 64 ip id 4242 ip protocol tcp ip length 60 tcp sport 40000 tcp dport 31337 tcp flags == syn tcp window 64240
trace id 0f2b8c41 inet labwarden_trace prerouting rule ip saddr { 198.18.1.10, 198.18.10.10 } meta nftrace set 1 # handle 3 (verdict continue)
trace id 0f2b8c41 inet labwarden_trace prerouting verdict continue
trace id 0f2b8c41 inet labwarden_trace prerouting policy accept
trace id 0f2b8c41 inet filter antispoof packet: iif "servers" ip saddr 198.18.10.10 ip daddr 198.18.1.10 ip id 4242 ip protocol tcp tcp sport 40000 tcp dport 31337
trace id 0f2b8c41 inet filter antispoof verdict continue
trace id 0f2b8c41 inet filter antispoof policy accept
trace id 0f2b8c41 inet filter forward packet: iif "servers" oif "personal" ip saddr 198.18.10.10 ip daddr 198.18.1.10 ip id 4242 ip protocol tcp tcp sport 40000 tcp dport 31337
trace id 0f2b8c41 inet filter forward rule iifname "servers" oifname "personal" tcp dport 31337 accept # handle 21 (verdict accept)
trace id 0f2b8c41 ip nat postrouting packet: oif "personal" ip saddr 198.18.10.10 ip daddr 198.18.1.10 ip id 4242 ip protocol tcp tcp sport 40000 tcp dport 31337
trace id 0f2b8c41 ip nat postrouting verdict continue
trace id 0f2b8c41 ip nat postrouting policy accept
trace id 77aa0001 inet labwarden_trace prerouting packet: iif "servers" ip saddr 198.18.10.10 ip daddr 198.18.1.10 ip id 4243 ip protocol tcp tcp sport 40001 tcp dport 23
trace id 77aa0001 inet labwarden_trace prerouting policy accept
trace id 77aa0001 inet filter forward packet: iif "servers" oif "personal" ip saddr 198.18.10.10 ip daddr 198.18.1.10 ip id 4243 ip protocol tcp tcp sport 40001 tcp dport 23
trace id 77aa0001 inet filter forward verdict continue
trace id 77aa0001 inet filter forward policy drop
"""


def _listing(config: str) -> str:
    """What `nft -a list ruleset` prints for a config: handles in the order of the rules."""
    lines, handle = [], 10
    for chain, entry in parse_config(config).items():
        family, table, name = chain
        lines += [f"table {family} {table} {{ # handle 1", f"\tchain {name} {{ # handle 2",
                  f"\t\t{entry['policy'].text if entry['policy'] else ''}"]
        for rule in entry["rules"]:
            handle += 1
            lines.append(f"\t\t{rule.text} # handle {handle}")
        lines += ["\t}", "}"]
    return "\n".join(lines)


def test_a_trace_names_the_deciding_rule_and_its_line():
    config = ODD_PORT.read_text()
    listing = _listing(config).replace("# handle 21", "# handle 9921")
    rules = parse_config(config)[("inet", "filter", "forward")]
    odd = next(r for r in rules["rules"] if "31337" in r.text)
    assert odd.line == 38 and rules["policy"].line == 30
    handles = parse_listing(listing)[0][("inet", "filter", "forward")]
    listing = listing.replace(f"# handle {handles[rules['rules'].index(odd)]}", "# handle 21")
    packets = parse_events(TRACE.splitlines())
    assert len(packets) == 2
    flows = {"odd": ({A("198.18.10.10")}, A("198.18.1.10"), "tcp", 31337, {A("198.18.1.10")}),
             "telnet": ({A("198.18.10.10")}, A("198.18.1.10"), "tcp", 23, {A("198.18.1.10")})}
    told = stories(packets, flows)
    fate, by = explain(told["odd"], listing, config, "mutants/odd-port.nft")
    assert fate == "ACCEPTED"
    assert by == ("by forward rule 'iifname \"servers\" oifname \"personal\" tcp dport 31337 accept' "
                  "(mutants/odd-port.nft:38)")
    fate, by = explain(told["telnet"], listing, config, "mutants/odd-port.nft")
    assert (fate, by) == ("DROPPED", "by forward policy drop (mutants/odd-port.nft:30)")


class UntracedLab:
    """What the fuzzer asks of a lab when explaining: a router whose config is not ours."""

    def router_firewall(self):
        return None


class Scripted(FlowFuzzer):
    """A FlowFuzzer whose observations are scripted per flow, one per send (the last repeats)."""

    def __init__(self, policy, script: dict, **kw):
        super().__init__(lab=UntracedLab(), policy=policy, **kw)
        self.script = {f: list(outcomes) for f, outcomes in script.items()}

    def observe(self, flows, timeout=None, trace=None):
        self.batches += 1
        out = {}
        for flow in flows:
            outcomes = self.script.get(flow, ["filtered"])
            out[flow] = Seen(outcomes.pop(0) if len(outcomes) > 1 else outcomes[0], f"send {self.batches}")
        return out


OPENING = FuzzFlow("web", A("198.18.1.10"), "tcp", 31337)       # servers -> personal: denied
ALLOWED = FuzzFlow("laptop", A("198.18.10.10"), "tcp", 80)       # personal -> web:80: open


def test_a_failure_that_does_not_come_again_is_flaky_never_a_pass(policy):
    fuzzer = Scripted(policy, {OPENING: ["closed", "filtered"], ALLOWED: ["open"]})
    [failure] = fuzzer.check([OPENING, ALLOWED])
    assert failure.flaky and failure.seen.outcome == "closed" and failure.alone.outcome == "filtered"
    message = failure.message(policy)
    assert message.startswith("FLAKY: servers/web -> personal/laptop tcp/31337")
    assert "observed closed (send 1) in its batch, but filtered (send 2) when re-sent alone" in message
    assert fuzzer.check([OPENING]) == [failure]  # remembered, not sent again
    assert fuzzer.batches == 2


def test_a_silence_that_answers_when_re_sent_alone_was_a_short_wait(policy):
    fuzzer = Scripted(policy, {ALLOWED: ["filtered", "open"]})
    assert fuzzer.check([ALLOWED]) == []
    assert fuzzer.answered_alone == [ALLOWED] and "answered when re-sent alone: laptop" in fuzzer.rate()
    fuzzer = Scripted(policy, {ALLOWED: ["filtered"]})  # silent every time: it fails, not flaky
    [failure] = fuzzer.check([ALLOWED])
    assert not failure.flaky and failure.message(policy).endswith("observed filtered (send 2) "
                                                                  "(in its batch: filtered, send 1)")


def test_on_a_lossy_lab_a_silence_is_re_sent_before_it_counts(policy):
    script = {ALLOWED: ["filtered", "filtered", "filtered", "open"]}
    assert Scripted(policy, script, loss_retries=3).check([ALLOWED]) == []
    assert Scripted(policy, script, loss_retries=1).check([ALLOWED])


def test_the_hunt_goes_on_after_a_failure_and_reports_them_all(policy):
    """Hypothesis stops at its first failure: a false alarm drawn first would hide an opening
    drawn later. hunt records failures and draws every batch; the opening comes first."""
    false_alarm = FuzzFlow("laptop", A("198.18.10.11"), "tcp", 22)   # git:22 allowed and listening
    others = [FuzzFlow("laptop", A("198.18.10.10"), "tcp", p) for p in (80, 443)]
    order = [false_alarm, *others, OPENING]
    fuzzer = Scripted(policy, {false_alarm: ["filtered"], OPENING: ["open"], **{f: ["open"] for f in others}})
    strategy = st.integers(0, len(order) - 1).map(lambda i: Batch((order[i],)))
    quick = settings(max_examples=40, database=None, derandomize=True, deadline=None,
                     suppress_health_check=list(HealthCheck))
    with pytest.raises(AssertionError) as failed:
        hunt(fuzzer, strategy, quick, "homelab")
    text = str(failed.value)
    assert text.splitlines()[0].startswith("servers/web -> personal/laptop tcp/31337: expected filtered")
    assert "personal/laptop -> servers/git tcp/22: expected open" in text
    assert "replay alone: python3 -m pytest suites/fuzz/test_replay.py --lw-fuzz-replay 'web 198.18.1.10 tcp/31337'" \
        in text
    assert text.endswith("2 flow(s) do not follow the policy")
    assert set(fuzzer.seen) == set(order)  # every batch was drawn and sent


def test_beyond_the_router_odd_packets_meet_other_routers():
    """The airplane's internet is reached over the satellite and the ground station: a
    packet between wan nodes never crosses the gateway (its antispoofing is not in the way),
    and one to an address of the next hop itself is delivered there, not forwarded (ttl 1
    is enough). The suite reported both as failures on the airplane."""
    airplane = load_lab(ROOT / "topologies" / "airplane").policy

    def outcome(spec):
        return expect_flow(airplane, FuzzFlow.parse(spec, airplane)).outcomes
    assert outcome("visitor 198.18.52.1 udp/54 ttl=1") == {ARRIVED}               # ground's other address
    assert outcome("visitor 198.18.50.10 udp/54 ttl=1") == {LOST}                 # expires at ground
    assert outcome("edge 198.18.51.1 udp/9 spoof=198.18.50.11") == {ARRIVED, LOST}  # wan to wan: no gateway
    assert outcome("laptop 198.18.60.10 udp/9 spoof=198.18.60.30") == {LOST}      # through the gateway


def test_the_router_is_probed_from_on_its_own_segments_only():
    """Its own traffic to farther places crosses none of the policy's rules (the matrix does
    not probe from it either): the airplane's gateway to the internet failed as 'default deny'."""
    airplane = load_lab(ROOT / "topologies" / "airplane").policy
    drawn = set(probe_destinations(airplane, "gateway")) | set(odd_destinations(airplane, "gateway"))
    assert A("198.18.51.1") in drawn and A("198.18.50.10") in drawn
    assert not any(a in drawn for a in (A("198.18.60.10"), A("198.18.52.1")))


def test_an_accept_in_a_chain_jumped_to_is_the_deciding_one():
    """fw4 accepts in regular chains (`input` jumps to `input_gpu`, which jumps to
    `accept_from_gpu`); its `mangle_input` base chain (priority mangle, before filter) only
    passes packets on with its policy. The trace named that policy as deciding
    (openwrt-homelab's gpu-input-accept mutant)."""
    def event(chain, kind, text, verdict):
        return Event("inet", "fw4", chain, kind, text, None, verdict)
    accept = event("accept_from_gpu", "rule", 'iifname "gpu0" counter accept', "accept")
    packet = TracedPacket({}, [event("mangle_input", "policy", "accept", "accept"),
                               event("input", "rule", 'iifname "gpu0" jump input_gpu', "jump input_gpu"),
                               event("input_gpu", "rule", "jump accept_from_gpu", "jump accept_from_gpu"),
                               accept])
    hooks = {("inet", "fw4", "mangle_input"): ("filter", "input"), ("inet", "fw4", "input"): ("filter", "input")}
    assert packet.decided_by(hooks) is accept
