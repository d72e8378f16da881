"""Node sysctls go through the generated compose override, never through /proc/sys."""

import socket
import struct
import sys
from pathlib import Path

import yaml

from labwarden.declared.topology import load_topology
from labwarden.realise import sysctls
from labwarden.realise.compose import prober_override

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "labwarden" / "agent"))
import devconf  # noqa: E402  (the agent's module: stdlib only, imported as the zipapp does)

CC = {"net.ipv4.tcp_congestion_control": "cubic"}


def test_every_node_gets_the_congestion_control_unless_it_sets_its_own(tmp_path):
    topology = load_topology("homelab")
    wanted = sysctls.wanted(topology, base=CC)
    assert set(wanted) == set(topology.nodes)
    assert all(keys == CC for keys in wanted.values())  # homelab has no impaired link
    assert topology.nodes["router"].sysctls["net.ipv4.ip_forward"] == "1"  # the file's own, as read


def test_a_service_s_own_value_wins(tmp_path):
    topology = load_topology("homelab")
    node = topology.nodes["laptop"]
    own = type(node)(**{**node.__dict__, "sysctls": {"net.ipv4.tcp_congestion_control": "reno"}})
    topology.nodes["laptop"] = own
    assert "laptop" not in sysctls.wanted(topology, base=CC)


def test_delay_line_candidates_get_what_the_relay_needs():
    topology = load_topology("airplane")
    wanted = sysctls.wanted(topology, base=CC)
    candidates = sysctls.delayline_candidates(topology)
    assert candidates and candidates != set(topology.nodes)
    for name in topology.nodes:
        extra = {k: v for k, v in sysctls.DELAYLINE.items() if k not in topology.nodes[name].sysctls}
        assert wanted.get(name, {}) == ({**CC, **extra} if name in candidates else CC)
    assert all(sysctls.DELAYLINE.keys() - wanted.get(n, {}).keys() <= topology.nodes[n].sysctls.keys()
               for n in candidates)
    assert sysctls.wanted(topology, "none", base=CC) == {n: CC for n in topology.nodes}


def test_the_override_is_compose_yaml_that_merges_per_service():
    text = prober_override(Path("/tmp/agent.pyz"), {"web": CC, "odd-name.1": {"net.ipv4.ip_early_demux": 0}},
                           {"security_opt": ["seccomp=/x.json"]})
    doc = yaml.safe_load(text)
    assert doc["services"]["web"] == {"sysctls": CC}
    assert doc["services"]["odd-name.1"] == {"sysctls": {"net.ipv4.ip_early_demux": "0"}}
    assert doc["services"]["labwarden-prober"]["security_opt"] == ["seccomp=/x.json"]
    assert "sysctls" not in doc["services"]["labwarden-prober"]
    assert yaml.safe_load(prober_override(Path("/tmp/agent.pyz")))["services"].keys() == {"labwarden-prober"}


def test_congestion_control_is_one_the_namespace_may_pick(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.write_text("reno bbr\n")
    assert sysctls.congestion_control.__wrapped__(allowed) == {"net.ipv4.tcp_congestion_control": "reno"}
    allowed.write_text("bbr\n")
    assert sysctls.congestion_control.__wrapped__(allowed) == {}
    assert sysctls.congestion_control.__wrapped__(tmp_path / "missing") == {}


def test_service_sysctls_are_read_as_compose_takes_them(tmp_path):
    import shutil
    from labwarden.errors import ConfigError
    import pytest
    lab = tmp_path / "lab"
    shutil.copytree(Path(__file__).resolve().parents[2] / "topologies" / "homelab", lab)
    text = (lab / "compose.yaml").read_text()
    (lab / "compose.yaml").write_text(text.replace("  laptop:\n", "  laptop:\n    sysctls: [net.ipv4.ip_early_demux=0]\n", 1))
    assert load_topology(lab).nodes["laptop"].sysctls == {"net.ipv4.ip_early_demux": "0"}
    (lab / "compose.yaml").write_text(text.replace("  laptop:\n", "  laptop:\n    sysctls: [early_demux]\n", 1))
    with pytest.raises(ConfigError, match=r"services\.laptop\.sysctls\[0\].*KEY=VALUE"):
        load_topology(lab)


def test_the_netlink_request_sets_ipv4_devconf():
    msg = devconf.message(7, {"forwarding": 1, "rp_filter": 0})
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags) == (len(msg), devconf.RTM_SETLINK, devconf.NLM_F_REQUEST | devconf.NLM_F_ACK)
    family, _, index = struct.unpack_from("=BxHi", msg, 16)
    assert (family, index) == (socket.AF_UNSPEC, 7)
    # IFLA_AF_SPEC { AF_INET { IFLA_INET_CONF { 1: 1, 8: 0 } } }
    assert msg[32:].startswith(struct.pack("=HH", len(msg) - 32, devconf.IFLA_AF_SPEC | devconf.NLA_F_NESTED))
    assert msg.endswith(struct.pack("=HHI", 8, 1, 1) + struct.pack("=HHI", 8, 8, 0))


def test_nothing_in_the_agent_mounts_or_writes_under_proc():
    agent = Path(__file__).resolve().parents[2] / "labwarden" / "agent"
    for path in agent.glob("*.py"):
        text = path.read_text()
        for word in ('"unshare"', '"mount"', "remount,rw", '"sysctl"'):
            assert word not in text, f"{path.name} says {word}"
