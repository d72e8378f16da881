"""Local-only zones (the GPU VM): nothing from a zone the policy does not name may
land on them, by any address or port-forward; the zones it names do reach their
services.

Both families: every IPv4 and IPv6 address of every node is a matrix destination.
A flow lands where the oracle says it is reached, or where the probe's answer
came from; a connection that answers where the policy expects silence is
followed (every node captures while it is made again) to the node it lands on,
so a DNAT of the public address to the GPU is caught whatever address it was
sent to. Which nodes are local-only, and who may reach them, is the policy's
business (tests/unit/test_policy.py).
"""

import pytest_asyncio

from labwarden.checks.landing import locate
from labwarden.plugin import lab_config
from labwarden.checks.matrix import local_only_nodes, reachers


def pytest_generate_tests(metafunc):
    if "local_node" in metafunc.fixturenames:
        _, policy = lab_config(metafunc.config)
        nodes = [n for n in local_only_nodes(policy) if policy.services.get(n)]
        metafunc.parametrize("local_node", nodes, ids=[policy.label(n) for n in nodes])


@pytest_asyncio.fixture(loop_scope="session")
async def landing(lab, matrix, labwarden_policy, probe_timeout, local_node):
    """(cells that land on the node or were sent to it, {flow: (its ports where an unexpected
    answer landed, the NAT rule that sent it there or None)})."""
    policy = labwarden_policy
    node = policy.topology.nodes[local_node]
    mine = set(node.all_addresses())
    cells = [c for c in matrix.cells.values() if local_node in (c.flow.dst_node, c.expected.reached)
             or c.observed.by in mine]
    allowed = reachers(policy, local_node)
    strangers = [c for c in matrix.cells.values() if policy.zone_of(c.flow.src) not in allowed
                 and c.flow.proto == "tcp" and c.expected.reached is None
                 and c.observed.verdict in ("open", "closed")]
    matrix.controls.require(local_node, *{c.flow.src for c in cells + strangers})
    landings = {}
    for src in sorted({c.flow.src for c in strangers}):
        found = await locate(lab, policy, src, [c.flow for c in strangers if c.flow.src == src], probe_timeout)
        landings.update({f: (ports, found[f].rule) for f in found
                         if (ports := [p for n, p in found[f].landed if n == local_node])})
    return cells, landings


def test_services_reach_only_whom_the_policy_names(landing, matrix, labwarden_policy, local_node):
    policy = labwarden_policy
    cells, landings = landing
    wrong = [c.message(policy) for c in cells if not c.ok]
    wrong += [f"{matrix.cells[f].message(policy)}; the connection lands on {policy.label(local_node)} "
              + ", ".join(f"tcp/{p}" for p in ports) + (f", sent there by {rule}" if rule else "")
              for f, (ports, rule) in landings.items()]
    allowed = ", ".join(sorted(reachers(policy, local_node))) or "nowhere"
    assert not wrong, (f"{policy.label(local_node)} is not local-only as declared "
                       f"(reachable from {allowed} only):\n  " + "\n  ".join(wrong))
