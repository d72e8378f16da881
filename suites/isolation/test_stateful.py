"""Stateful return traffic: replies to allowed connections pass, the reverse
direction cannot open connections of its own, and ICMP errors about an allowed
flow (the RELATED path) come back to its sender."""

import pytest

from labwarden.matrix import Cell, observe

UNUSED_UDP_PORT = 33434  # traceroute's first port: nothing in a lab listens there


def _routed(policy, flow):
    """True when the flow crosses the router (source and destination on different segments)."""
    topology = policy.topology
    return flow.dst_node not in (None, policy.router) and \
        not topology.on_link(topology.nodes[flow.src], flow.dst)


def one_way_pairs(policy, cells):
    """(allowed flow, reverse flow) per zone pair where only one side may initiate."""
    pairs = {}
    for flow, cell in cells.items():
        if cell.expected.verdicts != {"open"} or not _routed(policy, flow):
            continue
        key = (policy.zone_of(flow.src), policy.zone_of(flow.dst_node))
        if key in pairs:
            continue
        src_node = policy.topology.nodes[flow.src]
        for reverse, rcell in cells.items():
            if (reverse.src == flow.dst_node and reverse.dst in src_node.addresses.values()
                    and reverse.proto != "icmp" and rcell.expected.reached is None
                    and policy.expect(reverse).reason != "same segment"
                    and (reverse.proto, reverse.port) in {(s.proto, s.port) for s in policy.services.get(flow.src, ())}):
                pairs[key] = (flow, reverse)
                break
    return list(pairs.values())


def test_replies_pass_but_new_connections_do_not(matrix, labwarden_policy):
    pairs = one_way_pairs(labwarden_policy, matrix.cells)
    assert pairs, "the policy has no one-way zone pair to check"
    wrong = []
    for forward, reverse in pairs:
        for flow in (forward, reverse):
            cell = matrix.cells[flow]
            if not cell.ok:
                wrong.append(cell.message(labwarden_policy))
    assert not wrong, "stateful filtering is wrong:\n  " + "\n  ".join(wrong)


async def test_related_icmp_errors_come_back(lab, labwarden_policy, probe_timeout, labwarden_report):
    """A UDP probe across the router to a closed port gets the target's port-unreachable back."""
    policy = labwarden_policy
    flows = {}
    for src in policy.topology.nodes:
        if src == policy.router or policy.zone_of(src) in {policy.zone_of(f.src) for f in flows.values()}:
            continue
        for dst, node in policy.topology.nodes.items():
            candidates = [policy.flow(src, a, f"udp/{UNUSED_UDP_PORT}") for a in node.addresses.values()]
            candidates = [f for f in candidates if _routed(policy, f)
                          and policy.expect(f).verdicts == {"closed"}]
            if candidates:
                flows[src] = candidates[0]
                break
    assert flows, "no allowed UDP path crosses the router: the RELATED path cannot be checked"
    observed = await observe(lab, list(flows.values()), probe_timeout)
    cells = [Cell(f, policy.expect(f), o) for f, o in observed.items()]
    labwarden_report.add_cells(cells, policy, group="stateful: related ICMP errors")
    wrong = [c.message(policy) for c in cells
             if not c.ok or c.observed.by != c.flow.dst]
    assert not wrong, "ICMP errors about allowed flows did not come back:\n  " + "\n  ".join(wrong)
