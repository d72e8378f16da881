"""Port-forwards, end to end: from every outside node through every forward the
policy declares, an HTTP GET (HTTPS on 443, a banner elsewhere) through the
router's public address gets what the inside service serves itself; the
connection lands on the declared node and nowhere else, and that node sees the
visitor's real address. A forward whose service is down reads "service down"
(refused at the server), never "missing" (filtered at the router).
"""

import pytest

from labwarden.checks import nat
from labwarden.declared.policy import Forward, Service


def pytest_generate_tests(metafunc):
    if "forward_case" in metafunc.fixturenames:
        from labwarden.plugin import lab_config
        _, policy = lab_config(metafunc.config)
        cases = [pytest.param((src, f), id=f"{f.name}: {policy.label(src)} -> {f.public}")
                 for src in nat.outside_nodes(policy) for f in policy.forwards]
        metafunc.parametrize("forward_case", cases or [pytest.param(
            None, marks=pytest.mark.skip(reason="the policy declares no forwards"), id="no forwards")])


def test_forward_serves_the_inside_page(forward_checks, nat_policy, forward_case):
    src, forward = forward_case
    check = next(c for c in forward_checks if c.src == src and c.forward == forward)
    assert check.state == "works", check.explain(nat_policy)


def unforwarded_tcp_port(policy, near: int) -> int:
    """A TCP port of the public address that no forward and no rule opens from outside."""
    taken = {f.public.port for f in policy.forwards if f.public.proto == "tcp"}
    for port in range(near, 65536):
        flow = policy.flow(nat.outside_nodes(policy)[0], policy.public, Service("tcp", port))
        if port not in taken and policy.expect(flow).reached is None:
            return port
    raise LookupError("every port of the public address is open")


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.emulated_only("it stops and starts the web server inside its node")
async def test_a_stopped_service_reads_differently_from_a_missing_forward(lab, nat_policy, probe_timeout):
    tcp = [f for f in nat_policy.forwards if f.public.proto == "tcp"]
    if not tcp:
        pytest.skip("the policy declares no TCP forward")
    forward = tcp[0]
    src = nat.outside_nodes(nat_policy)[0]
    missing = Forward(f"{forward.name} (not forwarded)", Service("tcp", unforwarded_tcp_port(nat_policy, 8081)),
                      forward.to, forward.port)
    nat.service_control(lab, forward.to, "stop", forward.port)
    try:
        checks = await nat.check_forwards(lab, nat_policy, [forward, missing], [src], probe_timeout)
    finally:
        nat.service_control(lab, forward.to, "start", forward.port)
    down, absent = checks
    assert down.state == "service down", f"with {forward.to}'s tcp/{forward.port} stopped: {down.explain(nat_policy)}"
    assert absent.state == "missing", f"a port no forward covers: {absent.explain(nat_policy)}"
    back, = await nat.check_forwards(lab, nat_policy, [forward], [src], probe_timeout)
    assert back.state == "works", f"after starting the service again: {back.explain(nat_policy)}"
