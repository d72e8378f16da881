"""Broken labs fail at load time with a ConfigError naming file, field and problem.

Each case copies topologies/homelab, breaks one thing and checks the error.
"""

import shutil
from pathlib import Path

import pytest
import yaml

from labwarden.errors import ConfigError, LabwardenError
from labwarden.declared.lab import load_lab
from labwarden.declared.topology import load_topology

HOMELAB = Path(__file__).resolve().parents[2] / "topologies" / "homelab"


@pytest.fixture
def lab(tmp_path):
    folder = tmp_path / "homelab"
    shutil.copytree(HOMELAB, folder)
    return folder


def edit_yaml(file, change):
    doc = yaml.safe_load(file.read_text())
    change(doc)
    file.write_text(yaml.safe_dump(doc, sort_keys=False))


def break_line(file, line, broken):
    """Replace a whole line; return its 1-based number."""
    lines = file.read_text().splitlines()
    number = lines.index(line)
    lines[number] = broken
    file.write_text("\n".join(lines) + "\n")
    return number + 1


def load_error(lab) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_lab(lab)
    return caught.value


def x(name, **settings):
    return lambda d: d["services"][name].setdefault("x-labwarden", {}).update(settings)


def test_config_error_reads_file_field_problem():
    err = ConfigError("a/compose.yaml", "services.web", "broken")
    assert (err.file, err.field, err.problem) == ("a/compose.yaml", "services.web", "broken")
    assert str(err) == "a/compose.yaml: services.web: broken"
    assert isinstance(err, LabwardenError)


# -- topology ------------------------------------------------------------------

def test_topology_folder_missing(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_topology(tmp_path / "nope")
    assert (caught.value.file, caught.value.field) == (str(tmp_path / "nope"), "compose.yaml")
    assert "no such lab folder" in caught.value.problem


def test_unknown_lab_name_lists_the_known_labs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_topology("nope")
    assert (caught.value.file, caught.value.field) == ("topologies/nope", "compose.yaml")
    assert "known labs: airplane, homelab" in caught.value.problem


def test_compose_file_missing(lab):
    (lab / "compose.yaml").unlink()
    err = load_error(lab)
    assert (err.file, err.field) == (str(lab), "compose.yaml")
    assert "no such file" in err.problem


def test_compose_yaml_syntax_error(lab):
    line = break_line(lab / "compose.yaml", "    command: [http:80, https:443]", "    command: http: 80")
    err = load_error(lab)
    assert (err.file, err.field) == (f"{lab}/compose.yaml", f"line {line}")
    assert "mapping values are not allowed here" in err.problem


def test_error_message_names_file_field_and_problem(lab):
    edit_yaml(lab / "compose.yaml",
              lambda d: d["services"]["web"]["networks"]["servers"].update(ipv4_address="198.18.11.10"))
    assert str(load_error(lab)) == (f"{lab}/compose.yaml: services.web.networks.servers.ipv4_address: "
                                    "198.18.11.10 is not in segment servers (198.18.10.0/24)")


def set_address(name, segment, address):
    return lambda d: d["services"][name]["networks"].update({segment: {"ipv4_address": address}})


def set_subnet(segment, subnet):
    return lambda d: d["networks"][segment]["ipam"]["config"][0].update(subnet=subnet)


TOPOLOGY_CASES = {
    "no services": (
        lambda d: d.update(services={}), "services", "no services"),
    "undeclared network": (
        set_address("web", "dmz", "198.18.30.10"),
        "services.web.networks.dmz", "network dmz is not declared under networks (declared: wan, servers"),
    "segment without subnet": (
        lambda d: d["networks"]["ai"].pop("ipam"),
        "networks.ai.ipam.config[0].subnet", "every segment needs an explicit subnet"),
    "invalid subnet": (
        set_subnet("ai", "198.18.20.0/33"), "networks.ai.ipam.config[0].subnet", "is not an IPv4 subnet"),
    "subnet with host bits": (
        set_subnet("ai", "198.18.20.1/24"), "networks.ai.ipam.config[0].subnet", "host bits set"),
    "overlapping subnets": (
        set_subnet("ai", "198.18.0.0/16"), "networks.ai.ipam.config[0].subnet",
        "198.18.0.0/16 of segment ai overlaps segment servers (198.18.10.0/24)"),
    "ipam gateway outside the subnet": (
        lambda d: d["networks"]["ai"]["ipam"]["config"][0].update(gateway="198.18.21.254"),
        "networks.ai.ipam.config[0].gateway", "not in the segment's subnet"),
    "address outside its segment": (
        set_address("web", "servers", "198.18.11.10"), "services.web.networks.servers.ipv4_address",
        "198.18.11.10 is not in segment servers (198.18.10.0/24)"),
    "malformed address": (
        set_address("web", "servers", "198.18.10.300"), "services.web.networks.servers.ipv4_address",
        "'198.18.10.300' is not an IPv4 address"),
    "address is the bridge's": (
        set_address("web", "servers", "198.18.10.254"), "services.web.networks.servers.ipv4_address",
        "ipam gateway"),
    "address used twice": (
        set_address("git", "servers", "198.18.10.10"), "services.git.networks.servers.ipv4_address",
        "198.18.10.10 is already the address of web"),
    "attachment without address": (
        lambda d: d["services"]["web"].update(networks=["servers"]),
        "services.web.networks.servers.ipv4_address", "every attachment needs a fixed address"),
    "node without networks": (
        lambda d: d["services"]["web"].pop("networks"), "services.web.networks", "at least one segment"),
    "gateway not on-link": (
        x("web", gateway="198.18.1.1"), "services.web.x-labwarden.gateway",
        "198.18.1.1 is not on a segment web is attached to (servers 198.18.10.0/24); a next hop must be on-link"),
    "route next hop not on-link": (
        x("visitor", routes={"198.18.0.0/15": "198.18.10.1"}), "services.visitor.x-labwarden.routes[198.18.0.0/15]",
        "a next hop must be on-link"),
    "route to a malformed prefix": (
        x("visitor", routes={"198.18.0.0/99": "203.0.113.2"}), "services.visitor.x-labwarden.routes[198.18.0.0/99]",
        "is not an IPv4 subnet"),
    "unknown x-labwarden key": (
        x("web", gw="198.18.10.1"), "services.web.x-labwarden.gw",
        "unknown key; known keys: firewall, gateway, gateway6, impair, interfaces, ipv6, routes"),
    "interface for a segment not attached": (
        x("web", interfaces={"wan": "eth0"}), "services.web.x-labwarden.interfaces.wan",
        "wan is not a segment web is attached to (attached: servers)"),
    "interface name too long": (
        x("web", interfaces={"servers": "a" * 16}), "services.web.x-labwarden.interfaces.servers",
        "is not a valid Linux interface name (1-15 characters"),
    "interface name with a slash": (
        x("web", interfaces={"servers": "eth/0"}), "services.web.x-labwarden.interfaces.servers",
        "is not a valid Linux interface name"),
    "two segments on one interface": (
        x("router", interfaces={"wan": "eth0", "ai": "eth0"}), "services.router.x-labwarden.interfaces.ai",
        "segments wan and ai would share interface eth0"),
    "impaired link with an unknown profile": (
        x("web", impair={"servers": "moon"}), "services.web.x-labwarden.impair.servers",
        "unknown profile 'moon'; known profiles: lan, fiber-isp"),
    "impaired link on a segment not attached": (
        x("web", impair={"wan": "lan"}), "services.web.x-labwarden.impair.wan",
        "wan is not a segment web is attached to (attached: servers)"),
    "impaired segment with an unknown setting": (
        lambda d: d["networks"]["servers"].setdefault("x-labwarden", {}).update(impair={"delay": "5 ms", "lag": 1}),
        "networks.servers.x-labwarden.impair.lag",
        "unknown key; known keys: profile, delay, jitter, loss, rate, limit, reorder"),
    "impaired segment with a delay that is no time": (
        lambda d: d["networks"]["servers"].setdefault("x-labwarden", {}).update(impair={"delay": "5 parsecs"}),
        "networks.servers.x-labwarden.impair.delay", "'5 parsecs' is not a quantity in ms, s, us"),
}


@pytest.mark.parametrize("change, field, problem", TOPOLOGY_CASES.values(), ids=TOPOLOGY_CASES.keys())
def test_bad_topology(lab, change, field, problem):
    edit_yaml(lab / "compose.yaml", change)
    err = load_error(lab)
    assert (err.file, err.field) == (f"{lab}/compose.yaml", field)
    assert problem in err.problem


def test_firewall_file_missing(lab):
    (lab / "router" / "nftables.conf").unlink()
    err = load_error(lab)
    assert (err.file, err.field) == (f"{lab}/compose.yaml", "services.router.x-labwarden.firewall")
    assert "no such file" in err.problem and "router/nftables.conf" in err.problem


# -- policy --------------------------------------------------------------------

def test_policy_file_missing(lab):
    (lab / "policy.yaml").unlink()
    err = load_error(lab)
    assert (err.file, err.field) == (str(lab), "policy.yaml")
    assert "no such file" in err.problem


def test_policy_yaml_syntax_error(lab):
    line = break_line(lab / "policy.yaml", "blocked: drop", "blocked: drop: now")
    err = load_error(lab)
    assert (err.file, err.field) == (f"{lab}/policy.yaml", f"line {line}")
    assert "invalid YAML" in err.problem


def rule(i, **settings):
    return lambda d: d["allow"][i].update(settings)


def forward(i, **settings):
    return lambda d: d["forwards"][i].update(settings)


POLICY_CASES = {
    "missing router": (lambda d: d.pop("router"), "router", "missing: this key is required"),
    "missing zones": (lambda d: d.pop("zones"), "zones", "missing: this key is required"),
    "unknown top-level key": (
        lambda d: d.update(tunnel=True), "tunnel",
        "unknown key; known keys: router, zones, blocked, services, allow, forwards, public"),
    "router is not a node": (
        lambda d: d.update(router="gateway"), "router", "'gateway' is not a node of homelab (nodes: router, web"),
    "zone naming an unknown segment": (
        lambda d: d["zones"]["ai"].append("dmz"), "zones.ai[1]",
        "unknown segment 'dmz'; segments of homelab: wan, servers, personal, ai"),
    "segment in two zones": (
        lambda d: d["zones"]["servers"].append("ai"), "zones.ai[0]", "segment ai is already in zone servers"),
    "segment in no zone": (
        lambda d: d["zones"].pop("ai"), "zones", "segment ai is in no zone"),
    "zone named router": (
        lambda d: d["zones"].update(router=[]), "zones.router", "reserved"),
    "unknown zone in a rule": (
        rule(2, **{"from": ["personal", "lan"]}), "allow[2].from",
        "unknown zone 'lan'; known zones: wan, servers, personal, ai, router"),
    "unknown zone as a rule's target": (
        rule(0, to="dmz"), "allow[0].to", "unknown zone 'dmz'"),
    "rule without ports": (
        lambda d: d["allow"][1].pop("ports"), "allow[1].ports", "missing"),
    "unknown key in a rule": (
        rule(0, action="reject"), "allow[0].action", "unknown key; known keys: name, from, to, ports"),
    "port out of range": (
        rule(0, ports=["tcp/22", "tcp/70000"]), "allow[0].ports[1]",
        "'tcp/70000' is not a port: use tcp/N or udp/N (N in 1..65535), or icmp (or the whole list: any)"),
    "port not a number": (
        lambda d: d["services"].update(web=["tcp/x"]), "services.web[0]", "'tcp/x' is not a port: use tcp/N"),
    "unknown protocol": (
        forward(0, public="sctp/1"), "forwards[0].public", "'sctp/1' is not a port: use tcp/N or udp/N"),
    "unknown node in services": (
        lambda d: d["services"].update(nas=["tcp/445"]), "services.nas", "'nas' is not a node of homelab"),
    "forward to an unknown node": (
        forward(0, to="nas"), "forwards[0].to", "'nas' is not a node of homelab"),
    "forward to a bad port": (
        forward(0, port=0), "forwards[0].port", "not a port number"),
    "forward of icmp": (
        forward(0, public="icmp"), "forwards[0].public", "icmp cannot be forwarded"),
    "public not the router's": (
        lambda d: d.update(public="203.0.113.10"), "public",
        "203.0.113.10 is not an address of the router router (its addresses: 203.0.113.2, 198.18.10.1"),
    "forwards without public": (
        lambda d: d.pop("public"), "public", "forwards need the router's public address"),
    "blocked unknown": (
        lambda d: d.update(blocked="ignore"), "blocked", "'ignore' is not one of: drop, reject, any"),
    "hairpin not a boolean": (
        lambda d: d.update(hairpin="yes please"), "hairpin", "must be true or false"),
    "masquerade unknown zone": (
        lambda d: d["masquerade"].append("lan"), "masquerade[3]", "unknown zone 'lan'"),
}


@pytest.mark.parametrize("change, field, problem", POLICY_CASES.values(), ids=POLICY_CASES.keys())
def test_bad_policy(lab, change, field, problem):
    edit_yaml(lab / "policy.yaml", change)
    err = load_error(lab)
    assert (err.file, err.field) == (f"{lab}/policy.yaml", field)
    assert problem in err.problem


def test_only_the_router_may_span_zones(lab):
    edit_yaml(lab / "compose.yaml", set_address("web", "personal", "198.18.1.20"))
    err = load_error(lab)
    assert (err.file, err.field) == (f"{lab}/policy.yaml", "zones")
    assert "node web is attached to zones personal and servers; only the router may span zones" in err.problem


def test_policy_at_another_path(lab):
    shutil.copy(lab / "policy.yaml", lab / "strict.yaml")
    edit_yaml(lab / "strict.yaml", lambda d: d.update(blocked="bounce"))
    with pytest.raises(ConfigError) as caught:
        load_lab(lab, lab / "strict.yaml")
    assert (caught.value.file, caught.value.field) == (f"{lab}/strict.yaml", "blocked")


def tunnel(i, **settings):
    return lambda d: d["tunnels"][i].update(settings)


TUNNEL_CASES = {
    "tunnels not a list": (lambda d: d.update(tunnels={"laptop": "edge"}), "tunnels", "must be a list"),
    "unknown key in a tunnel": (
        tunnel(0, url="http://localhost:8080"), "tunnels[0].url",
        "unknown key; known keys: name, client, local, edge, public, page, host"),
    "tunnel without an edge": (lambda d: d["tunnels"][0].pop("edge"), "tunnels[0].edge", "missing"),
    "tunnel client not a node": (tunnel(0, client="tablet"), "tunnels[0].client", "'tablet' is not a node of homelab"),
    "tunnel edge not a node": (tunnel(0, edge="cloudflare"), "tunnels[0].edge", "'cloudflare' is not a node"),
    "tunnel to itself": (tunnel(0, edge="laptop"), "tunnels[0].edge", "the edge must be another node than the client"),
    "tunnel of udp": (tunnel(0, local="udp/8080"), "tunnels[0].local", "a tunnel carries tcp/N only"),
    "tunnel port not a port": (tunnel(0, public="tcp/http"), "tunnels[0].public", "'tcp/http' is not a port"),
    "public port taken by the edge": (
        tunnel(0, public="tcp/22"), "tunnels[0].public", "tcp/22 is already a service of edge"),
    "two tunnels on one public port": (
        lambda d: d["tunnels"].append(dict(d["tunnels"][0], name="again")), "tunnels[1].public",
        "tunnel 'laptop page' already publishes tcp/80 on edge"),
    "page missing": (tunnel(0, page="www/missing.html"), "tunnels[0].page", "no such file"),
    "host a URL": (tunnel(0, host="https://laptop.tunnel.test/"), "tunnels[0].host",
                   "'https://laptop.tunnel.test/' is not a host name: give the name visitors ask the edge for"),
    "host with a port": (tunnel(0, host="laptop.tunnel.test:80"), "tunnels[0].host", "no scheme, port or path"),
    "host not text": (tunnel(0, host=8080), "tunnels[0].host", "8080 is not a host name"),
    "host empty": (tunnel(0, host=""), "tunnels[0].host", "'' is not a host name"),
    "host with a space": (tunnel(0, host="laptop tunnel"), "tunnels[0].host", "'laptop tunnel' is not a host name"),
}


@pytest.mark.parametrize("change, field, problem", TUNNEL_CASES.values(), ids=TUNNEL_CASES.keys())
def test_bad_tunnel(lab, change, field, problem):
    edit_yaml(lab / "policy.yaml", change)
    err = load_error(lab)
    assert (err.file, err.field) == (f"{lab}/policy.yaml", field)
    assert problem in err.problem


@pytest.mark.parametrize("given, host", [("laptop.tunnel.test", "laptop.tunnel.test"),
                                         ("Laptop.Tunnel.Test", "laptop.tunnel.test"),
                                         ("localhost", "localhost"), (None, None)])
def test_a_tunnel_host_as_loaded(lab, given, host):
    """`host:` is optional (visitors then send the edge's address) and read case-blind."""
    edit_yaml(lab / "policy.yaml", tunnel(0, host=given))
    tunnel_, = load_lab(lab).policy.tunnels
    assert tunnel_.host == host
