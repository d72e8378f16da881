"""A lab is ready when its services listen (read from the nodes' sockets, not probed
through the router's ruleset): which socket counts as a service listening on an address."""

from ipaddress import IPv4Address

from labwarden.realise.sockets import listens
from labwarden.declared.policy import Service

ADDR = IPv4Address("198.18.1.1")


def info(**families):
    return {family: [{"local": local, "remote": "0.0.0.0:0", "state": state} for local, state in socks]
            for family, socks in families.items()}


def test_tcp_needs_a_listening_socket_on_the_address_or_a_wildcard():
    dns = Service("tcp", 53)
    assert listens(info(tcp=[("0.0.0.0:53", "LISTEN")]), dns, ADDR)
    assert listens(info(tcp=[("198.18.1.1:53", "LISTEN")]), dns, ADDR)
    assert listens(info(tcp6=[("[::]:53", "LISTEN")]), dns, ADDR)  # dual-stack, as nginx's [::]:80
    assert not listens(info(tcp=[("198.18.10.1:53", "LISTEN")]), dns, ADDR)  # another address
    assert not listens(info(tcp=[("0.0.0.0:53", "ESTABLISHED")]), dns, ADDR)
    assert not listens(info(udp=[("0.0.0.0:53", "CLOSE")]), dns, ADDR)


def test_udp_needs_a_bound_unconnected_socket():
    dns = Service("udp", 53)
    assert listens(info(udp=[("0.0.0.0:53", "CLOSE")]), dns, ADDR)
    assert listens(info(udp6=[("[::ffff:198.18.1.1]:53", "CLOSE")]), dns, ADDR)
    assert not listens(info(udp=[("0.0.0.0:5353", "CLOSE")]), dns, ADDR)
    assert not listens({}, dns, ADDR)
