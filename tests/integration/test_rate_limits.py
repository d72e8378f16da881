"""A rate limit is not a firewall verdict: a router config that rate-limits pings and new
TCP connections to the router itself (5/second, as the nftables wiki's home router and
OpenWrt's syn_flood do) keeps the home lab's policy, so the isolation suite passes on it;
the same config with one opening fails, naming the flow. The figures (how many probes had
to be re-sent alone, how many then answered) are printed and kept in the report."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = Path(__file__).resolve().parent / "ratelimit"


def isolation(config: Path, report_dir: Path) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run([sys.executable, "-m", "pytest", "suites/isolation", "-q", "-p", "no:cacheprovider",
                           "--tb=line", "--lw-router-config", str(config), "--lw-report-dir", str(report_dir)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    doc = json.loads((report_dir / "labwarden.json").read_text())
    matrix, = doc["matrices"]
    print(f"{config.name}: exit {proc.returncode}; {len(matrix['reprobed'])} mismatches re-sent alone, "
          f"{len(matrix['rate_limited'])} answered then (rate-limited)")
    return proc, matrix


def test_a_rate_limited_router_passes(tmp_path):
    proc, matrix = isolation(CONFIGS / "homelab-limited.nft", tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    # the limiters did drop part of the burst: the paced probes got the answers
    assert matrix["rate_limited"], "nothing was rate-limited: the config does not test what it should"
    assert any(label.endswith(" icmp") for label in matrix["rate_limited"])
    assert any(" tcp/" in label for label in matrix["rate_limited"])
    assert set(matrix["rate_limited"]) == set(matrix["reprobed"])


def test_the_same_router_with_an_opening_fails_naming_it(tmp_path):
    proc, matrix = isolation(CONFIGS / "homelab-limited-open.nft", tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "servers/web -> personal/laptop tcp/22: expected filtered (default deny), observed open" in out
    assert "servers/web -> personal/laptop tcp/22" in matrix["reprobed"]
    assert "servers/web -> personal/laptop tcp/22" not in matrix["rate_limited"]
    # the limits alone fail nothing: every failed test is about servers -> personal tcp/22 (the
    # matrix's cells, the local-only personal devices, the stateful one-way pair)
    failed = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    about = ("-> personal/", "test_local_only.py::test_services_reach_only_whom_the_policy_names[personal/",
             "test_stateful.py::test_replies_pass_but_new_connections_do_not")
    assert failed and all(line.startswith("FAILED") and any(a in line for a in about) for line in failed), failed
    assert all(" tcp/22" in line for line in failed if "test_matrix.py" in line), failed
