"""Flow fuzzing on IPv6, without Docker: dual-stack nodes draw probes to IPv6 addresses, the
oracle judges them, a replay spec reads them back; IPv4-only labs draw none."""

from ipaddress import IPv6Address as A6
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labwarden.declared.lab import load_lab
from labwarden.fuzz.flows.flow import FuzzFlow
from labwarden.fuzz.flows.oracle import expect_flow
from labwarden.fuzz.flows.strategies import probe_destinations, probe_flows

ROOT = Path(__file__).resolve().parents[2]
HOMELAB = load_lab(ROOT / "topologies" / "homelab").policy
AIRPLANE = load_lab(ROOT / "topologies" / "airplane").policy


def test_dual_stack_nodes_aim_at_ipv6_addresses_and_ipv4_only_labs_do_not():
    aims = probe_destinations(HOMELAB, "laptop")
    assert A6("2001:db8:0:10::10") in aims and A6("2001:db8:0:1::1") in aims
    assert {a.version for a in aims} == {4, 6}
    for node in AIRPLANE.topology.nodes:
        assert {a.version for a in probe_destinations(AIRPLANE, node)} == {4}


@settings(max_examples=300, database=None, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_drawn_ipv6_flows_are_ordinary_probes_the_oracle_judges(data):
    flow = data.draw(probe_flows(HOMELAB))
    if flow.dst.version == 6:
        assert not flow.raw and HOMELAB.topology.nodes[flow.src].addresses6
    assert FuzzFlow.parse(flow.spec(), HOMELAB) == flow
    assert expect_flow(HOMELAB, flow).outcomes


def test_the_oracle_judges_ipv6_flows_by_the_policy():
    def outcomes(spec):
        return expect_flow(HOMELAB, FuzzFlow.parse(spec, HOMELAB)).outcomes
    assert outcomes("web 2001:db8:0:1::10 tcp/22") == {"filtered"}     # servers -> personal: denied
    assert outcomes("laptop 2001:db8:0:10::10 tcp/80") == {"open"}     # personal -> servers web
    assert outcomes("visitor 2001:db8:0:10::10 tcp/80") == {"open"}    # the IPv6 pinhole
    assert outcomes("visitor 2001:db8:0:10::10 tcp/22") == {"filtered"}
