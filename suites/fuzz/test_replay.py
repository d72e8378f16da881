"""Replays one flow, as a failure of suites/fuzz prints it:

    python3 -m pytest suites/fuzz/test_replay.py --fuzz-replay 'web 198.18.1.10 tcp/31337' \
        --router-config topologies/homelab/mutants/odd-port.nft

Sends it alone (with --probe-timeout), judges it by the same oracle, and
explains a mismatch with the rule of the router that decided it.
"""

from labwarden.fuzz.flows.flow import FuzzFlow
from labwarden.fuzz.flows.hunt import describe
from labwarden.fuzz.flows.oracle import expect_flow


def test_replay(flow_fuzzer, labwarden_policy, labwarden_topology, labwarden_router_config, pytestconfig):
    flow = FuzzFlow.parse(pytestconfig.getoption("--fuzz-replay"), labwarden_policy)
    bad = flow_fuzzer.check([flow])
    seen = flow_fuzzer.seen[flow]
    print(f"{flow.label(labwarden_policy)}: expected {expect_flow(labwarden_policy, flow)}, "
          f"observed {seen.outcome} ({seen.detail})")
    assert not bad, describe(flow_fuzzer, bad, labwarden_topology.name, labwarden_router_config)
