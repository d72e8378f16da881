"""Every latency budget of the policy holds, measured from inside its source node."""


def test_budget(budget, budget_results):
    measured = budget_results[budget]
    failures = measured.failures()
    assert not failures, "\n".join(failures)
