"""Rule fuzzing: do we understand nftables? Hypothesis draws router rulesets from the
grammar of labwarden.routers.nftables.model, each is loaded into the lab's router and probed with
flows aimed at its rules, and the kernel's verdicts must equal the model's.

A difference shrinks to a small ruleset and one flow: either the model is wrong
(fix it, and keep the case in tests/unit/test_nft_model.py) or the kernel
surprises everyone (explain it in the model's docstring, and keep it there too).
The router is on loan meanwhile (`ComposeLab.router_on_loan`): tunnel clients stop first, and
at the end, whatever happened, the router gets the topology's own config back with an
empty conntrack table and the clients start again.
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labwarden.checks.tunnel import wait_up
from labwarden.fuzz.rules import FLOWS_PER_RULESET, RULESETS_PER_EXAMPLE, probe_flows, rulesets
from labwarden.realise.lab import run_sync


class ModelDiffers(AssertionError):
    pass


@pytest.mark.emulated_only("it loads random rulesets into the router")
def test_kernel_agrees_with_the_model(lab, labwarden_policy, rule_checker, fuzz_settings, fuzz_stats, fuzz_profile):
    config = lab.router_firewall()
    if config is None:
        pytest.skip("the router's config is not ours to replace (no nftables file): nothing to restore")
    if lab.router_kind().name != "nftables":
        pytest.skip(f"rule fuzzing draws nftables rulesets; this router is of kind {lab.router_kind().name}")
    world = rule_checker.world

    @st.composite
    def case(draw):
        ruleset = draw(rulesets(world), label="ruleset")
        aimed = probe_flows(world, ruleset)
        slot = st.integers(0, 7).flatmap(lambda keep: aimed if keep else st.none())
        first = draw(aimed, label="flow")  # every ruleset meets at least one flow
        more = draw(st.lists(slot, min_size=FLOWS_PER_RULESET - 1, max_size=FLOWS_PER_RULESET - 1),
                    label="more flows")
        return ruleset, [first, *filter(None, more)]

    @fuzz_settings("rules")
    @given(st.lists(case(), min_size=RULESETS_PER_EXAMPLE, max_size=RULESETS_PER_EXAMPLE,
                    unique_by=lambda c: c[0]))
    def check(cases):
        loaded.update(ruleset for ruleset, _ in cases)
        differences = rule_checker.check(cases)
        if differences:
            raise ModelDiffers("\n\n".join(d.message() for d in differences))

    loaded = set()
    try:
        with lab.router_on_loan():
            check()
    finally:
        run_sync(wait_up(lab))  # the tunnel clients reconnect as at start, before the next suite
        fuzz_stats(f"{len(loaded)} distinct rulesets; " + rule_checker.rate())
    if fuzz_profile == "ci":
        assert len(loaded) >= 100, f"only {len(loaded)} distinct rulesets were drawn: raise the ci examples"
