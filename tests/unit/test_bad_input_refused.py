"""Inputs that used to crash, be merged silently or pass vacuously: each refused with one
ConfigError (file, field, problem), or a usage error, before anything starts.

Lab files: duplicate keys, alias bombs, non-UTF-8 and huge files, wrong types, NaN and
infinite quantities, budget paths leaving the lab. Options: --lw-probe-timeout,
--lw-fuzz-replay, --lw-router-config (and the CLI's --probe-timeout, --router-config). And an
nft syntax error names the config, not /dev/stdin.
"""

import argparse
import asyncio
import shutil
import subprocess
import sys
from ipaddress import IPv4Address
from pathlib import Path

import pytest
import yaml

from labwarden.cli.diff import Config, load_config, resolve_config
from labwarden.declared.fields import MAX_BYTES, probe_timeout
from labwarden.declared.inventory import load_inventory
from labwarden.declared.lab import load_lab
from labwarden.errors import ConfigError, LabError, LabwardenError, ProbeError
from labwarden.fuzz.flows.flow import FuzzFlow
from labwarden.realise.compose import ComposeLab
from labwarden.routers.nftables.trace import stdin_as

ROOT = Path(__file__).resolve().parents[2]
HOMELAB = ROOT / "topologies" / "homelab"


@pytest.fixture
def lab(tmp_path):
    folder = tmp_path / "homelab"
    shutil.copytree(HOMELAB, folder)
    return folder


def refused(folder) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_lab(folder)
    return caught.value


def edit(file: Path, change) -> None:
    doc = yaml.safe_load(file.read_text())
    change(doc)
    file.write_text(yaml.safe_dump(doc, sort_keys=False))


# -- the files themselves ---------------------------------------------------------

def test_a_second_allow_is_refused_naming_the_key_and_both_lines(lab):
    policy = lab / "policy.yaml"
    lines = policy.read_text().splitlines()
    first = lines.index("allow:") + 1
    policy.write_text(policy.read_text() + "allow:\n  - {from: personal, to: servers, ports: any}\n")
    err = refused(lab)
    assert err.file.endswith("policy.yaml") and err.field == f"line {len(lines) + 1}"
    assert f"duplicate key 'allow' (first at line {first})" in err.problem


def test_a_later_antispoof_false_does_not_quietly_win(lab):
    policy = lab / "policy.yaml"
    policy.write_text(policy.read_text() + "antispoof: false\n")
    assert "duplicate key 'antispoof'" in refused(lab).problem


def test_merge_keys_may_still_be_overridden():
    """airplane's compose.yaml overrides keys it merges (`<<: *node` then `sysctls:`)."""
    topology = load_lab(ROOT / "topologies" / "airplane").topology
    assert "gateway" in topology.nodes


@pytest.mark.parametrize("text, problem", [
    ("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
     + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 8)), "alias bomb"),
    ("services: &s {web: *s}\n", "refers to a node that contains it"),
    ("services: " + "[" * 2000 + "]" * 2000 + "\n", "nested too deeply"),
])
def test_alias_bombs_and_endless_documents_are_refused(lab, text, problem):
    (lab / "compose.yaml").write_text(text)
    err = refused(lab)
    assert err.field == "line 1" and problem in err.problem


def test_a_file_that_is_not_utf8_names_the_line(lab):
    compose = lab / "compose.yaml"
    lines = compose.read_bytes().split(b"\n")
    lines[6] += b" # caf\xe9"
    compose.write_bytes(b"\n".join(lines))
    err = refused(lab)
    assert err.field == "line 7" and "is not UTF-8 text (byte 0xe9" in err.problem


def test_a_huge_file_is_refused_unread(lab):
    (lab / "policy.yaml").write_text("# " + "x" * MAX_BYTES)
    err = refused(lab)
    assert err.file.endswith("policy.yaml") and "bigger than 1024 KiB" in err.problem


def test_a_firewall_file_that_is_not_text_is_refused_at_load(lab):
    (lab / "router" / "nftables.conf").write_bytes(b"\x7fELF\x02\x01\x01\x00\xff\xfe")
    err = refused(lab)
    assert err.file.endswith("router/nftables.conf") and "not UTF-8" in err.problem


@pytest.mark.parametrize("file, change, field, problem", [
    ("policy.yaml", lambda d: d.update(router=["router"]), "router", "is not a node"),
    ("policy.yaml", lambda d: d.update(blocked={"drop": 1}), "blocked", "is not one of"),
    ("policy.yaml", lambda d: d["allow"][0].update(to=[["servers"]]), "allow[0].to", "unknown zone"),
    ("policy.yaml", lambda d: d["zones"].update(servers=[{"servers": 1}]), "zones.servers[0]", "unknown segment"),
    ("policy.yaml", lambda d: d.update(masquerade=[[1]]), "masquerade[0]", "unknown zone"),
    ("policy.yaml", lambda d: d["forwards"][0].update(to={"web": 1}), "forwards[0].to", "is not a node"),
    ("policy.yaml", lambda d: d["tunnels"][0].update(edge=[1]), "tunnels[0].edge", "is not a node"),
    ("compose.yaml", lambda d: d["services"]["web"].update(networks=[["servers"]]),
     "services.web.networks[0]", "is not a segment's name"),
])
def test_wrong_types_are_config_errors(lab, file, change, field, problem):
    edit(lab / file, change)
    err = refused(lab)
    assert err.field == field and problem in err.problem


@pytest.mark.parametrize("change, field", [
    (lambda d: d.update(segments=["192.168.1.0/24"]), "segments"),
    (lambda d: d["nodes"]["web"].update(addresses=["192.168.10.10"]), "nodes.web.addresses"),
    (lambda d: d["nodes"]["web"].update(interfaces=True), "nodes.web.interfaces"),
    (lambda d: d.update(topology=["homelab"]), "topology"),
    (lambda d: d.update(ssh_config=["~/.ssh/config"]), "ssh_config"),
])
def test_wrong_types_in_an_inventory_are_config_errors(tmp_path, change, field):
    inventory = tmp_path / "live.yaml"
    shutil.copy(HOMELAB / "live.example.yaml", inventory)
    edit(inventory, change)
    with pytest.raises(ConfigError) as caught:
        load_inventory(inventory, load_lab(HOMELAB).topology)
    assert caught.value.field == field


def impair(profile):
    return lambda d: d["networks"]["wan"].setdefault("x-labwarden", {}).update(impair=profile)


@pytest.mark.parametrize("file, change, field, problem", [
    ("compose.yaml", impair({"delay": float("nan")}), "networks.wan.x-labwarden.impair.delay", "not a finite"),
    ("compose.yaml", impair({"delay": 5, "jitter": float("inf")}), "networks.wan.x-labwarden.impair.jitter",
     "not a finite"),
    ("compose.yaml", impair({"rate": "9" * 400 + " mbit"}), "networks.wan.x-labwarden.impair.rate", "not a finite"),
    ("compose.yaml", impair({"loss": float("nan")}), "networks.wan.x-labwarden.impair.loss", "not a finite"),
    ("compose.yaml", impair({"limit": 2 ** 40}), "networks.wan.x-labwarden.impair.limit", "1..1000000"),
    ("policy.yaml", lambda d: d.update(syn_limit={"rate": float("inf"), "burst": 5}), "syn_limit.rate",
     "not a positive number"),
    ("policy.yaml", lambda d: d.update(budgets={"laptop -> web icmp": "p95 < " + "9" * 400 + " ms"}),
     "budgets[laptop -> web icmp].limits[0]", "not a finite number"),
    ("policy.yaml", lambda d: d.update(budgets={"laptop -> web icmp": {"limits": "p95 < 5 ms",
                                                                       "interval": float("nan")}}),
     "budgets[laptop -> web icmp].interval", "not a finite"),
    ("policy.yaml", lambda d: d.update(budgets={"laptop -> web icmp": {"limits": "p95 < 5 ms", "timeout": 0}}),
     "budgets[laptop -> web icmp].timeout", "not a positive time"),
])
def test_nan_and_infinite_quantities_are_refused(lab, file, change, field, problem):
    edit(lab / file, change)
    err = refused(lab)
    assert err.field == field and problem in err.problem


def test_a_budget_path_may_not_leave_the_lab(lab):
    edit(lab / "policy.yaml", lambda d: d.update(budgets={"laptop -> 8.8.8.8 icmp": "p95 < 50 ms"}))
    err = refused(lab)
    assert err.field == "budgets[laptop -> 8.8.8.8 icmp]"
    assert "8.8.8.8 is outside the lab" in err.problem


def test_a_budget_path_to_an_address_of_the_lab_is_fine(lab):
    edit(lab / "policy.yaml", lambda d: d.update(budgets={"laptop -> 198.18.10.10 icmp": "p95 < 50 ms"}))
    (budget,) = load_lab(lab).policy.budgets
    assert budget.dst == IPv4Address("198.18.10.10")


# -- options ------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "-inf", "61", "1e9", "soon", ""])
def test_probe_timeout_must_be_seconds_in_0_to_60(text):
    with pytest.raises(argparse.ArgumentTypeError, match="is not a number of seconds in"):
        probe_timeout(text)


def test_probe_timeout_takes_seconds():
    assert probe_timeout("0.25") == 0.25 and probe_timeout("60") == 60.0


def run(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_pytest_refuses_a_probe_timeout_that_would_pass_vacuously(value):
    proc = run("-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q", "suites/isolation",
               f"--lw-probe-timeout={value}")
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    assert f"--lw-probe-timeout: '{value}' is not a number of seconds" in proc.stderr


@pytest.mark.parametrize("command", ["matrix", "diff --before HEAD"])
def test_the_cli_refuses_it_too(command):
    proc = run("-m", "labwarden.cli", *command.split(), "--probe-timeout=nan")
    assert proc.returncode == 2 and "'nan' is not a number of seconds" in proc.stderr, proc.stderr


@pytest.mark.parametrize("spec, problem", [
    ("web 198.18.1.10", "expected 'SRC DST PROTO[/PORT] [KIND=VALUE]'"),
    ("nobody 198.18.1.10 tcp/22", "'nobody' is not a node"),
    ("web 198.18.1.999 tcp/22", "is not an IPv4 or IPv6 address"),
    ("web 2001:db8:0:1::10 tcp/22 flags=SF", "crafted packets (KIND=VALUE, port 0) are IPv4 only"),
    ("web 2001:db8:0:1::10 tcp/0", "crafted packets (KIND=VALUE, port 0) are IPv4 only"),
    ("web 2001:db9::1 tcp/22", "2001:db9::1 is outside the lab"),
    ("web 8.8.8.8 tcp/22", "8.8.8.8 is outside the lab"),
    ("web 198.18.1.10 tcp/65536", "expected tcp/N, udp/N"),
    ("web 198.18.1.10 tcp", "expected tcp/N, udp/N"),
    ("web 198.18.1.10 icmp/8", "expected tcp/N, udp/N"),
    ("web 198.18.1.10 tcp/22 frag=bogus", "expected flags=F"),
    ("web 198.18.1.10 tcp/22 flags=XYZ", "expected flags=F"),
    ("web 198.18.1.10 udp/22 ttl=300", "expected flags=F"),
    ("web 198.18.1.10 icmp icmp=3", "expected flags=F"),
    ("web 198.18.1.10 udp/22 spoof=nowhere", "expected flags=F"),
])
def test_a_malformed_replay_spec_says_what_is_wrong(spec, problem):
    with pytest.raises(ValueError, match=None) as caught:
        FuzzFlow.parse(spec, load_lab(HOMELAB).policy)
    assert problem in str(caught.value)


def test_every_drawn_kind_of_flow_reads_back():
    policy = load_lab(HOMELAB).policy
    for spec in ["web 198.18.1.10 tcp/31337 flags=SF", "web 198.18.1.10 tcp/31337 flags=",
                 "web 198.18.1.10 udp/53 frag=split", "web 198.18.1.10 udp/53 opt=lsrr",
                 "web 198.18.1.10 udp/53 ttl=1", "web 198.18.1.10 icmp icmp=3/1",
                 "web 198.18.1.10 udp/53 spoof=198.18.20.5", "web 198.18.1.10 tcp/0", "web 192.0.2.1 icmp"]:
        assert FuzzFlow.parse(spec, policy).spec() == spec


def test_a_malformed_replay_is_a_usage_error_before_any_lab():
    proc = run("-m", "pytest", "-p", "no:cacheprovider", "-q", "--collect-only", "suites/fuzz/test_replay.py",
               "--lw-fuzz-replay", "web 8.8.8.8 tcp/22")  # collect only: without the check, no lab starts either
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    assert "labwarden: --lw-fuzz-replay: 8.8.8.8 is outside the lab" in proc.stderr


def test_a_broken_lab_file_is_a_usage_error_in_pytest_not_a_traceback(lab):
    (lab / "compose.yaml").write_bytes(b"services:\n  web: \xff\n")
    proc = run("-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q", "suites/isolation",
               "--lw-topology", str(lab))
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    assert "compose.yaml: line 2: is not UTF-8 text" in proc.stderr and "Traceback" not in proc.stderr


def test_a_router_config_that_is_not_text_is_a_usage_error(tmp_path):
    config = tmp_path / "rules.nft"
    config.write_bytes(b"table inet x {}\n\xc3\x28\n")
    proc = run("-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q", "suites/isolation",
               "--lw-router-config", str(config))
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    assert f"{config}: line 2: is not UTF-8 text" in proc.stderr


def test_the_cli_checks_a_router_config_before_anything_starts(tmp_path):
    config = tmp_path / "rules.nft"
    config.write_bytes(b"\xff" * 10)
    proc = run("-m", "labwarden.cli", "matrix", "--router-config", str(config))
    assert proc.returncode == 2 and f"labwarden: {config}: line 1: is not UTF-8 text" in proc.stderr, proc.stderr


# -- nft's own errors ----------------------------------------------------------------

NFT_SAYS = ("node router: `nft -f -` failed (exit 1): /dev/stdin:5:39-45: Error: syntax error, "
            "unexpected newline\n/dev/stdin:1:30-33: Error: No such file or directory")


def test_an_nft_error_names_the_config_and_its_own_columns():
    said = stdin_as(NFT_SAYS, "router/nftables.conf")
    assert "router/nftables.conf:5:39-45: Error: syntax error" in said
    assert "router/nftables.conf:1:15-18: Error" in said  # line 1: after the agent's 'flush ruleset; '
    assert "/dev/stdin" not in said


def test_plumbing_names_the_router_config_not_dev_stdin(monkeypatch):
    topology, policy = load_lab(HOMELAB)
    lab = ComposeLab.__new__(ComposeLab)
    lab.topology, lab.policy, lab.router_config, lab.project = topology, policy, None, "labwarden-test"
    monkeypatch.setattr(lab, "_setup_for", lambda name: {}, raising=False)

    async def fails(rounds):
        raise ProbeError(NFT_SAYS)
    monkeypatch.setattr(lab, "run_rounds", fails, raising=False)
    with pytest.raises(LabError) as caught:
        asyncio.run(lab._plumb())
    assert "router/nftables.conf:5:39-45: Error: syntax error" in str(caught.value)
    assert "/dev/stdin" not in str(caught.value)


def test_diff_names_the_after_config_not_dev_stdin():
    class Lab:
        policy = load_lab(HOMELAB).policy

        async def run(self, jobs):
            raise ProbeError(NFT_SAYS)
    with pytest.raises(Exception) as caught:
        asyncio.run(load_config(Lab(), Config("HEAD~1:topologies/homelab/router/nftables.conf", "", Path("x"))))
    assert "HEAD~1:topologies/homelab/router/nftables.conf:5:39-45: Error" in str(caught.value)


def test_a_git_revision_that_is_not_text_is_refused(tmp_path, monkeypatch):
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "rules.nft").write_bytes(b"\xff\xfe\x00binary")
    subprocess.run([*git, "add", "rules.nft"], check=True)
    subprocess.run([*git, "commit", "-qm", "binary"], check=True)
    monkeypatch.chdir(tmp_path)
    topology, policy = load_lab(HOMELAB)
    with pytest.raises(LabwardenError, match="not UTF-8 text"):
        resolve_config("HEAD:rules.nft", topology, policy.router, tmp_path)


def test_a_broken_default_lab_is_one_usage_error_not_an_error_per_suite_file(tmp_path):
    """The default lab (no --lw-topology) is checked at configure time like a named one."""
    shutil.copytree(HOMELAB, tmp_path / "topologies" / "homelab")
    policy = tmp_path / "topologies" / "homelab" / "policy.yaml"
    policy.write_text(policy.read_text() + "antispoof: false\n")
    proc = run("-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q", str(ROOT / "suites" / "isolation"),
               cwd=tmp_path)
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    assert proc.stderr.count("duplicate key 'antispoof'") == 1, proc.stderr


def test_nfts_own_words_are_renamed():
    """As the node image's nft says it for `flush ruleset; tabel inet x {}` on stdin."""
    said = ("/dev/stdin:1:22-25: Error: syntax error, unexpected inet, expecting string\n"
            "flush ruleset; tabel inet x {}\n                     ^^^^")
    assert stdin_as(said, "rules.nft").startswith("rules.nft:1:7-10: Error: syntax error, unexpected inet")
