"""Anti-spoofing: packets forged with another segment's source address do not
cross the router; the same packet with the sender's true address does (the control:
without it, a forged packet missing proves nothing)."""

import pytest


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
    lost = [f"{label(s)} -> {label(t)} ({a})" for s, _, t, a, _, hit in genuine if not hit]
    if lost:
        raise RuntimeError("control failed: genuine packets did not arrive, so forged ones "
                           "missing proves nothing: " + "; ".join(lost))
    return spoofing


def test_forged_sources_are_dropped(forged, labwarden_policy):
    label = labwarden_policy.label
    crossed = [f"{label(s)} sent as {src} -> {label(t)} ({a}) arrived"
               for s, src, t, a, real, hit in forged if not real and hit]
    assert not crossed, "forged source addresses crossed the router: " + "; ".join(crossed)
