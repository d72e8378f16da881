"""Each budgeted path takes the route the topology draws, hop by hop, and each hop is as far
away as the impaired links on the way make it (a table like the seed's, per path)."""


def test_route(budget_route, traces):
    rows, problems = traces[budget_route]
    assert not problems, "\n".join(problems)
