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


def lab_record(policy) -> dict:
    """The lab as the report draws it (`labwarden.report.drawing`): segments, nodes with their
    addresses, the router, impaired links, port forwards and tunnels; labels as probes name them."""
    topology = policy.topology
    return {
        "name": topology.name, "router": policy.router,
        "segments": [{"name": s.name, "subnet": str(s.subnet), "zone": next((z for z, segs in policy.zones.items() if s.name in segs), None)}
                     for s in topology.segments.values()],
        "nodes": [{"name": n.name, "label": policy.label(n.name),
                   "addresses": {seg: str(a) for seg, a in n.addresses.items()}}
                  for n in topology.nodes.values()],
        "links": [{"segment": link.segment, "node": link.node, "profile": link.profile.name,
                   "delay_ms": link.profile.delay_ms, "jitter_ms": link.profile.jitter_ms,
                   "loss_pct": link.profile.loss_pct} for link in topology.links],
        "forwards": [{"name": f.name, "public": str(f.public), "to": policy.label(f.to), "port": f.port}
                     for f in policy.forwards],
        "tunnels": [{"name": t.name, "client": policy.label(t.client), "local": str(t.local),
                     "edge": policy.label(t.edge), "public": str(t.public)} for t in policy.tunnels],
    }
