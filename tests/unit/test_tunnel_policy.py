"""The shipped policies publish each tunnel's service through its edge only: no forward
of the router opens it, and no allow lets an outside node reach the client directly.
(suites/tunnel/test_only_through_tunnel.py then shows the real lab agrees.) No Docker."""

import shutil
from pathlib import Path

import pytest
import yaml

from labwarden.checks import tunnel
from labwarden.declared.lab import load_lab

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"
WITH_TUNNELS = [p.parent for p in sorted(TOPOLOGIES.glob("*/policy.yaml"))
                if yaml.safe_load(p.read_text()).get("tunnels")]


def ways_in(policy, t) -> list[str]:
    """Direct flows from outside that the policy itself lets reach the tunnel's client."""
    return [f.label(policy) for f in tunnel.direct_flows(policy, t) if policy.expect(f).reached == t.client]


def test_the_shipped_labs_with_tunnels_are_found():
    assert {p.name for p in WITH_TUNNELS} >= {"homelab", "airplane"}


@pytest.mark.parametrize("folder", WITH_TUNNELS, ids=[p.name for p in WITH_TUNNELS])
def test_a_tunnel_is_the_only_way_to_its_client(folder):
    policy = load_lab(folder).policy
    for t in policy.tunnels:
        assert tunnel.forwards_to(policy, t) == [], t.name
        assert ways_in(policy, t) == [], t.name


def test_a_forward_to_the_tunnels_port_is_a_way_in(tmp_path):
    """The same checks find a forward of the public address to the laptop's page."""
    folder = tmp_path / "homelab"
    shutil.copytree(TOPOLOGIES / "homelab", folder, ignore=shutil.ignore_patterns("mutants"))
    doc = yaml.safe_load((folder / "policy.yaml").read_text())
    doc["forwards"].append({"name": "laptop direct", "public": "tcp/8080", "to": "laptop", "port": 8080})
    (folder / "policy.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    policy = load_lab(folder).policy
    t = policy.tunnels[0]
    assert tunnel.forwards_to(policy, t) == ["forward 'laptop direct' (tcp/8080 -> laptop tcp/8080)"]
    assert "wan/visitor -> router@wan tcp/8080" in ways_in(policy, t)
