"""A topology folder is not arbitrary root code (issue 13, item 2).

What a compose file asks of Docker is refused when it reaches the host, naming file,
service and key, unless --allow-unsafe-compose (pytest: --lw-allow-unsafe-compose); files a lab names stay in its folder;
interface names are checked and never reach a shell.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from labwarden.cli import main as cli_main
from labwarden.declared.compose_safety import SAFE_CAPS, check_compose
from labwarden.declared.fields import valid_ifname
from labwarden.declared.inventory import load_inventory
from labwarden.declared.lab import load_lab
from labwarden.declared.links import Link, Profile
from labwarden.errors import ConfigError
from labwarden.realise import impair

ROOT = Path(__file__).resolve().parents[2]
HOMELAB = ROOT / "topologies" / "homelab"
OPTION = "--allow-unsafe-compose"
PYTEST_OPTION = "--lw-allow-unsafe-compose"


@pytest.fixture
def lab(tmp_path):
    folder = tmp_path / "homelab"
    shutil.copytree(HOMELAB, folder, symlinks=True)
    return folder


def edit(folder, change):
    file = folder / "compose.yaml"
    doc = yaml.safe_load(file.read_text())
    change(doc)
    file.write_text(yaml.safe_dump(doc, sort_keys=False))


def service(name, **settings):
    return lambda d: d["services"][name].update(settings)


def refusal(folder) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_lab(folder)
    err = caught.value
    assert err.file.endswith("compose.yaml") and OPTION in err.problem
    return err


def test_every_compose_file_of_the_repository_loads():
    """The repo's own labs, mutants and test labs ask nothing unsafe (they must keep loading)."""
    files = sorted(p for p in ROOT.glob("**/compose.yaml") if ".git" not in p.parts)
    assert len(files) >= 10
    for file in files:
        topology, _ = load_lab(file.parent)
        assert topology.nodes, file


UNSAFE = {
    "privileged": (service("web", privileged=True), "services.web.privileged", "every capability"),
    "host network": (service("web", network_mode="host"), "services.web.network_mode", "host's namespace"),
    "host pid": (service("web", pid="host"), "services.web.pid", "host's namespace"),
    "host ipc": (service("web", ipc="host"), "services.web.ipc", "host's namespace"),
    "host userns": (service("web", userns_mode="host"), "services.web.userns_mode", "host's namespace"),
    "host uts": (service("web", uts="host"), "services.web.uts", "host's namespace"),
    "default bridge": (service("web", network_mode="bridge"), "services.web.network_mode", "not a lab network"),
    "a foreign container's network": (service("web", network_mode="container:some-host-service"),
                                      "services.web.network_mode", "not one of this lab's containers"),
    "a host container named like a service": (service("web", network_mode="container:router"),
                                               "services.web.network_mode", "not one of this lab's containers"),
    "a foreign container's pids": (service("web", pid="container:labwarden-prober"),
                                   "services.web.pid", "not one of this lab's containers"),
    "an unknown service's network": (service("web", network_mode="service:nowhere"),
                                     "services.web.network_mode", "not one of this lab's services"),
    "root bind": (service("web", volumes=["/:/host"]), "services.web.volumes[0]", "'/' is a host path outside"),
    "docker socket": (service("web", volumes=["/var/run/docker.sock:/var/run/docker.sock"]),
                      "services.web.volumes[0]", "outside the lab folder"),
    "long-syntax bind": (service("web", volumes=[{"type": "bind", "source": "/etc", "target": "/e"}]),
                         "services.web.volumes[0].source", "outside the lab folder"),
    "bind climbing out": (service("web", volumes=["../../..:/up"]), "services.web.volumes[0]", "outside"),
    "home bind": (service("web", volumes=["~/.ssh:/k"]), "services.web.volumes[0]", "outside"),
    "cap ALL": (service("web", cap_add=["ALL"]), "services.web.cap_add[0]", "more than a lab node needs"),
    "cap SYS_ADMIN": (service("web", cap_add=["NET_ADMIN", "CAP_SYS_ADMIN"]), "services.web.cap_add[1]",
                      "CAP_SYS_ADMIN is more"),
    "cap sys_module": (service("web", cap_add=["sys_module"]), "services.web.cap_add[0]", "more"),
    "host disk": (service("web", devices=["/dev/sda:/dev/sda"]), "services.web.devices[0]", "host device"),
    "device rules": (service("web", device_cgroup_rules=["b 8:* rmw"]), "services.web.device_cgroup_rules",
                     "host devices"),
    "gpus": (service("web", gpus="all"), "services.web.gpus", "host devices"),
    "seccomp unconfined": (service("web", security_opt=["seccomp=unconfined"]), "services.web.security_opt[0]",
                           "loosens"),
    "apparmor unconfined": (service("web", security_opt=["apparmor:unconfined"]),
                            "services.web.security_opt[0]", "loosens"),
    "selinux off": (service("web", security_opt=["label=disable"]), "services.web.security_opt[0]", "loosens"),
    "cgroup parent": (service("web", cgroup_parent="/system.slice"), "services.web.cgroup_parent", "host cgroup"),
    "runtime": (service("web", runtime="evil"), "services.web.runtime", "another runtime"),
    "the engine's socket": (service("web", use_api_socket=True), "services.web.use_api_socket", "root on the host"),
    "a provider": (service("web", provider={"type": "x"}), "services.web.provider", "on the host"),
    "a privileged hook": (service("web", post_start=[{"command": "id", "privileged": True}]),
                          "services.web.post_start[0].privileged", "every capability"),
    "env file outside": (service("web", env_file="/etc/environment"), "services.web.env_file", "outside"),
    "extends another file": (service("web", extends={"file": "../x.yaml", "service": "a"}),
                             "services.web.extends.file", "another compose file"),
    "volumes of a foreign container": (service("web", volumes_from=["container:db"]),
                                       "services.web.volumes_from[0]", "outside the lab"),
    "interpolated bind": (service("web", volumes=["${HOME}:/h"]), "services.web.volumes[0]",
                          "from the environment"),
    "interpolated mode": (service("web", pid="${MODE:-host}"), "services.web.pid", "from the environment"),
    "include": (lambda d: d.update(include=["/etc/other.yaml"]), "include", "another compose file"),
    "macvlan": (lambda d: d["networks"]["servers"].update(driver="macvlan", driver_opts={"parent": "eth0"}),
                "networks.servers.driver", "host's network"),
    "ipvlan": (lambda d: d["networks"]["servers"].update(driver="ipvlan"), "networks.servers.driver", "host's"),
    "external network": (lambda d: d["networks"]["servers"].update(external=True), "networks.servers.external",
                         "outside the lab"),
    "a host bridge": (lambda d: d["networks"]["servers"].update(driver_opts={
        **d["networks"]["servers"]["driver_opts"], "com.docker.network.bridge.name": "docker0"}),
        "networks.servers.driver_opts.com.docker.network.bridge.name", "existing host bridge"),
    "volume backed by a host folder": (lambda d: d.setdefault("volumes", {}).update(
        {"root": {"driver_opts": {"type": "none", "o": "bind", "device": "/"}}}),
        "volumes.root.driver_opts.device", "outside"),
    "secret from a host file": (lambda d: d.update(secrets={"shadow": {"file": "/etc/shadow"}}),
                                "secrets.shadow.file", "outside"),
}


@pytest.mark.parametrize("change, field, words", UNSAFE.values(), ids=UNSAFE.keys())
def test_unsafe_compose_is_refused_naming_file_service_and_key(lab, change, field, words):
    edit(lab, change)
    err = refusal(lab)
    assert err.field == field
    assert words in err.problem


def test_the_option_lets_the_user_run_it_anyway(lab):
    edit(lab, service("web", privileged=True, network_mode=None))
    refusal(lab)
    assert "web" in load_lab(lab, allow_unsafe_compose=True).topology.nodes


SAFE = {
    "a bind inside the folder": service("web", volumes=["./www:/srv/www:ro", {"type": "bind", "source": "www",
                                                                              "target": "/w"}]),
    "named and anonymous volumes": service("web", volumes=["data:/data", "/cache", {"type": "tmpfs",
                                                                                     "target": "/t"}]),
    "network capabilities": service("web", cap_add=["NET_ADMIN", "NET_RAW", "cap_net_bind_service"]),
    "a TUN device": service("web", devices=["/dev/net/tun"]),
    "no new privileges": service("web", security_opt=["no-new-privileges:true"]),
    "a sidecar in a lab service": lambda d: d["services"].update(side={"image": "x",
                                                                       "network_mode": "service:web"}),
    "a sidecar in a lab container": lambda d: d["services"].update(
        side={"image": "x", "network_mode": "container:lab-web"}) or d["services"]["web"].update(
        container_name="lab-web"),
    "privileged: false": service("web", privileged=False),
    "an escaped dollar": service("web", volumes=["data$$x:/d"]),
}


@pytest.mark.parametrize("change", SAFE.values(), ids=SAFE.keys())
def test_what_a_lab_needs_is_accepted(lab, change):
    edit(lab, change)
    assert load_lab(lab).topology.nodes


def test_default_capabilities_exclude_the_dangerous_ones():
    assert not SAFE_CAPS & {"ALL", "SYS_ADMIN", "SYS_MODULE", "SYS_PTRACE", "SYS_RAWIO", "DAC_READ_SEARCH", "BPF"}


def test_a_symlink_out_of_the_folder_is_followed_and_refused(lab):
    (lab / "escape").symlink_to("/etc")
    edit(lab, service("web", volumes=["./escape:/e:ro"]))
    err = refusal(lab)
    assert err.field == "services.web.volumes[0]" and "it leads to /etc" in err.problem


def test_a_compose_file_linked_from_outside_is_refused(lab, tmp_path):
    outside = tmp_path / "elsewhere.yaml"
    shutil.move(lab / "compose.yaml", outside)
    (lab / "compose.yaml").symlink_to(outside)
    with pytest.raises(ConfigError) as caught:
        load_lab(lab, allow_unsafe_compose=True)
    assert caught.value.field == "compose.yaml" and "outside the lab folder" in caught.value.problem


# -- files named by the lab: firewall:, page: ------------------------------------

def test_a_firewall_outside_the_folder_is_refused(lab):
    edit(lab, lambda d: d["services"]["router"].setdefault("x-labwarden", {}).update(firewall="/etc/passwd"))
    with pytest.raises(ConfigError) as caught:
        load_lab(lab, allow_unsafe_compose=True)  # not the compose file's to allow
    assert caught.value.field == "services.router.x-labwarden.firewall"
    assert "'/etc/passwd' is outside the lab folder" in caught.value.problem


@pytest.mark.parametrize("page", ["../../../../../../etc/passwd", "/etc/hostname", "link/passwd"])
def test_a_tunnel_page_outside_the_folder_is_refused(lab, page):
    (lab / "link").symlink_to("/etc")
    policy = lab / "policy.yaml"
    policy.write_text(policy.read_text().replace("page: www/index.html", f"page: {page}"))
    with pytest.raises(ConfigError) as caught:
        load_lab(lab)
    err = caught.value
    assert err.file.endswith("policy.yaml") and err.field == "tunnels[0].page"
    assert "is outside the lab folder" in err.problem


def test_a_mutant_may_use_its_labs_files_and_no_others(tmp_path):
    """topologies/LAB/mutants/NAME/ links www/, router/ and policy.yaml to its lab's."""
    root = tmp_path / "topologies"
    shutil.copytree(ROOT / "topologies" / "homelab", root / "homelab", symlinks=True)
    mutant = root / "homelab" / "mutants" / "tunnel-on-phone"
    assert load_lab(mutant).policy.tunnels[0].page == root / "homelab" / "www" / "index.html"
    (root / "secret.txt").write_text("not the lab's")
    policy = mutant / "policy.yaml"
    policy.unlink()
    policy.write_text((root / "homelab" / "policy.yaml").read_text()
                      .replace("page: www/index.html", "page: ../../../secret.txt"))
    with pytest.raises(ConfigError, match="outside the lab folder"):
        load_lab(mutant)


def test_a_policy_linked_from_outside_the_folder_is_refused(lab, tmp_path):
    outside = tmp_path / "policy.yaml"
    shutil.move(lab / "policy.yaml", outside)
    (lab / "policy.yaml").symlink_to(outside)
    with pytest.raises(ConfigError) as caught:
        load_lab(lab)
    assert caught.value.field == "policy.yaml" and "outside the lab folder" in caught.value.problem


# -- interface names ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["s;id>&2", "$(id)", "a b", "eth/0", "a" * 16, "-x", "a\"b", "e#", "e*", "", ".."])
def test_hostile_interface_names_are_refused(name):
    assert not valid_ifname(name)


@pytest.mark.parametrize("name", ["eth0", "br-lan", "eth0.10", "wg0", "lan_1", "a" * 15, "servers"])
def test_real_interface_names_are_valid(name):
    assert valid_ifname(name)


def test_a_hostile_interface_name_in_compose_is_a_clear_error(lab):
    edit(lab, lambda d: d["services"]["web"].setdefault("x-labwarden", {}).update(
        interfaces={"servers": "s;id>&2"}))
    with pytest.raises(ConfigError) as caught:
        load_lab(lab)
    assert caught.value.field == "services.web.x-labwarden.interfaces.servers"
    assert "'s;id>&2' is not a valid Linux interface name" in caught.value.problem


def test_a_hostile_interface_name_in_an_inventory_is_a_clear_error(tmp_path):
    topology, _ = load_lab(HOMELAB)
    inventory = tmp_path / "live.yaml"
    inventory.write_text(yaml.safe_dump({
        "ranges": ["198.18.0.0/15", "203.0.113.0/24"],
        "nodes": {n: ({"host": "local://", "interfaces": {"servers": "$(id)"}} if n == "web" else "local://")
                  for n in topology.nodes}}))
    with pytest.raises(ConfigError) as caught:
        load_inventory(inventory, topology)
    assert caught.value.field == "nodes.web.interfaces.servers" and "not a valid Linux interface" in str(caught.value)


class FakeProber:
    """Records what the netem path asks to run (in the prober, in a node); answers like tc would."""

    def __init__(self, topology):
        self.topology, self.calls = topology, []

    def prober_exec(self, *argv, **_):
        self.calls.append(list(argv))
        return subprocess.CompletedProcess(argv, 0, "", "")

    def netns_exec(self, node, *argv, **_):
        self.calls.append([node, *argv])
        out = ""
        if "qdisc show" in " ".join(argv):  # the netem qdiscs set in this namespace so far
            words = [" ".join(c).split() for c in self.calls if c[0] == node and "netem" in " ".join(c)]
            devs = sorted({w[w.index("dev") + 1] for w in words if "show" not in w})
            out = "[" + ",".join(f'{{"kind": "netem", "dev": "{d}"}}' for d in devs) + "]"
        return subprocess.CompletedProcess(argv, 0, out, "")


def test_the_netem_path_runs_argv_lists_never_a_shell(tmp_path):
    """A name that slipped past the loader would reach tc as one argument, not a shell:
    with the old `sh -c "tc ... dev s;id>&2 ..."`, `id` ran in the prober."""
    topology, _ = load_lab(ROOT / "tests" / "integration" / "latency_lab")
    hostile = "s;id>&2"
    node = topology.links[0].node or next(n for n, x in topology.nodes.items()
                                           if topology.links[0].segment in x.addresses)
    nodes = dict(topology.nodes)
    segment = topology.links[0].segment
    nodes[node] = nodes[node].__class__(**{**vars(nodes[node]),
                                           "interfaces": {**nodes[node].interfaces, segment: hostile}})
    topology = topology.__class__(**{**vars(topology), "nodes": nodes})
    prober = FakeProber(topology)
    impairment = impair.Impairment([Link("l", segment, node, Profile("p", delay_ms=5))])
    impair._apply_netem(prober, impairment)
    assert prober.calls, "nothing was run"
    for argv in prober.calls:
        assert "sh" not in argv and "-c" not in argv, argv
        assert not any(hostile in arg and arg != hostile for arg in argv), argv
    assert any(hostile in argv for argv in prober.calls)
    # and the availability probe is argv too
    impair.netem_available(prober)
    assert all(argv[0] != "sh" for argv in prober.calls)


def test_the_cli_has_the_option_and_refuses_without_it(lab, capsys):
    edit(lab, service("web", privileged=True))
    for command in (["up"], ["matrix"], ["diff", "--before", "HEAD"]):
        assert cli_main([*command, "--topology", str(lab)]) == 2
        assert "services.web.privileged" in capsys.readouterr().err
    assert OPTION in subprocess.run([sys.executable, "-m", "labwarden.cli", "up", "--help"],
                                    capture_output=True, text=True, env=dict(os.environ)).stdout


def test_pytest_refuses_it_before_anything_starts_and_takes_the_option(lab):
    edit(lab, service("web", privileged=True))
    run = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q",
           str(ROOT / "suites" / "isolation" / "test_matrix.py"), "--lw-topology", str(lab)]
    refused = subprocess.run(run, capture_output=True, text=True, cwd=ROOT)
    assert refused.returncode == 4, refused.stdout + refused.stderr
    assert "services.web.privileged" in refused.stderr and PYTEST_OPTION in refused.stderr
    allowed = subprocess.run([*run, PYTEST_OPTION], capture_output=True, text=True, cwd=ROOT)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr


VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
                      | st.sampled_from(["host", "/", "../..", "ALL", "service:web", "container:x", "$X", "\0"]),
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                   max_size=3),
                      max_leaves=8)
KEYS = st.sampled_from(["privileged", "network_mode", "pid", "ipc", "cap_add", "devices", "security_opt",
                        "volumes", "volumes_from", "env_file", "extends", "deploy", "post_start",
                        "container_name", "runtime", "cgroup_parent"])
SECTIONS = st.sampled_from(["networks", "volumes", "configs", "secrets", "services", "include"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(service_keys=st.dictionaries(KEYS, VALUES, max_size=4), sections=st.dictionaries(SECTIONS, VALUES, max_size=2))
def test_only_config_errors_come_out_whatever_the_file_says(tmp_path, service_keys, sections):
    doc = {"services": {"web": service_keys, "odd": service_keys.get("deploy")}, **sections}
    try:
        check_compose("compose.yaml", tmp_path / "compose.yaml", doc)
    except ConfigError:
        pass
