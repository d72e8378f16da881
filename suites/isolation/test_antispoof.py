"""Anti-spoofing: packets forged with another segment's source address (IPv4 or
IPv6) do not cross the router; the same packet with the sender's true address does
(the control: without it, a forged packet missing proves nothing). And no node
can play router for a segment it may not reach: its router advertisements and
DHCPv6 replies (a rogue RA is the IPv6 way to become a segment's router) do not
arrive there, while the same sent on its own link are seen by a neighbour."""

import pytest


def _controls_hold(missed: list[str], why: str) -> None:
    if missed:
        raise RuntimeError(f"control failed: {why}: " + "; ".join(missed))


@pytest.fixture
def forged(spoofing, labwarden_policy, positive_controls):
    """The sends, once every sender's and target's controls hold and the genuine packets arrived."""
    if not labwarden_policy.antispoof:
        pytest.skip("the policy does not promise anti-spoofing (antispoof: false)")
    label = labwarden_policy.label
    positive_controls.require(*(n for sender, _, target, *_ in spoofing for n in (sender, target)))
    genuine = [o for o in spoofing if o[4]]
    if not genuine:
        pytest.skip("no node may send to another segment: nothing to forge against")
    _controls_hold([f"{label(s)} -> {label(t)} ({a})" for s, _, t, a, _, hit in genuine if not hit],
                   "genuine packets did not arrive, so forged ones missing proves nothing")
    return spoofing


def test_forged_sources_are_dropped(forged, labwarden_policy):
    label = labwarden_policy.label
    crossed = [f"{label(s)} sent as {src} -> {label(t)} ({a}) arrived"
               for s, src, t, a, real, hit in forged if not real and hit]
    assert not crossed, "forged source addresses crossed the router: " + "; ".join(crossed)


@pytest.fixture
def rogue_sends(rogue, labwarden_policy, positive_controls):
    """The rogue routers' sends, once every sender's and host's controls hold and a neighbour
    on each sender's own link saw what it sent there."""
    results, controls = rogue
    if not results:
        pytest.skip("no node with IPv6 is kept from a segment with IPv6: no rogue router to try")
    positive_controls.require(*{n for sender, _, hosts in results for n in (sender, *hosts)},
                              *{peer for peer, _ in controls.values()})
    _controls_hold([f"{labwarden_policy.label(peer)} saw {', '.join(kinds) or 'nothing'} of what "
                    f"{labwarden_policy.label(sender)} sent to ff02::1"
                    for sender, (peer, kinds) in controls.items() if len(kinds) < 2],
                   "a rogue router's packets on its own link were not all captured, so none "
                   "arriving elsewhere proves nothing")
    return results


def test_rogue_routers_do_not_reach_other_segments(rogue_sends, labwarden_policy):
    label = labwarden_policy.label
    arrived = [f"{label(sender)} -> {label(host)} ({segment}): {', '.join(kinds)} arrived"
               for sender, segment, hosts in rogue_sends for host, kinds in hosts.items() if kinds]
    assert not arrived, ("router advertisements or DHCPv6 replies crossed into segments their "
                         "sender may not reach: " + "; ".join(arrived))
