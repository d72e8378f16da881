"""When the tunnel client dies (killed) or hangs (frozen), the edge answers a visitor
with an error within a bounded time and the suite reads `tunnel down`; when the
client is back, the page is served again. Needs the client in a container of its
own that shares the client node's network namespace (Docker labs)."""

import pytest

from labwarden.checks import tunnel as tunnels


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.emulated_only("it kills and freezes the tunnel client's container")
@pytest.mark.parametrize("kind", ["killed", "hung"])
async def test_the_edge_reports_a_dead_client_and_recovers(lab, tunnel_policy, tunnel_case, kind,
                                                           probe_timeout, say):
    policy, t = tunnel_policy, tunnel_case
    if not tunnels.client_containers(lab, t):
        pytest.skip(f"{t.client}'s tunnel client has no container of its own to {kind[:-2]} "
                    f"(network_mode: service:{t.client})")
    before = await tunnels.status(lab, policy, t, tunnels.visitors(policy, t)[0], probe_timeout)
    assert before.state == "up", f"before the fault: {before.explain(policy)}"
    seen = await tunnels.fault(lab, policy, t, kind, probe_timeout)
    say(f"\ntunnel '{t.name}': {seen.explain(policy)}")
    assert seen.down_after_s is not None, f"tunnel '{t.name}': {seen.explain(policy)}"
    assert seen.up_after_s is not None, f"tunnel '{t.name}': {seen.explain(policy)}"
