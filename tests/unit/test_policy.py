"""The oracle over the reference home lab: what every flow must show, and why."""

import shutil
from ipaddress import IPv4Address
from pathlib import Path

import pytest
import yaml

from labwarden.errors import ConfigError
from labwarden.checks.matrix import crosses, local_only_nodes, one_way_pairs, reachers
from labwarden.declared.lab import load_lab
from labwarden.declared.policy import VERDICTS, Expectation, Service, SynLimit

HOMELAB = Path(__file__).resolve().parents[2] / "topologies" / "homelab"
PUBLIC = "203.0.113.2"


@pytest.fixture(scope="module")
def policy():
    return load_lab(HOMELAB).policy


def variant(tmp_path, **changes):
    """The home lab policy with some top-level keys changed, in a copy of the lab."""
    folder = tmp_path / "homelab"
    shutil.copytree(HOMELAB, folder)
    doc = yaml.safe_load((folder / "policy.yaml").read_text())
    doc.update(changes)
    (folder / "policy.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_lab(folder).policy


# src, dst, service, expected verdicts, node reached, reason
HOMELAB_FLOWS = [
    ("laptop", "198.18.10.10", "tcp/80", "open", "web", "allow 'personal uses the servers'"),
    ("laptop", "198.18.10.10", "tcp/3389", "filtered", None, "default deny"),
    ("laptop", "198.18.10.11", "tcp/9418", "open", "git", "allow 'personal uses the servers'"),
    ("web", "198.18.1.10", "tcp/22", "filtered", None, "default deny"),
    ("laptop", "198.18.1.11", "tcp/22", "closed", "phone", "same segment"),
    ("phone", "198.18.1.10", "tcp/22", "open", "laptop", "same segment"),
    ("laptop", "198.18.1.12", "udp/5353", "open", "tv", "same segment"),
    ("web", "198.18.10.11", "tcp/9418", "open", "git", "same segment"),
    ("visitor", PUBLIC, "tcp/80", "open", "web", "forward 'public web'"),
    ("visitor", PUBLIC, "tcp/443", "open", "web", "forward 'public web tls'"),
    ("scanner", PUBLIC, "tcp/22", "filtered", None, "default deny"),
    ("visitor", PUBLIC, "tcp/22", "filtered", None, "default deny"),
    ("visitor", PUBLIC, "icmp", "filtered", None, "default deny"),
    ("visitor", "198.18.10.10", "tcp/80", "filtered", None, "default deny"),  # no direct way in
    ("visitor", "198.18.10.1", "tcp/53", "filtered", None, "default deny"),
    ("laptop", PUBLIC, "tcp/80", "filtered", None, "default deny"),  # no hairpin
    ("laptop", "198.18.10.1", "tcp/22", "open", "router", "allow 'personal manages the router'"),
    ("laptop", "198.18.1.1", "udp/53", "open", "router", "allow 'personal manages the router'"),
    ("web", "198.18.10.1", "tcp/22", "filtered", None, "default deny"),
    ("web", "198.18.10.1", "udp/53", "open", "router", "allow 'inside zones use the router's DNS'"),
    ("web", PUBLIC, "tcp/80", "filtered", None, "default deny"),
    ("gpu", "203.0.113.10", "tcp/80", "open", "visitor", "allow 'everyone goes out'"),
    ("gpu", "203.0.113.20", "udp/53", "closed", "scanner", "allow 'everyone goes out'"),
    ("web", "198.18.20.10", "tcp/11434", "filtered", None, "default deny"),
    ("gpu", "198.18.10.10", "tcp/80", "filtered", None, "default deny"),
    ("visitor", "198.18.20.10", "icmp", "filtered", None, "default deny"),
    ("laptop", "198.18.20.10", "icmp", "open", "gpu", "allow 'personal uses the gpu'"),
    ("laptop", "198.18.20.10", "tcp/11434", "open", "gpu", "allow 'personal uses the gpu'"),
    ("laptop", "192.0.2.1", "tcp/80", "filtered", None, "not a lab address"),
    ("router", "192.0.2.1", "icmp", "filtered", None, "not a lab address"),
    ("laptop", "198.18.10.99", "tcp/80", "filtered", None, "no such host"),
    ("laptop", "198.18.1.254", "icmp", "filtered", None, "no such host"),
    ("web", "198.18.1.99", "tcp/22", "filtered", None, "default deny"),
    ("router", "198.18.1.10", "tcp/22", "open", "laptop", "same segment"),
    ("laptop", "198.18.1.10", "tcp/22", "open", "laptop", "same node"),
]


@pytest.mark.parametrize("src, dst, service, verdicts, reached, reason", HOMELAB_FLOWS,
                         ids=[f"{s}->{d} {p}" for s, d, p, *_ in HOMELAB_FLOWS])
def test_homelab_oracle(policy, src, dst, service, verdicts, reached, reason):
    expected = policy.expect(policy.flow(src, dst, service))
    assert str(expected) == verdicts
    assert expected.reached == reached
    assert expected.reason == reason


def test_the_policy_as_loaded(policy):
    assert policy.router == "router"
    assert policy.zones == {"wan": ["wan"], "servers": ["servers"], "personal": ["personal"], "ai": ["ai"]}
    assert policy.blocked == "drop"
    assert policy.public == IPv4Address(PUBLIC)
    assert policy.masquerade == ["personal", "servers", "ai"]
    assert (policy.hairpin, policy.antispoof) == (False, True)
    assert policy.services["web"] == {Service("tcp", 80), Service("tcp", 443)}
    assert "phone" not in policy.services
    assert [f.name for f in policy.forwards] == ["public web", "public web tls"]
    assert policy.allow[2].any and policy.allow[2].sources == {"personal", "servers", "ai"}
    assert policy.outside == "wan"


def test_zones_and_labels(policy):
    assert policy.zone_of("laptop") == "personal"
    assert policy.zone_of("router") == "router"
    assert policy.label("web") == "servers/web"
    assert policy.label("router") == "router"


@pytest.mark.parametrize("src, dst, service, label", [
    ("web", "198.18.1.10", "tcp/22", "servers/web -> personal/laptop tcp/22"),
    ("laptop", "198.18.10.1", "tcp/22", "personal/laptop -> router@servers tcp/22"),
    ("visitor", PUBLIC, "tcp/80", "wan/visitor -> router@wan tcp/80"),
    ("web", "192.0.2.1", "tcp/22", "servers/web -> 192.0.2.1 tcp/22"),
    ("router", "198.18.20.10", "icmp", "router -> ai/gpu icmp"),
])
def test_flow_labels(policy, src, dst, service, label):
    assert policy.flow(src, dst, service).label(policy) == label


def test_flow_fills_in_the_destination_node(policy):
    flow = policy.flow("laptop", "198.18.10.10", Service("tcp", 80))
    assert (flow.dst, flow.proto, flow.port, flow.dst_node) == (IPv4Address("198.18.10.10"), "tcp", 80, "web")
    assert policy.flow("laptop", "192.0.2.1", "icmp").dst_node is None


def test_hairpin_lets_inside_clients_use_the_forwards(tmp_path):
    policy = variant(tmp_path, hairpin=True)
    expected = policy.expect(policy.flow("laptop", PUBLIC, "tcp/80"))
    assert (str(expected), expected.reached, expected.reason) == ("open", "web", "forward 'public web'")
    # what no forward covers is still the router's own business
    assert policy.expect(policy.flow("laptop", PUBLIC, "tcp/22")).reached == "router"
    assert str(policy.expect(policy.flow("gpu", PUBLIC, "tcp/22"))) == "filtered"


# blocked, a forwarded flow, the router's own address (on-link; off-link, tcp; udp; icmp echo)
DENIED = [("drop", "filtered", "filtered", "filtered", "filtered", "filtered"),
          ("reject", "rejected", "closed", "closed", "closed", "rejected"),
          ("any", "filtered|rejected", "closed|filtered|rejected", "closed|filtered|rejected",
           "closed|filtered|rejected", "filtered|rejected")]


@pytest.mark.parametrize("blocked, forwarded, on_link, off_link, udp, echo", DENIED,
                         ids=[d[0] for d in DENIED])
def test_how_the_router_answers_a_denied_flow(tmp_path, blocked, forwarded, on_link, off_link, udp, echo):
    policy = variant(tmp_path, blocked=blocked)
    assert str(policy.expect(policy.flow("web", "198.18.1.10", "tcp/22"))) == forwarded
    # a flow to the router's own address is refused in that address's name: a reset or
    # port-unreachable from the destination itself, which is what a closed port sends
    assert str(policy.expect(policy.flow("visitor", PUBLIC, "tcp/22"))) == on_link
    # ... also from an address off the source's link (the agent knows the router's
    # addresses are 0 hops away, so it does not take that reset for a forged one)
    assert str(policy.expect(policy.flow("web", "198.18.1.1", "tcp/22"))) == off_link
    assert str(policy.expect(policy.flow("web", "198.18.1.1", "udp/9"))) == udp
    assert str(policy.expect(policy.flow("visitor", PUBLIC, "icmp"))) == echo
    assert policy.expect(policy.flow("visitor", PUBLIC, "tcp/22")).reached is None
    # neither the outside world nor hosts on one segment depend on the router's manners
    assert str(policy.expect(policy.flow("web", "192.0.2.1", "tcp/22"))) == "filtered"
    assert str(policy.expect(policy.flow("laptop", "198.18.1.11", "tcp/22"))) == "closed"


def test_replies_pass_for_flows_that_got_through(policy):
    assert policy.return_allowed(policy.flow("laptop", "198.18.10.10", "tcp/80"))
    assert policy.return_allowed(policy.flow("laptop", "198.18.1.11", "tcp/22"))  # closed, but reached
    assert not policy.return_allowed(policy.flow("web", "198.18.1.10", "tcp/22"))


@pytest.mark.parametrize("src, dst, service, allowed", [
    ("laptop", "web", "tcp/80", True), ("web", "laptop", "tcp/22", False),
    ("laptop", "phone", "tcp/22", True), ("laptop", "router", "tcp/22", True),
    ("visitor", "web", "tcp/80", False),  # only through the forward, never directly
    ("visitor", "router", "tcp/80", False),  # the forward sends it on to web
    ("gpu", "visitor", "udp/9", True), ("web", "gpu", "icmp", False)])
def test_may_initiate(policy, src, dst, service, allowed):
    assert policy.may_initiate(src, dst, service) is allowed


def test_declared_services(policy):
    declared = policy.declared_services()
    assert {Service.parse(p) for p in ("tcp/22", "udp/53", "udp/1900", "tcp/11434", "icmp")} <= declared
    assert Service("tcp", 3389) not in declared


def test_services_parse_print_and_sort():
    assert str(Service.parse("tcp/22")) == "tcp/22"
    assert str(Service.parse("icmp")) == "icmp"
    assert sorted(map(Service.parse, ["udp/53", "icmp", "tcp/443", "tcp/22"])) == [
        Service("icmp"), Service("tcp", 22), Service("tcp", 443), Service("udp", 53)]
    for bad in ("tcp/0", "tcp/65536", "udp", "icmp/8", "any"):
        with pytest.raises(ValueError, match="tcp/N or udp/N"):
            Service.parse(bad)


def test_expectation_prints_its_verdicts():
    expected = Expectation(frozenset({"rejected", "filtered"}), None, "default deny")
    assert str(expected) == "filtered|rejected"
    assert expected.admits("rejected") and not expected.admits("open")


def test_every_flow_has_a_coherent_expectation(policy):
    """Exhaustive over the home lab: reached flows are open or closed, the rest are not."""
    topo = policy.topology
    addresses = [a for n in topo.nodes.values() for a in n.addresses.values()] + ["198.18.10.99", "192.0.2.1"]
    for src in topo.nodes:
        for dst in addresses:
            for service in policy.declared_services() | {Service("udp", 9)}:
                flow = policy.flow(src, dst, service)
                expected = policy.expect(flow)
                assert expected.verdicts and expected.verdicts <= VERDICTS, flow.label(policy)
                answered = {"open", "closed"}
                assert (expected.verdicts <= answered) == (expected.reached is not None), flow.label(policy)


def test_the_homelab_intent_holds_in_its_policy(policy):
    """The home lab's promises (topologies/homelab/policy.yaml), read off the oracle: servers never open connections to
    personal devices, and the GPU is reachable from the personal LAN only."""
    topo = policy.topology
    everything = policy.declared_services() | {Service("udp", 9)}
    for service in everything:
        for server in ("web", "git"):
            for device in ("laptop", "phone", "tv"):
                assert not policy.may_initiate(server, device, service)
        for src in topo.nodes:
            if policy.zone_of(src) not in ("personal", "ai", "router"):
                assert not policy.may_initiate(src, "gpu", service), (src, str(service))


# -- an OpenWrt router: topologies/openwrt-homelab (firewall4's own ruleset) -------

OPENWRT = HOMELAB.parent / "openwrt-homelab"
OW_PUBLIC = "198.51.100.2"


@pytest.fixture(scope="module")
def openwrt():
    return load_lab(OPENWRT).policy


REFUSED = "default deny (refused by the router itself: looks closed)"

OPENWRT_FLOWS = [
    # lan: input ACCEPT, forwardings to wan, servers and gpu
    ("laptop", "198.19.1.1", "tcp/22", "open", "router", "allow 'lan input ACCEPT'"),
    ("laptop", "198.19.1.1", "tcp/443", "closed", "router", "allow 'lan input ACCEPT'"),
    ("laptop", "198.19.20.1", "tcp/443", "closed", "router", "allow 'lan input ACCEPT'"),
    ("laptop", "198.19.20.1", "tcp/80", "open", "router", "allow 'lan input ACCEPT'"),  # LuCI
    ("laptop", "198.19.30.1", "udp/9", "closed", "router", "allow 'lan input ACCEPT'"),
    ("laptop", "198.19.20.10", "tcp/443", "open", "web", "allow 'forwarding lan->servers'"),
    ("laptop", "198.19.30.10", "tcp/11434", "open", "gpu", "allow 'forwarding lan->gpu'"),
    ("phone", "198.51.100.10", "tcp/80", "open", "visitor", "allow 'forwarding lan->wan'"),
    ("laptop", "198.19.40.10", "tcp/22", "rejected", None, "default deny"),  # no lan->guest
    # servers: DNS and DHCP at the router, out to wan, nothing else
    ("web", "198.19.20.1", "udp/53", "open", "router", "allow 'Allow-DNS-Servers'"),
    ("web", "198.19.1.1", "tcp/53", "open", "router", "allow 'Allow-DNS-Servers'"),
    ("git", "198.19.20.1", "udp/67", "closed", "router", "allow 'Allow-DHCP-Servers'"),  # no DHCP server
    ("web", "198.19.20.1", "tcp/22", "closed", None, REFUSED),
    ("web", "198.19.1.1", "tcp/22", "closed", None, REFUSED),
    ("web", "198.19.20.1", "udp/5353", "closed", None, REFUSED),
    ("web", "198.19.20.1", "icmp", "rejected", None, "default deny"),  # no Allow-Ping for servers
    ("web", "198.51.100.20", "udp/53", "closed", "scanner", "allow 'forwarding servers->wan'"),
    ("web", "198.19.1.10", "tcp/22", "rejected", None, "default deny"),
    # gpu: local-only, not even the router's DNS
    ("gpu", "198.19.30.1", "udp/53", "closed", None, REFUSED),
    ("gpu", "198.51.100.10", "tcp/80", "rejected", None, "default deny"),
    ("gpu", "198.19.20.10", "tcp/443", "rejected", None, "default deny"),
    # guest: DNS, DHCP and wan only
    ("tablet", "198.19.40.1", "tcp/53", "open", "router", "allow 'Allow-DNS-Guest'"),
    ("tablet", "198.19.40.1", "udp/67", "closed", "router", "allow 'Allow-DHCP-Guest'"),
    ("tablet", "198.19.40.1", "tcp/22", "closed", None, REFUSED),
    ("tablet", "198.51.100.10", "tcp/80", "open", "visitor", "allow 'forwarding guest->wan'"),
    ("tablet", "198.19.1.10", "tcp/22", "rejected", None, "default deny"),
    # wan: ping the router; redirects on every address the router routes for wan
    ("visitor", OW_PUBLIC, "icmp", "open", "router", "allow 'Allow-Ping'"),
    ("visitor", "198.19.1.1", "icmp", "open", "router", "allow 'Allow-Ping'"),
    ("visitor", OW_PUBLIC, "tcp/22", "closed", None, REFUSED),
    ("scanner", "198.19.1.1", "tcp/22", "closed", None, REFUSED),
    ("visitor", OW_PUBLIC, "udp/53", "closed", None, REFUSED),
    ("visitor", OW_PUBLIC, "tcp/443", "open", "web", "forward 'Forward-HTTPS-to-web'"),
    ("visitor", OW_PUBLIC, "tcp/2222", "open", "git", "forward 'Forward-SSH-to-bastion'"),
    ("visitor", "198.19.1.1", "tcp/443", "open", "web", "forward 'Forward-HTTPS-to-web'"),
    ("visitor", "198.19.1.10", "tcp/443", "open", "web", "forward 'Forward-HTTPS-to-web'"),
    ("scanner", "198.19.30.10", "tcp/2222", "open", "git", "forward 'Forward-SSH-to-bastion'"),
    ("visitor", "198.19.1.99", "tcp/443", "open", "web", "forward 'Forward-HTTPS-to-web'"),  # no such host
    ("visitor", "198.19.20.11", "tcp/2222", "open", "git", "forward 'Forward-SSH-to-bastion'"),
    # ... but a flow already addressed to the target has nothing rewritten: a direct one
    ("visitor", "198.19.20.10", "tcp/443", "rejected", None, "default deny"),
    ("visitor", "198.19.20.11", "tcp/22", "rejected", None, "default deny"),
    ("visitor", "198.19.30.10", "tcp/11434", "rejected", None, "default deny"),
    ("visitor", "198.51.100.20", "tcp/443", "closed", "scanner", "same segment"),  # never through the router
    ("laptop", OW_PUBLIC, "tcp/443", "closed", "router", "allow 'lan input ACCEPT'"),  # no reflection
    ("web", OW_PUBLIC, "tcp/443", "closed", None, REFUSED),
]


@pytest.mark.parametrize("src, dst, service, verdicts, reached, reason", OPENWRT_FLOWS,
                         ids=[f"{s}->{d} {p}" for s, d, p, *_ in OPENWRT_FLOWS])
def test_openwrt_oracle(openwrt, src, dst, service, verdicts, reached, reason):
    expected = openwrt.expect(openwrt.flow(src, dst, service))
    assert (str(expected), expected.reached, expected.reason) == (verdicts, reached, reason)


def test_the_openwrt_policy_as_loaded(openwrt):
    assert openwrt.blocked == "reject"
    assert [(f.name, f.daddr) for f in openwrt.forwards] == [
        ("Forward-HTTPS-to-web", "any"), ("Forward-SSH-to-bastion", "any")]
    assert openwrt.syn_limit == SynLimit(25.0, 50)
    assert openwrt.outside == "wan" and openwrt.antispoof and not openwrt.hairpin
    # the homelab's forwards keep the default: its public address only
    homelab = load_lab(HOMELAB).policy
    assert {f.daddr for f in homelab.forwards} == {"public"} and homelab.syn_limit is None


@pytest.mark.parametrize("src, dst, service, limited", [
    ("laptop", "198.19.1.1", "tcp/22", True),
    ("web", "198.19.30.1", "tcp/9999", True),        # refused, but the SYN reached the limiter first
    ("visitor", OW_PUBLIC, "tcp/22", True),
    ("visitor", OW_PUBLIC, "tcp/443", False),         # sent on to web: never the router's input
    ("visitor", "198.19.1.1", "tcp/2222", False),
    ("laptop", "198.19.1.1", "udp/53", False),
    ("laptop", "198.19.1.1", "icmp", False),
    ("laptop", "198.19.20.10", "tcp/443", False),     # through the router, not to it
    ("router", "198.19.1.1", "tcp/22", False),        # the router's own loopback
])
def test_which_syns_count_against_the_routers_limit(openwrt, src, dst, service, limited):
    assert openwrt.syn_limited(openwrt.flow(src, dst, service)) is limited


def test_no_syn_limit_paces_nothing(policy):
    assert not policy.syn_limited(policy.flow("laptop", "198.18.1.1", "tcp/22"))


def test_forwards_to_any_address_in_the_homelab(tmp_path):
    policy = variant(tmp_path, forwards=[{"name": "web", "public": "tcp/80", "to": "web", "daddr": "any"}])
    for dst in ("198.18.1.10", "198.18.20.1", "198.18.20.99", PUBLIC):
        assert policy.expect(policy.flow("visitor", dst, "tcp/80")).reached == "web", dst
    assert policy.expect(policy.flow("visitor", "198.18.10.10", "tcp/80")).reached is None  # the target itself
    assert policy.expect(policy.flow("laptop", "198.18.20.10", "tcp/80")).reached is None  # not from outside
    assert policy.expect(policy.flow("laptop", PUBLIC, "tcp/80")).reached is None  # no hairpin
    assert policy.expect(policy.flow("visitor", "203.0.113.20", "tcp/80")).reason == "same segment"
    assert policy.may_initiate("visitor", "laptop", "tcp/80") is False  # reached web, not the laptop


def test_every_openwrt_flow_has_a_coherent_expectation(openwrt):
    """Flows that reach a node never time out; denied ones never come back open."""
    topo = openwrt.topology
    addresses = [a for n in topo.nodes.values() for a in n.addresses.values()] + ["198.19.1.99", "192.0.2.1"]
    for src in topo.nodes:
        for dst in addresses:
            for service in openwrt.declared_services() | {Service("udp", 9), Service("tcp", 9)}:
                flow = openwrt.flow(src, dst, service)
                expected = openwrt.expect(flow)
                assert expected.verdicts and expected.verdicts <= VERDICTS, flow.label(openwrt)
                if expected.reached is None:
                    assert "open" not in expected.verdicts, flow.label(openwrt)
                else:
                    assert "filtered" not in expected.verdicts, flow.label(openwrt)
                if expected.verdicts == {"closed", "rejected"}:  # only the router's own off-link resets
                    assert flow.proto == "tcp" and flow.dst_node == openwrt.router, flow.label(openwrt)


def test_the_openwrt_intent_holds_in_its_policy(openwrt):
    """The UCI config's promises, read off the oracle: the gpu is reached from lan only,
    guests reach nothing inside, servers never open connections to lan or guest."""
    everything = openwrt.declared_services() | {Service("udp", 9)}
    for service in everything:
        for src in openwrt.topology.nodes:
            if openwrt.zone_of(src) not in ("lan", "gpu", "router"):
                assert not openwrt.may_initiate(src, "gpu", service), (src, str(service))
        for inside in ("laptop", "phone", "web", "git", "gpu"):
            assert not openwrt.may_initiate("tablet", inside, service)
        for server in ("web", "git"):
            for device in ("laptop", "phone", "tablet"):
                assert not openwrt.may_initiate(server, device, service)


def policy_error(tmp_path, change) -> ConfigError:
    folder = tmp_path / "openwrt-homelab"
    shutil.copytree(OPENWRT, folder)
    doc = yaml.safe_load((folder / "policy.yaml").read_text())
    change(doc)
    (folder / "policy.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(ConfigError) as caught:
        load_lab(folder)
    return caught.value


@pytest.mark.parametrize("change, field, problem", [
    (lambda d: d["forwards"][0].update(daddr="lan"), "forwards[0].daddr", "'lan' is not one of: public, any"),
    (lambda d: d.update(syn_limit=25), "syn_limit", "must be a mapping with keys among: rate, burst"),
    (lambda d: d.update(syn_limit={"rate": 25}), "syn_limit.burst", "missing"),
    (lambda d: d.update(syn_limit={"rate": 25, "burst": 50, "per": "s"}), "syn_limit.per", "unknown key"),
    (lambda d: d.update(syn_limit={"rate": 0, "burst": 50}), "syn_limit.rate", "not a positive number"),
    (lambda d: d.update(syn_limit={"rate": "25/second", "burst": 50}), "syn_limit.rate", "not a positive"),
    (lambda d: d.update(syn_limit={"rate": 25, "burst": 2.5}), "syn_limit.burst", "not a positive whole"),
])
def test_bad_forward_daddr_or_syn_limit(tmp_path, change, field, problem):
    err = policy_error(tmp_path, change)
    assert err.field == field and problem in err.problem


# -- tunnels ---------------------------------------------------------------------

AIRPLANE = Path(__file__).resolve().parents[2] / "topologies" / "airplane"


def test_the_tunnel_as_loaded(policy):
    tunnel, = policy.tunnels
    assert (tunnel.name, tunnel.client, tunnel.edge) == ("laptop page", "laptop", "edge")
    assert (tunnel.local, tunnel.public) == (Service("tcp", 8080), Service("tcp", 80))
    assert tunnel.page == HOMELAB / "www" / "index.html"
    assert policy.listening("edge") == {Service("tcp", 22), Service("tcp", 80)}
    assert policy.listening("laptop") == {Service("tcp", 22), Service("tcp", 8080)}
    assert {Service("tcp", 8080), Service("tcp", 80)} <= policy.declared_services()


@pytest.mark.parametrize("src, dst, service, verdicts, reached", [
    ("visitor", "203.0.113.30", "tcp/80", "open", "edge"),       # the tunnel's public side
    ("laptop", "203.0.113.30", "tcp/80", "open", "edge"),        # the laptop visits its own page
    ("visitor", "198.18.1.10", "tcp/8080", "filtered", None),    # never the laptop directly
    ("edge", "198.18.1.10", "tcp/8080", "filtered", None),
    ("visitor", PUBLIC, "tcp/8080", "filtered", None),           # no forward for it
    ("phone", "198.18.1.10", "tcp/8080", "open", "laptop"),      # python3 -m http.server binds everywhere
    ("visitor", "203.0.113.30", "tcp/8080", "closed", "edge"),
])
def test_the_tunnel_in_the_oracle(policy, src, dst, service, verdicts, reached):
    expected = policy.expect(policy.flow(src, dst, service))
    assert (str(expected), expected.reached) == (verdicts, reached)


@pytest.mark.parametrize("src, dst, service, verdicts, reached, reason", [
    ("visitor", "198.18.60.30", "tcp/80", "open", "edge", "same segment"),
    ("visitor", "198.18.50.10", "tcp/8080", "filtered", None, "default deny"),
    ("satellite", "198.18.50.10", "icmp", "filtered", None, "default deny"),
    ("visitor", "198.18.51.2", "tcp/53", "filtered", None, "default deny"),
    ("laptop", "198.18.60.30", "tcp/80", "open", "edge", "allow 'passengers go online'"),  # the kite's way out
    ("laptop", "198.18.51.2", "udp/53", "open", "gateway", "allow 'passengers use the gateway's DNS'"),
    ("visitor", "198.18.51.1", "icmp", "open", "satellite", "allow 'the internet routes itself'"),
    ("passenger", "198.18.50.10", "tcp/8080", "open", "laptop", "same segment"),
])
def test_the_airplane_oracle(src, dst, service, verdicts, reached, reason):
    airplane = load_lab(AIRPLANE).policy
    expected = airplane.expect(airplane.flow(src, dst, service))
    assert (str(expected), expected.reached, expected.reason) == (verdicts, reached, reason)
    assert airplane.outside == "wan" and airplane.masquerade == ["cabin"]
    assert airplane.tunnels[0].page.stat().st_size < 1024  # the seed's <1 kB page


def test_a_tunnel_named_by_host():
    """The airplane's edge routes by Host: visitors, and the page-load budget through the
    edge, ask for laptop.tunnel.test; the home lab's tunnel has no name (its edge's address)."""
    airplane = load_lab(AIRPLANE).policy
    assert airplane.tunnels[0].host == "laptop.tunnel.test"
    page, = [b for b in airplane.budgets if b.kind == "http"]
    assert page.host == "laptop.tunnel.test" and page.spec(0)["host"] == "laptop.tunnel.test"
    assert all(b.host is None for b in airplane.budgets if b.kind != "http")
    assert load_lab(HOMELAB).policy.tunnels[0].host is None


# -- what the lab suites take from the policy (tests/unit, so the lab tests only judge packets)

SHIPPED = sorted(p.parent for p in (HOMELAB.parent).glob("*/policy.yaml"))


def test_homelab_local_only_nodes_and_who_reaches_them(policy):
    assert local_only_nodes(policy) == ["git", "laptop", "phone", "tv", "gpu"]  # web is forwarded to
    assert reachers(policy, "gpu") == {"personal"}
    assert reachers(policy, "git") == {"personal", "servers"}


@pytest.mark.parametrize("folder", SHIPPED, ids=[f.name for f in SHIPPED])
def test_every_local_only_node_with_services_is_reached_by_someone(folder):
    """suites/isolation/test_local_only.py checks who reaches them: someone must."""
    shipped = load_lab(folder).policy
    nodes = [n for n in local_only_nodes(shipped) if shipped.services.get(n)]
    assert nodes
    assert not [n for n in nodes if not reachers(shipped, n) and n != "tablet"]  # openwrt's guest tablet: nobody


@pytest.mark.parametrize("folder", SHIPPED, ids=[f.name for f in SHIPPED])
def test_one_way_pairs_are_one_way(folder):
    """suites/isolation/test_stateful.py probes these: the forward flow must be open across
    the router, its reverse (a service of the forward's source) must not get through."""
    shipped = load_lab(folder).policy
    pairs = one_way_pairs(shipped)
    assert pairs, "the policy has no one-way zone pair to check"
    for forward, reverse in pairs:
        assert shipped.expect(forward).verdicts == {"open"} and crosses(shipped, forward)
        assert (reverse.src, reverse.dst_node) == (forward.dst_node, forward.src)
        assert reverse.service in shipped.services[forward.src]
        assert shipped.expect(reverse).reached is None
        assert reverse.dst.version == forward.dst.version
    assert len({(shipped.zone_of(f.src), shipped.zone_of(f.dst_node), f.dst.version)
                for f, _ in pairs}) == len(pairs)


def test_homelab_one_way_pairs(policy):
    labels = [(f.label(policy), r.label(policy)) for f, r in one_way_pairs(policy)]
    assert ("personal/laptop -> servers/web tcp/80", "servers/web -> personal/laptop tcp/22") in labels
    assert ("personal/laptop -> ai/gpu tcp/22", "ai/gpu -> personal/laptop tcp/22") in labels
