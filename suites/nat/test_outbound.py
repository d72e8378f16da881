"""Outbound NAT: every inside node reaches the outside and arrives there as the
router's public address (for the zones the policy masquerades), as a capture on
each outside node shows. And the way back in does not exist: outside nodes with
their own route to every inside segment via the router get nothing through to
any inside address, as a capture on every inside node shows, but what the policy
delivers (a forward with `daddr: any` takes its port at every address); whatever
else lands is named as it was sent, where it landed and by which NAT rule.
"""

import pytest

from labwarden.checks import nat


def pytest_generate_tests(metafunc):
    if "inside_node" in metafunc.fixturenames:
        from labwarden.plugin import lab_config
        _, policy = lab_config(metafunc.config)
        nodes = nat.inside_nodes(policy) if policy.public is not None else []
        metafunc.parametrize("inside_node", nodes, ids=[policy.label(n) for n in nodes])


@pytest.fixture
def outbound_of(outbound, positive_controls, inside_node):
    """The node's outbound datagrams, once its controls hold."""
    positive_controls.require(inside_node)
    return [o for o in outbound if o.src == inside_node]


@pytest.fixture
def way_in_controlled(way_in, positive_controls):
    """The way-in probes, once the controls of every outside sender and inside capturer hold
    and every inside capture saw the router's ping."""
    if not way_in.routes:
        pytest.skip("no outside node shares a segment with the router's public address")
    positive_controls.require(*way_in.routes, *way_in.arrivals)
    blind = [n for n, saw in way_in.controls.items() if not saw]
    if blind:
        raise RuntimeError(f"control failed: the captures on {', '.join(blind)} did not see the router's "
                           "ping, so seeing nothing from outside proves nothing")
    return way_in


def test_inside_goes_out_masqueraded(outbound_of, nat_policy):
    wrong = [o.explain(nat_policy) for o in outbound_of if not o.ok]
    assert not wrong, "outbound NAT is wrong:\n  " + "\n  ".join(wrong)


@pytest.mark.emulated_only("it adds routes to the wan hosts (an attacker's own routes)")
def test_outside_cannot_address_inside_ranges(way_in_controlled, nat_policy):
    wrong = way_in_controlled.problems(nat_policy)
    assert not wrong, "outside nodes routing inside ranges via the router got through:\n  " + "\n  ".join(wrong)
