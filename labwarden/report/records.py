"""One probe as a report holds it: the record, its status against the policy, and the legend.

Plain dicts (they are the JSON document's); no HTML here (`labwarden.report.html`)
and no Report (`labwarden.report.model`).
"""

from __future__ import annotations

REACHED = ("open", "closed")  # the probe got to a host (a service answered, or the host refused)

# how a probe, and a grid cell, compares with the policy
PASS, BLOCKED, LEAK, WRONG = "pass", "blocked", "leak", "wrong"
LEGEND = {
    PASS: "passes, as the policy allows",
    BLOCKED: "blocked, as the policy requires",
    WRONG: "mismatch: blocked or answered differently than the policy says",
    LEAK: "mismatch: gets through although the policy forbids it",
}


def status(probe: dict) -> str:
    """pass | blocked | leak | wrong, for one probe record."""
    if probe["ok"]:
        return PASS if probe.get("expected_reach") else BLOCKED
    return LEAK if not probe.get("expected_reach") and probe["observed"] in REACHED else WRONG


def destination_label(flow, policy) -> str:
    """The flow's destination as grid columns name it: 'servers/web', 'router@wan', or the address."""
    if flow.dst_node == policy.router:
        segment = policy.topology.segment_of(flow.dst)
        return f"{policy.router}@{segment.name}" if segment else policy.router
    return policy.label(flow.dst_node) if flow.dst_node else str(flow.dst)


def probe_record(flow, expected, observed, policy, group: str) -> dict:
    """One probe as the JSON document holds it."""
    by_node = policy.topology.node_at(observed.by) if observed.by is not None else None
    record = {
        "flow": flow.label(policy), "group": group,
        "src": policy.label(flow.src), "dst": destination_label(flow, policy),
        "dst_address": str(flow.dst), "service": str(flow.service),
        "expected": sorted(expected.verdicts), "reason": expected.reason,
        "expected_reach": policy.label(expected.reached) if expected.reached else None,
        "observed": observed.verdict, "ok": observed.verdict in expected.verdicts,
        "by": str(observed.by) if observed.by is not None else None,
        "by_node": policy.label(by_node.name) if by_node else None,
        "detail": observed.detail, "rtt_ms": observed.rtt_ms, "ttl": observed.ttl,
    }
    record["status"] = status(record)
    return record
