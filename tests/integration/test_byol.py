"""Bring your own lab, end to end on Docker: `labwarden init` from examples/openwrt-backup,
then the isolation suite on the drafted lab; `labwarden learn` on the home lab and on its
servers-to-personal mutant (the learned policy passes where the lab's does; the mutant's
extra flows are named). The drafted lab is written into a temporary folder, never into
topologies/."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MUTANT = ROOT / "topologies" / "homelab" / "mutants" / "servers-to-personal.nft"


def run(*args, timeout=1500):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_init_from_the_example_backup_then_the_isolation_suite_passes(tmp_path):
    made = run("-m", "labwarden.cli", "init", "byol-example", "--openwrt", "examples/openwrt-backup",
               "--into", str(tmp_path))
    assert made.returncode == 0, made.stdout + made.stderr
    assert "Allow-IPSec-ESP" in made.stdout and "Allow-ISAKMP" in made.stdout  # the review markers
    suite = run("-m", "pytest", "suites/isolation", "-q", "-p", "no:cacheprovider",
                "--lw-topology", str(tmp_path / "byol-example"), "--lw-report-dir", str(tmp_path / "reports"))
    assert suite.returncode == 0, suite.stdout[-4000:] + suite.stderr[-2000:]
    assert re.search(r"cells, 0 mismatches", suite.stdout), suite.stdout[-4000:]


def test_learn_passes_on_the_homelab_and_names_the_mutants_extra_flows(tmp_path):
    same = run("-m", "labwarden.cli", "learn", "--topology", "homelab", "--out", str(tmp_path / "same.yaml"))
    assert same.returncode == 0, same.stdout + same.stderr
    assert re.search(r"judged by the learned policy, (\d+) of \1 observations pass", same.stdout), same.stdout
    assert "is that intended" not in same.stdout
    broken = run("-m", "labwarden.cli", "learn", "--topology", "homelab", "--router-config", str(MUTANT),
                 "--out", str(tmp_path / "mutant.yaml"))
    assert broken.returncode == 1, broken.stdout + broken.stderr
    line = next(l for l in broken.stdout.splitlines() if "servers → personal" in l)
    assert "tcp/22" in line and "is that intended?" in line
    assert "learned servers->personal" in (tmp_path / "mutant.yaml").read_text()
