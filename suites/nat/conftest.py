"""Session-wide observations of the NAT suite: each is one batch (or a few) of real
packets from the outside, shared by the tests that judge it.

Every check here is about the router's public address, so a policy without one
(no `public:`) skips the suite.
"""

import pytest
import pytest_asyncio

from labwarden.checks import nat


@pytest.fixture(scope="session")
def nat_policy(labwarden_policy):
    if labwarden_policy.public is None:
        pytest.skip("the policy names no public address (public:): no NAT to check")
    return labwarden_policy


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def forward_checks(lab, nat_policy, probe_timeout):
    return await nat.check_forwards(lab, nat_policy, timeout=probe_timeout)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def public_surface(lab, nat_policy, probe_timeout):
    """Every TCP port of the public address swept for what lands inside, the ports that
    answer probed (all 65,535 where the router takes SYNs at any rate), and a UDP scan of
    the usual ports."""
    scanner = nat.outside_nodes(nat_policy)
    if not scanner:
        pytest.skip("no outside node to scan the public address from")
    preferred = [n for n in scanner if n == "scanner"] or scanner
    return await nat.public_surface(lab, nat_policy, preferred[0], timeout=probe_timeout)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def public_surface6(lab, nat_policy, probe_timeout):
    """The router's IPv6 address on the outside segment and every pinholed node's IPv6
    addresses, every TCP port and the usual UDP ports each, from the scanner."""
    scanner = nat.outside_nodes(nat_policy)
    preferred = [n for n in scanner if n == "scanner"] or scanner
    surfaces = await nat.public_surface6(lab, nat_policy, preferred[0], timeout=probe_timeout) if scanner else []
    if not surfaces:
        pytest.skip("no IPv6 on the outside segment: no IPv6 surface to scan")
    return surfaces


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def management(lab, nat_policy, probe_timeout):
    return await nat.management(lab, nat_policy, probe_timeout)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def outbound(lab, nat_policy, probe_timeout):
    return await nat.outbound(lab, nat_policy, probe_timeout)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def way_in(lab, nat_policy, probe_timeout):
    return await nat.no_way_in(lab, nat_policy, probe_timeout)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def hairpin_cells(lab, nat_policy, probe_timeout):
    if not nat_policy.forwards:
        pytest.skip("the policy declares no forwards")
    return await nat.hairpin(lab, nat_policy, probe_timeout)
