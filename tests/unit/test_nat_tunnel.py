"""How fetches read, and how forward and tunnel checks judge what came back: pure
logic over made-up agent answers, no Docker."""

import dataclasses
import struct
from ipaddress import IPv4Address, ip_address
from pathlib import Path

import pytest

from labwarden.checks import nat, tunnel
from labwarden.checks.landing import Landing, first_packet, ports_of
from labwarden.checks.surface import Surface

from labwarden.probe import packets
from labwarden.checks.fetch import content, fetch_for, parse_http
from labwarden.declared.lab import load_lab
from labwarden.probe import Fetch, Fetched

HOMELAB = Path(__file__).resolve().parents[2] / "topologies" / "homelab"
PAGE = b"<!doctype html><p>hi</p>\n"


@pytest.fixture(scope="module")
def policy():
    return load_lab(HOMELAB).policy


def got(reply=b"", connected=True, error=None, eof=True, dst="203.0.113.30", port=80, sport=40000):
    return Fetched(Fetch(IPv4Address(dst), port, b"GET", read_s=1.0), sport, connected, error, eof,
                   reply, 0.3, 1.0)


def http(body, status="200 OK"):
    return (f"HTTP/1.0 {status}\r\nServer: x\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def test_fetch_for_picks_what_a_client_sends():
    web, tls, ssh = fetch_for("203.0.113.2", 80), fetch_for("203.0.113.2", 443), fetch_for("203.0.113.2", 22)
    assert web.send.startswith(b"GET / HTTP/1.1\r\nHost: 203.0.113.2\r\n") and not web.tls
    assert tls.tls and tls.send.startswith(b"GET /")
    assert ssh.send == b""


def test_http_replies_read_as_status_and_body():
    reply = parse_http(got(http(PAGE)))
    assert (reply.status, reply.body, reply.complete) == (200, PAGE, True)
    assert content(got(http(PAGE))) == PAGE
    assert content(got(http(PAGE)[:-3], eof=False)) is None        # cut short
    assert content(got(http(b"no", "502 Bad Gateway"))) is None
    assert content(got(b"SSH-2.0-OpenSSH_9.2\r\n")) == b"SSH-2.0-OpenSSH_9.2\r"
    assert content(got(connected=False, error="refused")) is None


@pytest.mark.parametrize("via, state", [
    (got(http(PAGE)), "up"),
    (got(connected=False, error="refused"), "tunnel down"),
    (got(b"", eof=True), "tunnel down"),                     # the edge closed without a word
    (got(http(b"tunnel gone", "502 Bad Gateway")), "tunnel down"),
    (got(b"", eof=False), "no answer"),                      # accepted, then silence: hung
    (got(connected=False, error="timeout"), "no answer"),
    (got(http(b"<p>another page</p>")), "wrong page"),
])
def test_page_states(policy, via, state):
    t = policy.tunnels[0]
    local = got(http(t.page.read_bytes()), dst="127.0.0.1", port=8080)
    if via.reply == http(PAGE):
        via = got(http(t.page.read_bytes()))
    check = tunnel.judge_page(policy, t, "visitor", via, local)
    assert check.state == state, check.explain(policy)
    assert check.explain(policy).startswith("laptop page: wan/visitor -> wan/edge tcp/80: ")


def test_a_tunnel_down_says_what_the_edge_did(policy):
    t = policy.tunnels[0]
    local = got(http(t.page.read_bytes()), dst="127.0.0.1", port=8080)
    check = tunnel.judge_page(policy, t, "visitor", got(connected=False, error="refused"), local)
    assert check.explain(policy) == (
        "laptop page: wan/visitor -> wan/edge tcp/80: tunnel down: wan/edge 203.0.113.30:80 refused "
        "the connection (RST): no tunnel client is behind tcp/80")


@pytest.mark.parametrize("name, reply, proxy", [
    ("a SOCKS5 greeting", b"\x05\x00", True),
    ("a SOCKS5 greeting", b"HTTP/1.0 400 Bad request\r\n", False),
    ("a SOCKS4 CONNECT to 127.0.0.1:22", b"\x00\x5a\x00\x00\x00\x00\x00\x00", True),
    ("an HTTP CONNECT to 127.0.0.1:22", b"HTTP/1.1 200 Connection established\r\n\r\n", True),
    ("an HTTP CONNECT to 127.0.0.1:22", b"HTTP/1.0 501 Unsupported method\r\n", False),
])
def test_proxies_are_recognised(name, reply, proxy):
    assert (tunnel.proxy_answer(name, reply) is not None) is proxy


def test_visitors_are_the_edges_neighbours_first(policy):
    assert tunnel.visitors(policy, policy.tunnels[0]) == ["visitor", "scanner"]
    airplane = load_lab(HOMELAB.parent / "airplane").policy
    assert tunnel.visitors(airplane, airplane.tunnels[0]) == ["visitor", "ground", "satellite"]


def judge(policy, via, landed, reference=None):
    forward = policy.forwards[0]
    reference = reference or got(http(PAGE), dst="198.18.10.10")
    return nat._judge_forward(policy, forward, "visitor", reference, via, landed)


@pytest.mark.parametrize("via, landed, state", [
    (got(http(PAGE)), {"web": [IPv4Address("203.0.113.10")]}, "works"),
    (got(connected=False, error="refused"), {"web": [IPv4Address("203.0.113.10")]}, "service down"),
    (got(connected=False, error="timeout"), {}, "missing"),
    (got(connected=False, error="refused"), {}, "missing"),
    (got(connected=False, error="refused"), {"git": [IPv4Address("203.0.113.10")]}, "wrong host"),
    (got(http(PAGE)), {"web": [IPv4Address("198.18.10.1")]}, "source rewritten"),
    (got(http(b"<p>other</p>")), {"web": [IPv4Address("203.0.113.10")]}, "wrong reply"),
])
def test_forward_states(policy, via, landed, state):
    assert judge(policy, via, landed)[0] == state


def test_forward_messages_name_where_it_went(policy):
    state, why = judge(policy, got(connected=False, error="refused"), {"git": [IPv4Address("203.0.113.10")]})
    assert why.startswith("the connection lands on servers/git, not on servers/web tcp/80")
    state, why = judge(policy, got(connected=False, error="timeout"), {})
    assert why.startswith("filtered at the router")
    state, why = judge(policy, got(http(PAGE)), {"web": [IPv4Address("198.18.10.1")]})
    assert "198.18.10.1 (router)" in why and "source NAT" in why


def test_inside_and_outside_nodes(policy):
    assert nat.outside_nodes(policy) == ["visitor", "scanner", "edge"]
    assert nat.inside_nodes(policy) == ["web", "git", "laptop", "phone", "tv", "gpu"]


def test_the_tunnel_mutant_is_the_airplane_but_for_its_client():
    """topologies/airplane/mutants/tunnel-socks: its header, then the airplane's compose.yaml
    with the laptop's two lines changed (its sshd up, and its kite client publishing it:
    `pagekite.py ... AND ssh://NAME`), and policy, page, gateway linked."""
    airplane = HOMELAB.parent / "airplane"
    mutant = airplane / "mutants" / "tunnel-socks"
    base = (airplane / "compose.yaml").read_text().splitlines()
    lines = (mutant / "compose.yaml").read_text().splitlines()
    lines = lines[lines.index(base[0]):]  # past the mutant's header
    changed = [(a, b) for a, b in zip(base, lines) if a != b]
    assert len(lines) == len(base) and len(changed) == 2, changed
    assert "command: [www:8080, ssh:22]" in changed[0][1]
    assert '"raw/22:laptop.tunnel.test:127.0.0.1:22"]' in changed[1][1]
    for linked in ("policy.yaml", "www", "gateway"):
        assert (mutant / linked).resolve() == (airplane / linked).resolve()


def test_an_edge_that_routes_by_name_is_asked_for_it():
    """A named tunnel (PageKite's edge, topologies/airplane): visitors send its name as Host;
    the edge's 503 for a name with no client reads `tunnel down`, saying so; the proxy probes
    add a CONNECT to the name's ssh port (a raw kite)."""
    airplane = load_lab(HOMELAB.parent / "airplane").policy
    t = airplane.tunnels[0]
    assert tunnel.visitor_host(airplane, t) == "laptop.tunnel.test"
    local = got(http(t.page.read_bytes()), dst="127.0.0.1", port=8080)
    check = tunnel.judge_page(airplane, t, "visitor", got(http(b"<p>no kite</p>", "503 Unavailable"),
                                                          dst="198.18.60.30"), local)
    assert check.state == "tunnel down"
    assert check.why.endswith("answered HTTP 503 Unavailable, 14 bytes from 198.18.60.30:80: the edge has no "
                              "tunnel client connected for Host laptop.tunnel.test")
    assert tunnel.proxy_probes(t)["an HTTP CONNECT to laptop.tunnel.test:22"].startswith(
        b"CONNECT laptop.tunnel.test:22 HTTP/1.1\r\n")
    assert set(tunnel.proxy_probes(load_lab(HOMELAB).policy.tunnels[0])) == set(tunnel.PROXY_PROBES)


# -- where connections from outside land ---------------------------------------------

OPENWRT = HOMELAB.parent / "openwrt-homelab"
DNAT_443 = ("dstnat_wan rule 'meta nfproto ipv4 tcp dport 443 counter dnat 198.19.20.10:443 comment "
            "\"!fw4: Forward-HTTPS-to-web\"' (router/fw4-homelab.nft:257)")


@pytest.fixture(scope="module")
def openwrt():
    return load_lab(OPENWRT).policy


def public_only(policy):
    """The same lab, its forwards taking the router's public address only (the default)."""
    return dataclasses.replace(policy, forwards=[dataclasses.replace(f, daddr="public") for f in policy.forwards])


def seen(kind, src, dst, dport=None, sport=40000, flags=0x02, direction="in"):
    payload = (struct.pack("!HHIIBBH", sport, dport, 0, 0, 0x50, flags, 64240) if kind == "tcp"
               else struct.pack("!HHHH", sport, dport, 8, 0) if kind == "udp" else b"\x08\x00")
    return packets.Seen("srv0", direction, IPv4Address(src), IPv4Address(dst), kind, payload)


@pytest.mark.parametrize("src, dst, service, any_address, public_address", [
    ("visitor", "198.19.1.10", "tcp/443", ("web", "tcp/443"), None),         # fw4: the port alone
    ("visitor", "198.19.30.1", "tcp/2222", ("git", "tcp/22"), None),         # any router address too
    ("visitor", "198.51.100.2", "tcp/2222", ("git", "tcp/22"), ("git", "tcp/22")),
    ("visitor", "198.19.20.10", "tcp/443", None, None),                      # the target itself: not rewritten
    ("visitor", "198.19.1.10", "tcp/22", None, None),
    ("laptop", "198.19.20.10", "tcp/443", ("web", "tcp/443"), ("web", "tcp/443")),
])
def test_where_the_policy_delivers_a_flow(openwrt, src, dst, service, any_address, public_address):
    for policy, want in ((openwrt, any_address), (public_only(openwrt), public_address)):
        got_ = policy.delivery(policy.flow(src, dst, service))
        assert (got_ and (got_[0], str(got_[1]))) == (want and tuple(want)), (policy.forwards[0].daddr, got_)


def test_what_arrives_from_outside_is_judged_by_where_the_policy_delivers_it(openwrt):
    """The unmodified openwrt config: visitor's tcp/443 to the laptop's address lands on web
    (fw4 matched the port alone), which its policy states (`daddr: any`)."""
    flows = [openwrt.flow("visitor", "198.19.1.10", "tcp/443")]
    landed = seen("tcp", "198.51.100.10", "198.19.20.10", 443)
    assert nat.undelivered(openwrt, flows, "web", [landed]) == []
    assert nat.undelivered(public_only(openwrt), flows, "web", [landed]) == [landed]
    ignored = [seen("tcp", "198.51.100.10", "198.19.20.10", 443, flags=0x12),   # not new: a SYN-ACK
               seen("tcp", "198.19.1.10", "198.19.20.10", 443),                 # not from outside
               seen("tcp", "198.51.100.10", "198.19.20.10", 443, direction="out")]
    assert nat.undelivered(public_only(openwrt), flows, "web", ignored) == []
    stray = seen("udp", "198.51.100.10", "198.19.20.10", 53)
    assert nat.undelivered(openwrt, flows, "web", [stray]) == [stray]


def test_a_misrouted_flow_is_named_as_sent_where_it_landed_and_by_which_rule(openwrt):
    policy = public_only(openwrt)
    flow = policy.flow("visitor", "198.19.1.10", "tcp/443")
    landing = Landing.of(policy, flow, [("web", 443)], DNAT_443)
    assert not landing.ok
    assert landing.explain(policy) == (
        "wan/visitor -> lan/laptop tcp/443: sent to 198.19.1.10:443, it lands on servers/web tcp/443, sent there "
        f"by {DNAT_443}; the policy delivers it nowhere: expected rejected (default deny). The router forwards "
        "tcp/443 whatever address it is sent to (as an OpenWrt redirect without src_dip does): if that is meant, "
        "give forward 'Forward-HTTPS-to-web' `daddr: any` in policy.yaml; if not, match the public address in "
        "the rule")
    assert Landing.of(openwrt, openwrt.flow("visitor", "198.19.1.10", "tcp/443"), [("web", 443)]).ok
    assert Landing.of(openwrt, flow, []).ok  # landing nowhere is not misrouted (the cells judge silence)
    odd = Landing.of(openwrt, openwrt.flow("scanner", "198.51.100.2", "tcp/40404"), [("gpu", 11434)])
    assert not odd.ok and odd.explain(openwrt).startswith(
        "wan/scanner -> router@wan tcp/40404: sent to 198.51.100.2:40404, it lands on gpu/gpu tcp/11434; the "
        "policy delivers it nowhere: expected closed")


def test_the_way_in_names_landings_then_whatever_else_arrived(openwrt):
    policy = public_only(openwrt)
    landing = Landing.of(policy, policy.flow("visitor", "198.19.1.10", "tcp/443"), [("web", 443)], DNAT_443)
    arrivals = {"web": [seen("tcp", "198.51.100.10", "198.19.20.10", 443)],
                "gpu": [seen("udp", "198.51.100.10", "198.19.30.10", 53)]}
    way_in = nat.WayIn([], arrivals, {}, {}, [landing])
    assert way_in.problems(policy) == [
        landing.explain(policy),
        "gpu/gpu got 1 packets from outside that the policy delivers nowhere (first: udp 198.51.100.10 -> "
        "198.19.30.10 on srv0 (in))"]


def test_the_public_surface_names_what_landed_even_when_it_answered_as_expected(openwrt):
    from labwarden.checks.matrix import Cell
    from labwarden.probe import Observation
    flow = openwrt.flow("scanner", "198.51.100.2", "tcp/40404")
    closed = Cell(flow, openwrt.expect(flow), Observation("closed", IPv4Address("198.51.100.2"), "RST"))
    landing = Landing.of(openwrt, flow, [("gpu", 40404)])
    surface = Surface("scanner", openwrt.public, [closed], {flow: landing})
    assert closed.ok and surface.problems(openwrt) == [landing.explain(openwrt)]
    opened = Cell(flow, openwrt.expect(flow), Observation("open", IPv4Address("198.51.100.2"), "SYN-ACK"))
    surface = Surface("scanner", openwrt.public, [opened], {flow: landing})
    assert surface.problems(openwrt) == [f"{opened.message(openwrt)}; the connection lands on gpu/gpu tcp/40404"]


def test_a_sweep_packet_names_the_port_it_was_sent_to():
    from scapy.layers.inet import IP, TCP, UDP
    src, dst, ports = IPv4Address("198.51.100.20"), IPv4Address("198.51.100.2"), [1, 443, 40404, 65535]
    for item, port in zip(packets.port_sweep(src, dst, ports), ports):
        sent = IP(bytes.fromhex(item["l3"]))
        assert (sent[TCP].sport, sent[TCP].dport, str(sent[TCP].flags)) == (port, port, "S")
        checksum = sent[TCP].chksum
        del sent[TCP].chksum
        assert IP(bytes(sent))[TCP].chksum == checksum  # what scapy computes
    for item, port in zip(packets.port_sweep(src, dst, ports, "udp"), ports):
        sent = IP(bytes.fromhex(item["l3"]))
        assert (sent.len, sent[UDP].sport, sent[UDP].dport, sent[UDP].len) == (28, port, port, 8)


def test_a_udp_forward_lands_and_is_named_too(openwrt):
    """A datagram to an unusual UDP port of the public address that lands on the gpu (the
    sweep finds it by its source port) is named like a connection; the way-in check counts
    the arrival it explains once."""
    flow = openwrt.flow("visitor", "198.51.100.2", "udp/40404")
    landing = Landing.of(openwrt, flow, [("gpu", 51820)])
    assert not landing.ok and landing.explain(openwrt).startswith(
        "wan/visitor -> router@wan udp/40404: sent to 198.51.100.2:40404, it lands on gpu/gpu udp/51820; the "
        "policy delivers it nowhere: expected closed")
    arrived = seen("udp", "198.51.100.10", "198.19.30.10", 51820, sport=20000)
    assert first_packet(arrived) and ports_of(arrived) == (20000, 51820)
    assert nat.WayIn([], {"gpu": [arrived]}, {}, {}, [landing]).problems(openwrt) == [landing.explain(openwrt)]


def test_an_ipv6_pinhole_does_not_deliver_an_ipv4_packet(policy):
    """The homelab's pinhole takes wan to web's own IPv6 address on tcp/80; a DNAT that takes
    any IPv4 address (mutant forward-any-address) brings visitor's SYN to web:80 on IPv4, which
    no flow delivers there: an arrival to locate, not one the pinhole accounts for."""
    web6 = policy.topology.nodes["web"].addresses6["servers"]
    visitor = policy.topology.nodes["visitor"].addresses["wan"]
    flows = [policy.flow("visitor", web6, "tcp/80"), policy.flow("visitor", ip_address("198.18.1.10"), "tcp/80")]
    landed = seen("tcp", str(visitor), "198.18.10.10", 80)
    assert nat.undelivered(policy, flows, "web", [landed]) == [landed]
