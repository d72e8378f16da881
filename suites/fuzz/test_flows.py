"""Flow fuzzing against the intent: hypothesis draws flows nobody listed, each is sent
for real from inside its source node, and what it does must be what the policy says.

Each example is a batch of flows sent in one agent request; a flow that fails
is re-sent alone before it counts, the search goes on to the last batch, and the
test then fails with every such flow, each with the rule of the router that
decided it and the command that replays it alone.
"""

import pytest

from labwarden.fuzz.flows.hunt import hunt
from labwarden.fuzz.flows.strategies import batches, odd_flows, probe_flows

BATCH = 64


def test_probes_follow_the_policy(flow_fuzzer, labwarden_policy, aims, fuzz_settings, fuzz_stats,
                                  labwarden_topology, labwarden_router_config):
    """TCP/UDP on boundary-weighted ports, ICMP echo, to nodes, the router, the lab's edges."""
    try:
        hunt(flow_fuzzer, batches(probe_flows(labwarden_policy, aims), BATCH), fuzz_settings("probes"),
             labwarden_topology.name, labwarden_router_config)
    finally:
        fuzz_stats(flow_fuzzer.rate())


@pytest.mark.emulated_only("odd packets are framed with the Docker lab's MAC addresses")
def test_odd_packets_follow_the_policy(flow_fuzzer, labwarden_policy, aims, fuzz_settings, fuzz_stats,
                                       labwarden_topology, labwarden_router_config):
    """TCP flag combinations, fragments, IP options, forged sources, TTL 1, ICMP types, port 0."""
    try:
        hunt(flow_fuzzer, batches(odd_flows(labwarden_policy, aims), BATCH), fuzz_settings("odd"),
             labwarden_topology.name, labwarden_router_config)
    finally:
        fuzz_stats(flow_fuzzer.rate())
