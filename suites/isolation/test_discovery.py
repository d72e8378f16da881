"""No discovery or snooping across segments.

A node that may not reach a segment must not learn that its hosts exist: an
ARP sweep, broadcast/mDNS/SSDP queries and a ping sweep from it find nothing
there, while the same sweep from inside that segment finds its hosts. On IPv6
the sweep is neighbour solicitations on the own link for the segment's addresses,
an echo to ff02::1 (all nodes of the own link) and a ping sweep of the
segment's addresses (interface ids ::1-::10 and the declared ones). And a
capture on every other node, while a segment's devices talk to each other and
to the internet (both families), sees none of their packets.
"""

import pytest

from labwarden.checks.exposure import hidden_segments, ipv6_answerers, observers
from labwarden.plugin import lab_config

RESPONDER_PORTS = {("udp", 5353), ("udp", 1900)}


def pytest_generate_tests(metafunc):
    _, policy = lab_config(metafunc.config)
    if "observer_segment" in metafunc.fixturenames:
        pairs = [(n, s) for n in observers(policy) for s in hidden_segments(policy, n)]
        metafunc.parametrize("observer_segment", pairs,
                             ids=[f"{policy.label(n)} -> {s}" for n, s in pairs])
    if "talking_segment" in metafunc.fixturenames:
        segments = [s for s in policy.topology.segments
                    if not any(s in segs for z, segs in policy.zones.items() if z == "wan")]
        metafunc.parametrize("talking_segment", segments)


def _has_responder(policy, segment):
    return any((s.proto, s.port) in RESPONDER_PORTS
               for node, services in policy.services.items()
               if segment in policy.topology.nodes[node].addresses for s in services)


@pytest.fixture
def sweep(discovery, labwarden_policy, positive_controls, observer_segment):
    """What the observer found, once its controls hold (a dead observer finds nothing) and a
    node inside the segment found its neighbours with the same sweep."""
    results, controls = discovery
    observer, segment = observer_segment
    positive_controls.require(observer)
    control_node, control = controls[segment]
    if not control.arp and not control.ping:
        raise RuntimeError(f"control failed: {control_node} swept its own segment {segment} "
                           f"and found nothing, so an empty sweep from elsewhere proves nothing")
    topology = labwarden_policy.topology
    if topology.segments[segment].subnet6 and topology.nodes[control_node].addresses6 \
            and ipv6_answerers(labwarden_policy, segment, control_node) and 6 not in control.families():
        raise RuntimeError(f"control failed: {control_node} swept its own segment {segment} on IPv6 "
                           f"and found nothing there (found {control}), so an empty IPv6 sweep "
                           "from elsewhere proves nothing")
    if _has_responder(labwarden_policy, segment) and not control.discovery:
        raise RuntimeError(f"control failed: discovery queries from {control_node} on {segment} "
                           f"got no answer from the segment's responder")
    if results[(observer, segment)] is None:
        pytest.skip(f"{segment} is hidden from {observer} on IPv6 only, and no node there could answer "
                    f"an IPv6 control sweep (its router refuses neighbour discovery: nd_blocked)")
    return results[(observer, segment)], (control_node, control)


@pytest.fixture
def snoop(snooping, positive_controls, talking_segment):
    """Per listener what it saw, once every listener's controls hold (a dead one sees nothing)
    and the router's capture saw the segment's traffic."""
    per_listener, control = snooping[talking_segment]
    positive_controls.require(*per_listener)
    if not control:
        raise RuntimeError(f"control failed: the router's capture on {talking_segment} saw none "
                           "of the traffic the segment's hosts sent")
    return per_listener


def test_sweep_finds_nothing(sweep, labwarden_policy, observer_segment):
    found, (control_node, control) = sweep
    observer, segment = observer_segment
    assert not found.any(), (f"{labwarden_policy.label(observer)} discovered hosts of {segment}: "
                             f"{found} (from inside {segment}, {control_node} found {control})")


def test_capture_sees_nothing(snoop, labwarden_policy, talking_segment):
    per_listener = snoop
    leaks = {n: frames for n, frames in per_listener.items() if frames}
    assert not leaks, f"packets of {talking_segment} hosts were seen elsewhere: " + "; ".join(
        f"{labwarden_policy.label(n)} saw {len(fs)} (first: {fs[0]})" for n, fs in leaks.items())
