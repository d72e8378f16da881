"""Nothing else answers on the public address, and nothing else gets in through it:
from the scanner, a SYN to every TCP port and a datagram to every UDP port (sent at
full speed and judged by what lands on inside nodes, so a router that rate-limits SYNs
to itself slows nothing), then the ports that answer probed, find exactly the declared
forwards (and what the policy opens on the router itself); whatever else answers or
lands is named with the inside node it lands on and, where the router is ours, the NAT
rule that sent it there. The router's own management services (ssh, DNS, web UI, SNMP,
UPnP) answer on none of its addresses from outside. On IPv6 (no NAT) the router's outside
address and every pinholed node's are scanned the same way: only the pinholes answer.
"""


def test_only_the_declared_forwards_answer(public_surface, nat_policy):
    wrong = public_surface.problems(nat_policy)
    answering = sorted(f"{c.flow.proto}/{c.flow.port}" for c in public_surface.answering())
    assert not wrong, (f"{len(public_surface.cells)} ports of {public_surface.address} probed and every TCP "
                       f"and UDP port swept from {nat_policy.label(public_surface.src)}; answering: "
                       f"{', '.join(answering)}:\n  " + "\n  ".join(wrong))


def test_only_the_pinholes_answer_on_ipv6(public_surface6, nat_policy):
    """IPv6 has no NAT: the router's outside IPv6 address and each pinholed node's IPv6
    addresses, every TCP port and the usual UDP ports, answer only as the policy says."""
    wrong = [p for s in public_surface6 for p in s.problems(nat_policy)]
    answering = []
    for s in public_surface6:
        ports = sorted((c.flow.proto, c.flow.port) for c in s.answering())
        shown = ", ".join(f"{proto}/{port}" for proto, port in ports[:12]) + (", ..." if len(ports) > 12 else "")
        answering.append(f"{s.address}: {len(ports)} ports ({shown or 'none'})")
    scanned = sum(len(s.cells) for s in public_surface6)
    assert not wrong, (f"{scanned} ports probed from {nat_policy.label(public_surface6[0].src)}; answering: "
                       f"{'; '.join(answering)}; {len(wrong)} not as the policy says, first 40:\n  "
                       + "\n  ".join(wrong[:40]))


def test_router_management_is_not_reachable_from_outside(management, nat_policy):
    wrong = [c.message(nat_policy) for c in management if not c.ok]
    assert not wrong, "the router answers from outside:\n  " + "\n  ".join(wrong)
