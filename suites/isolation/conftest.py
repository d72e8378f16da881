"""Session-wide observations of the isolation suite: each is one batch of real
packets, shared by the parametrized tests that judge it."""

import pytest_asyncio

from labwarden.checks import exposure


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def discovery(lab, labwarden_policy, probe_timeout):
    return await exposure.discovery(lab, labwarden_policy, probe_timeout)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def snooping(lab, labwarden_policy, probe_timeout):
    return await exposure.snooping(lab, labwarden_policy, probe_timeout)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def spoofing(lab, labwarden_policy, probe_timeout):
    return await exposure.spoofing(lab, labwarden_policy, probe_timeout)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def rogue(lab, labwarden_policy, probe_timeout):
    return await exposure.rogue_routers(lab, labwarden_policy, probe_timeout)
