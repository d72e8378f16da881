"""`labwarden diff` on a real lab: one lab, two router configs, the changed flows named.

The mutant's header names the cell it breaks (see tests/integration/test_mutants.py);
the diff from the committed config to the mutant must name that flow as a change
that violates the policy, and exit 1.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MUTANT = ROOT / "topologies" / "homelab" / "mutants" / "servers-to-personal.nft"


def diff(*args, report_dir):
    return subprocess.run([sys.executable, "-m", "labwarden.cli", "diff", "--topology", "homelab",
                           "--report-dir", str(report_dir), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=1200)


def test_diff_names_the_flows_a_mutant_opens(tmp_path):
    broken, = re.findall(r"^# labwarden-expect-fail: (.+?): expected", MUTANT.read_text(), re.M)
    proc = diff("--before", "HEAD", "--after", str(MUTANT), report_dir=tmp_path)
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert "before: HEAD:topologies/homelab/router/nftables.conf" in out
    assert re.search(rf"^  {re.escape(broken)}: filtered -> open  VIOLATES the policy", out, re.M), out
    assert "after config VIOLATES the policy of homelab" in out
    doc = json.loads((tmp_path / "diff.json").read_text())
    assert [m["title"] for m in doc["matrices"]] == [
        "before: HEAD:topologies/homelab/router/nftables.conf", f"after: {MUTANT}"]
    changed = doc["sections"][0]
    assert changed["title"].startswith("flows whose verdict changed")
    assert any(r["cells"][0] == broken and r["bad"] for r in changed["data"]["rows"])
    assert "<h2>after: " in (tmp_path / "diff.html").read_text()


def test_same_config_twice_changes_nothing_but_still_fails_a_violating_config(tmp_path):
    proc = diff("--before", str(MUTANT), "--after", str(MUTANT), report_dir=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no flow changed verdict" in proc.stdout
    assert "violation(s) already present before, unchanged" in proc.stdout


def test_a_config_without_flush_replaces_the_whole_ruleset(tmp_path):
    """The after config flushes nothing and names its table differently: loaded on top of the
    before config, the old forward policy drop would hide its hole; it must replace it."""
    broken, = re.findall(r"^# labwarden-expect-fail: (.+?): expected", MUTANT.read_text(), re.M)
    beside = tmp_path / "no-flush.nft"
    beside.write_text(MUTANT.read_text().replace("flush ruleset\n", "")
                      .replace("table inet filter", "table inet firewall"))
    proc = diff("--before", "HEAD", "--after", str(beside), report_dir=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert re.search(rf"^  {re.escape(broken)}: filtered -> open  VIOLATES the policy", proc.stdout, re.M), \
        proc.stdout


def test_the_iptables_config_keeps_the_homelab_as_the_nftables_one_does(tmp_path):
    """Two router kinds, one intent: the diff from nftables.conf to rules.v4 (+ rules.v6) (each
    loaded by its own kind, detected from its content) changes no flow."""
    nftables = ROOT / "topologies" / "homelab" / "router" / "nftables.conf"
    iptables = ROOT / "topologies" / "homelab" / "router" / "rules.v4"
    proc = diff("--before", str(nftables), "--after", str(iptables), report_dir=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no flow changed verdict" in proc.stdout
    assert "after config keeps the policy of homelab" in proc.stdout
    head = json.loads((tmp_path / "diff.json").read_text())["header"]
    assert head["router_kind"] == "iptables" and head["router_trace"].startswith("not traced")
    assert head["versions"]["nft"].startswith("nftables v") and head["versions"]["iptables"].startswith("iptables v")
