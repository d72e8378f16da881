"""Stateful return traffic: replies to allowed connections pass, the reverse
direction cannot open connections of its own, and ICMP errors about an allowed
flow (the RELATED path) come back to its sender; each on IPv4 and on IPv6.

Each test sends its own probes; which pairs exist is the policy's business
(tests/unit/test_policy.py)."""

import pytest
import pytest_asyncio

from labwarden.checks.matrix import Cell, observe, one_way_pairs

UNUSED_UDP_PORT = 33434  # traceroute's first port: nothing in a lab listens there


def _routed(policy, flow):
    """True when the flow crosses the router (source and destination on different segments)."""
    topology = policy.topology
    return flow.dst_node not in (None, policy.router) and \
        not topology.on_link(topology.nodes[flow.src], flow.dst)


def related_flows(policy):
    """Per source zone and address family, one UDP probe across the router to a closed port
    the policy lets it reach (its port-unreachable is an ICMP or ICMPv6 error)."""
    flows = {}
    for src in policy.topology.nodes:
        for version in (4, 6):
            if src == policy.router or (policy.zone_of(src), version) in flows:
                continue
            for node in policy.topology.nodes.values():
                candidates = [policy.flow(src, a, f"udp/{UNUSED_UDP_PORT}") for a in node.all_addresses()
                              if a.version == version]
                candidates = [f for f in candidates if _routed(policy, f)
                              and policy.expect(f).verdicts == {"closed"}]
                if candidates:
                    flows[policy.zone_of(src), version] = candidates[0]
                    break
    return list(flows.values())


async def _judged(lab, policy, flows, timeout, report, group):
    observed = await observe(lab, flows, timeout)
    cells = [Cell(f, policy.expect(f), observed[f]) for f in flows]
    report.add_cells(cells, policy, group=group)
    return cells


@pytest_asyncio.fixture(loop_scope="session")
async def one_way_cells(lab, labwarden_policy, probe_timeout, labwarden_report, positive_controls):
    """Both directions of every one-way zone pair, sent now in one batch."""
    pairs = one_way_pairs(labwarden_policy)
    if not pairs:
        pytest.skip("the policy has no one-way zone pair to check")
    positive_controls.require(*(n for fwd, _ in pairs for n in (fwd.src, fwd.dst_node)))
    return await _judged(lab, labwarden_policy, [f for pair in pairs for f in pair], probe_timeout,
                         labwarden_report, "stateful: one-way pairs")


@pytest_asyncio.fixture(loop_scope="session")
async def related_cells(lab, labwarden_policy, probe_timeout, labwarden_report, positive_controls):
    flows = related_flows(labwarden_policy)
    if not flows:
        pytest.skip("no allowed UDP path crosses the router: the RELATED path cannot be checked")
    positive_controls.require(*(n for f in flows for n in (f.src, f.dst_node)))
    return await _judged(lab, labwarden_policy, flows, probe_timeout, labwarden_report,
                         "stateful: related ICMP errors")


def test_replies_pass_but_new_connections_do_not(one_way_cells, labwarden_policy):
    wrong = [c.message(labwarden_policy) for c in one_way_cells if not c.ok]
    assert not wrong, "stateful filtering is wrong:\n  " + "\n  ".join(wrong)


def test_related_icmp_errors_come_back(related_cells, labwarden_policy):
    """A UDP probe across the router to a closed port gets the target's port-unreachable back."""
    wrong = [c.message(labwarden_policy) for c in related_cells if not c.ok or c.observed.by != c.flow.dst]
    assert not wrong, "ICMP errors about allowed flows did not come back:\n  " + "\n  ".join(wrong)
