"""Local-only zones (the GPU VM): nothing from wan may reach them, by any
address or port-forward; the zones the policy names do reach their services."""

from labwarden.fixtures import lab_config


def local_only_nodes(policy):
    """Nodes whose services no wan node reaches, at any address (port-forwards included)."""
    topology = policy.topology
    wan_nodes = [n for n in topology.nodes if policy.zone_of(n) == "wan"]
    addresses = [a for node in topology.nodes.values() for a in node.addresses.values()]
    return [name for name in topology.nodes
            if name != policy.router and policy.zone_of(name) != "wan"
            and not any(policy.expect(policy.flow(w, a, s)).reached == name
                        for w in wan_nodes for a in addresses for s in policy.services.get(name, ()))]


def pytest_generate_tests(metafunc):
    if "local_node" in metafunc.fixturenames:
        _, policy = lab_config(metafunc.config)
        nodes = [n for n in local_only_nodes(policy) if policy.services.get(n)]
        metafunc.parametrize("local_node", nodes, ids=[policy.label(n) for n in nodes])


def test_services_reach_only_whom_the_policy_names(matrix, labwarden_policy, local_node):
    policy = labwarden_policy
    services = {(s.proto, s.port) for s in policy.services[local_node]}
    cells = [c for f, c in matrix.cells.items() if f.dst_node == local_node
             and (f.proto, f.port) in services]
    reachers = {policy.zone_of(c.flow.src) for c in cells if c.expected.reached}
    assert reachers, f"the policy lets nobody reach {policy.label(local_node)}'s services"
    from_wan = [c for c in cells if policy.zone_of(c.flow.src) == "wan"]
    assert from_wan, f"no wan node probed {policy.label(local_node)}"
    wrong = [c.message(policy) for c in cells if not c.ok]
    assert not wrong, (f"{policy.label(local_node)} is not local-only as declared "
                       f"(reachable from {', '.join(sorted(reachers))} only):\n  " + "\n  ".join(wrong))
