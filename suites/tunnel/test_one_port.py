"""Nothing but the declared service is exposed through the tunnel: a full TCP scan
(and a UDP scan of the usual ports) of the edge finds its own services and the
tunnels' public ports only, and the public port is not a proxy (SOCKS, HTTP
CONNECT) into the client: one local port, not the node."""

import pytest

from labwarden.checks import tunnel as tunnels


@pytest.mark.asyncio(loop_scope="session")
async def test_the_edge_exposes_one_port_not_the_node(lab, tunnel_policy, tunnel_case, probe_timeout):
    found = await tunnels.exposure(lab, tunnel_policy, tunnel_case, probe_timeout)
    problems = found.problems(tunnel_policy, tunnel_case)
    assert not problems, "\n".join(problems)
