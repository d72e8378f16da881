"""suites/latency: the policy's latency budgets, the emulated links themselves, and the
route each budgeted path takes, measured from inside the nodes.

Each observation is one batch for the whole session (every source node at once), shared
by the tests that judge it; the tables go to the terminal at the end of the run and into
the report.
"""

import pytest
import pytest_asyncio

from labwarden.checks import latency
from labwarden.plugin import lab_config
from labwarden.realise.impair import firewalled_nodes

TABLES = pytest.StashKey[list]()


def pytest_generate_tests(metafunc):
    if "budget" in metafunc.fixturenames:
        policy = lab_config(metafunc.config)[1]
        metafunc.parametrize("budget", policy.budgets, ids=[b.label for b in policy.budgets])
    if "budget_route" in metafunc.fixturenames:
        policy = lab_config(metafunc.config)[1]
        routes = list(dict.fromkeys(route_of(b) for b in policy.budgets))
        metafunc.parametrize("budget_route", routes, ids=[f"{s} -> {d} {p}{'/' + str(n) if n else ''}"
                                                          for s, d, p, n in routes])


def route_of(budget) -> tuple:
    """How a budget's path is traced: ICMP echo for icmp, TCP SYNs to its port otherwise
    (the port the firewalls on the way let through)."""
    return (budget.src, budget.dst, "icmp", None) if budget.kind == "icmp" else \
        (budget.src, budget.dst, "tcp", budget.port)


def show(config, title: str, text: str) -> None:
    config.stash.setdefault(TABLES, []).append((title, text))


def pytest_terminal_summary(terminalreporter, config):
    for title, text in config.stash.get(TABLES, []):
        terminalreporter.write_sep("-", title)
        terminalreporter.write_line(text)


@pytest.fixture(scope="session")
def impairment(lab):
    """How the lab's links are emulated (a live lab's: no links, nothing is emulated)."""
    return lab.impairment


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def budget_results(lab, labwarden_policy, labwarden_report, pytestconfig):
    """Every budget's samples, measured at once."""
    if not labwarden_policy.budgets:
        pytest.skip("the policy declares no latency budgets (budgets:)")
    results = await latency.measure(lab, labwarden_policy.budgets)
    by_path: dict[str, list] = {}
    for measured in results.values():
        by_path.setdefault(measured.budget.label.rsplit(" ", 1)[0], []).extend(measured.rows())
    for path, rows in by_path.items():
        show(pytestconfig, f"latency {path}", latency.render_table(latency.BUDGET_COLUMNS[1:],
             [{"cells": r["cells"][1:], "bad": r["bad"]} for r in rows]))
    labwarden_report.add_section("table", "latency budgets", {
        "columns": latency.BUDGET_COLUMNS, "rows": [r for m in results.values() for r in m.rows()]})
    for measured in results.values():
        bound = next((l.bound for l in measured.budget.limits if l.metric != "loss" and l.series == "main"), None)
        labwarden_report.add_section("latency", f"{measured.budget.label}", {
            "unit": "ms", "budget": bound,
            "series": [{"label": measured.budget.measure, "values": [s for s in measured.samples if s is not None]}]})
    return results


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def link_checks(lab, impairment, labwarden_report, pytestconfig):
    """For every impaired link, echo round trips across it (and what they must be)."""
    if not impairment.links or impairment.method == "none":
        pytest.skip(f"no impaired links to check ({impairment.reason})")
    firewalled = firewalled_nodes(lab)
    checks = [latency.link_check(lab.topology, impairment.links, link, firewalled) for link in impairment.links]
    checks = [c for c in checks if c is not None]
    results = {}
    for interval in sorted({c.interval_s for c in checks}):
        mine = [c for c in checks if c.interval_s == interval]
        timeout = max(3.0, max(c.rtt_ms for c in mine) / 1000 * 3)
        pings = await latency.ping(lab, [(c.src, c.dst) for c in mine], count=40, interval_s=interval,
                                   timeout_s=timeout)
        results |= {c.link: (c, *c.judge(pings[(c.src, c.dst)])) for c in mine}
    rows = [{"cells": [c.link, f"{c.src} -> {c.dst_node}", f"{c.rtt_ms:.2f}", latency.figure(s.p50),
                       latency.figure(s.mean), f"{s.loss_pct:.1f}%",
                       f"±{latency.tolerance_ms(c.rtt_ms):.2f}", "FAIL" if problem else "ok"],
             "bad": bool(problem)} for c, s, problem in results.values()]
    columns = ["link", "echo", "configured rtt ms", "p50", "mean", "loss", "allowed", "verdict"]
    show(pytestconfig, f"emulated links ({impairment.method})", latency.render_table(columns, rows))
    labwarden_report.add_section("table", f"emulated links ({impairment.method}: {impairment.reason})",
                                 {"columns": columns, "rows": rows})
    return results


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def traces(lab, labwarden_policy, labwarden_report, pytestconfig):
    """A traceroute of every budgeted path, from its source node."""
    if not labwarden_policy.budgets:
        pytest.skip("the policy declares no latency budgets (budgets:), so no paths to trace")
    routes = list(dict.fromkeys(route_of(b) for b in labwarden_policy.budgets))
    links = lab.impairment.links
    longest = max(len(latency.expected_route(lab.topology, links, s, d)) for s, d, _, _ in routes)
    slowest = max((h.rtt_ms for s, d, _, _ in routes for h in latency.expected_route(lab.topology, links, s, d)),
                  default=0)
    answers = await latency.traceroute(lab, routes, max_hops=longest + 2,
                                       timeout_s=max(2.0, 3 * slowest / 1000))
    judged = {}
    for route, answer in answers.items():
        src, dst, proto, port = route
        rows, problems = latency.judge_traceroute(lab.topology, links, src, dst, answer)
        title = f"traceroute {labwarden_policy.label(src)} -> {dst} ({proto}{'/' + str(port) if port else ''})"
        show(pytestconfig, title, latency.render_table(latency.TRACE_COLUMNS, rows))
        labwarden_report.add_section("table", title, {"columns": latency.TRACE_COLUMNS, "rows": rows})
        judged[route] = (rows, problems)
    return judged
