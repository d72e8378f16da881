"""The tunnel suite's shared observations, one batch each, per tunnel of the policy.

A policy without `tunnels:` skips the suite."""

from contextlib import nullcontext

import pytest
import pytest_asyncio

from labwarden.checks import tunnel as tunnels


def pytest_generate_tests(metafunc):
    """`tunnel_case`: one test per tunnel of the policy, named after it."""
    if "tunnel_case" in metafunc.fixturenames:
        from labwarden.plugin import lab_config
        _, policy = lab_config(metafunc.config)
        metafunc.parametrize("tunnel_case", policy.tunnels, ids=[t.name for t in policy.tunnels])


@pytest.fixture(scope="session")
def tunnel_policy(labwarden_policy):
    if not labwarden_policy.tunnels:
        pytest.skip("the policy declares no tunnels (tunnels:)")
    return labwarden_policy


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def page_checks(lab, tunnel_policy, probe_timeout):
    return {t.name: await tunnels.check_pages(lab, tunnel_policy, t, timeout=probe_timeout)
            for t in tunnel_policy.tunnels}


def pytest_collection_modifyitems(items):
    """Faults last: the page, reach and exposure checks see the tunnel as the lab started it."""
    items.sort(key=lambda item: "suites/tunnel/test_faults.py" in item.nodeid.replace("\\", "/"))


@pytest.fixture(scope="session")
def say(pytestconfig):
    """Write a line to the terminal, whatever the capture settings: what a fault test saw."""
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")

    def write(line):
        if reporter is None:
            return
        with capture.global_and_fixture_disabled() if capture else nullcontext():
            reporter.write_line(line)
    return write
