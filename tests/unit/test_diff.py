"""`labwarden diff` without a lab: where configs come from, and what counts as a change."""

import subprocess
from pathlib import Path

import pytest

from labwarden.cli.diff import changes, resolve_config
from labwarden.errors import LabwardenError
from labwarden.checks.matrix import Cell, MatrixRun
from labwarden.declared.lab import load_lab
from labwarden.probe import Observation

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "topologies/homelab/router/nftables.conf"


@pytest.fixture(scope="module")
def policy():
    return load_lab(ROOT / "topologies" / "homelab").policy


def committed(path: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), "show", f"HEAD:{path}"],
                          capture_output=True, text=True, check=True).stdout


def test_a_file_is_read_as_it_is(policy, tmp_path):
    mutant = ROOT / "topologies/homelab/mutants/forward-accept.nft"
    config = resolve_config(str(mutant), policy.topology, policy.router, tmp_path)
    assert config.text == mutant.read_text() and config.path == mutant


def test_a_git_revision_names_the_topologys_own_router_config(policy, tmp_path):
    config = resolve_config("HEAD", policy.topology, policy.router, tmp_path)
    assert config.shown == f"HEAD:{CONFIG}"
    assert config.text == committed(CONFIG) and config.path.read_text() == config.text
    assert len(config.sha256) == 64


def test_ref_colon_path_is_taken_literally(policy, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    spec = "HEAD:topologies/homelab/mutants/no-established.nft"
    config = resolve_config(spec, policy.topology, policy.router, tmp_path)
    assert config.text == committed("topologies/homelab/mutants/no-established.nft")


def test_an_unknown_revision_is_named(policy, tmp_path):
    with pytest.raises(LabwardenError, match="no-such-ref: no such file, and git has no no-such-ref:"):
        resolve_config("no-such-ref", policy.topology, policy.router, tmp_path)


def test_changes_are_flows_whose_observed_verdict_moved(policy):
    open_flow = policy.flow("web", "198.18.1.10", "tcp/22")       # must be filtered
    fixed_flow = policy.flow("laptop", "198.18.10.10", "tcp/80")  # must be open
    same_flow = policy.flow("visitor", "198.18.20.10", "tcp/22")  # filtered both times

    def run(verdicts):
        return MatrixRun(policy, {f: Cell(f, policy.expect(f), Observation(v, None, "made up"))
                                  for f, v in zip((open_flow, fixed_flow, same_flow), verdicts)})

    found = changes(run(["filtered", "filtered", "filtered"]), run(["open", "open", "filtered"]))
    assert [(c.label, c.before, c.after, c.ok_after) for c in found] == [
        ("servers/web -> personal/laptop tcp/22", "filtered", "open", False),
        ("personal/laptop -> servers/web tcp/80", "filtered", "open", True)]
    assert "VIOLATES the policy (expected filtered, default deny)" in found[0].line()
    assert found[1].line().endswith("now as the policy says")
