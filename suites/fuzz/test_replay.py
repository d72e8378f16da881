"""Replays one flow, as a failure of suites/fuzz prints it:

    python3 -m pytest suites/fuzz/test_replay.py --lw-fuzz-replay 'web 198.18.1.10 tcp/31337' \
        --lw-router-config topologies/homelab/mutants/odd-port.nft

Sends it alone (with --lw-probe-timeout), judges it by the same oracle, and
explains a mismatch with the rule of the router that decided it.
"""

from labwarden.fuzz.flows.hunt import describe
from labwarden.fuzz.flows.oracle import expect_flow


def test_replay(flow_fuzzer, labwarden_policy, labwarden_topology, labwarden_router_config, fuzz_replay_flow):
    flow = fuzz_replay_flow  # parsed and checked before the lab started
    bad = flow_fuzzer.check([flow])
    seen = flow_fuzzer.seen[flow]
    print(f"{flow.label(labwarden_policy)}: expected {expect_flow(labwarden_policy, flow)}, "
          f"observed {seen.outcome} ({seen.detail})")
    assert not bad, describe(flow_fuzzer, bad, labwarden_topology.name, labwarden_router_config)
