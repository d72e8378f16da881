"""The emulated links are what the topology says: applied, read back, and as slow as configured.

A broken delay line (or a netem qdisc that did not take) must not pass silently: the
round trip across each impaired link is measured and held to the configured figure,
within 1% or 2 ms, whichever is larger.
"""

import pytest

from labwarden.realise import impair

pytestmark = pytest.mark.emulated_only("a live lab's links are real: nothing is emulated")


def test_method_is_reported(impairment, labwarden_report):
    if not impairment.links:
        pytest.skip("no impaired links")
    assert impairment.method in ("netem", "delayline")
    assert impairment.reason
    assert labwarden_report.header.get("impairment", {}).get("method") == impairment.method


def test_netem(impairment, lab):
    """netem where the kernel has it: the qdiscs read back with the configured delay."""
    if impairment.method != "netem":
        available, why = impair.netem_available(lab)
        pytest.skip(why if not available else f"links are emulated with {impairment.method} in this run")
    for node, qdiscs in impairment.readback.items():
        assert any(q.get("kind") == "netem" for q in qdiscs), f"{node}: no netem qdisc read back: {qdiscs}"


def test_delay_line_still_in_place(impairment, lab):
    """Read back again at the end of the setup: every relay alive, its plumbing all there."""
    if not impairment.links or impairment.method != "delayline":
        pytest.skip("no impaired links" if not impairment.links else
                    f"links are emulated with {impairment.method}: no delay line")
    status = impair.prober_status(lab)
    for node, applied in impairment.readback.items():
        now = status.get(node)
        assert now and now.get("alive"), f"the delay line of {node} is not running: {now}"
        problems = impair.verify_delayline(applied["links"], now.get("readback", {}))
        assert not problems, f"the delay line of {node}: " + "; ".join(problems)


def test_link_accuracy(link_checks):
    problems = [problem for _, _, problem in link_checks.values() if problem]
    assert not problems, "\n".join(problems)
