"""The published service is reachable only through the tunnel: no outside node reaches
the client directly (its addresses, or the router's public address on the tunnel's
ports), and the tunnel itself is the client's own outbound connection to the edge.
That the policy itself opens no such way (no forward to the client, no allow from
outside) is a property of the policy file, tested without a lab in
tests/unit/test_tunnel_policy.py."""

import pytest

from labwarden.checks import tunnel as tunnels


@pytest.mark.asyncio(loop_scope="session")
async def test_no_way_to_the_client_but_the_tunnel(lab, tunnel_policy, tunnel_case, probe_timeout):
    policy, t = tunnel_policy, tunnel_case
    cells = await tunnels.direct_reach(lab, policy, t, probe_timeout)
    wrong = [c.message(policy) for c in cells if not c.ok]
    assert not wrong, f"tunnel '{t.name}': reachable other than through the tunnel:\n  " + "\n  ".join(wrong)


@pytest.mark.asyncio(loop_scope="session")
async def test_the_tunnel_is_the_clients_outbound_connection(lab, tunnel_policy, tunnel_case, say):
    policy, t = tunnel_policy, tunnel_case
    seen = await tunnels.connection(lab, policy, t)
    assert seen.outbound, (f"tunnel '{t.name}': no outbound connection from {policy.label(t.client)} to "
                           f"a port {policy.label(t.edge)} listens on: {seen.explain(policy)}")
    say(f"\ntunnel '{t.name}': {seen.explain(policy)}")
