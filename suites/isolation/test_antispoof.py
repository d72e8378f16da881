"""Anti-spoofing: packets forged with another segment's source address do not
cross the router; the same packet with the sender's true address does."""

import pytest


def test_forged_sources_are_dropped(spoofing, labwarden_policy):
    if not labwarden_policy.antispoof:
        pytest.skip("the policy does not promise anti-spoofing (antispoof: false)")
    label = labwarden_policy.label
    genuine = [o for o in spoofing if o[4]]
    assert genuine, "no node may send to another segment: nothing to forge against"
    lost = [f"{label(s)} -> {label(t)} ({a})" for s, _, t, a, _, hit in genuine if not hit]
    if lost:
        raise RuntimeError("control failed: genuine packets did not arrive, so forged ones "
                           "missing proves nothing: " + "; ".join(lost))
    crossed = [f"{label(s)} sent as {src} -> {label(t)} ({a}) arrived"
               for s, src, t, a, real, hit in spoofing if not real and hit]
    assert not crossed, "forged source addresses crossed the router: " + "; ".join(crossed)
