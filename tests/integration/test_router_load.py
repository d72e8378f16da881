"""Loading a router config replaces the router's whole ruleset, on a real lab.

openwrt-homelab's config is firewall4's output, which flushes only its own table
(`flush table inet fw4`): loaded on top, it would leave any other table in place.
"""

import asyncio
import subprocess
from pathlib import Path

import pytest

from labwarden.errors import ProbeError
from labwarden.realise.compose import PROBER, ComposeLab
from labwarden.realise.lab import run_sync
from labwarden.declared.lab import load_lab
from labwarden.probe import NodeJob

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parents[2]
FOREIGN = "table inet lwforeign {\n  chain forward {\n    type filter hook forward priority -10; policy accept;\n  }\n}\n"


@pytest.fixture(scope="module")
def lab():
    with ComposeLab(*load_lab(ROOT / "topologies" / "openwrt-homelab"), log=lambda *a: None) as instance:
        yield instance


def tables(lab) -> list[str]:
    """`nft list tables` in the router's namespace, from the prober (the router lacks NET_ADMIN)."""
    proc = lab.netns_exec(lab.policy.router, "nft", "list", "tables")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("\n")[:-1]


def test_the_restore_after_a_loan_leaves_no_foreign_table(lab):
    assert tables(lab) == ["table inet fw4"]
    with lab.router_on_loan():
        run_sync(lab.run({lab.policy.router: NodeJob(setup={"nft": FOREIGN})}))
        assert tables(lab) == ["table inet lwforeign"]  # the loan's own load replaced fw4 too
        # a table added on top (as a trace's is) must be gone after the restore as well
        run_sync(lab.run({lab.policy.router: NodeJob(setup={"nft_add": FOREIGN.replace("lwforeign", "lwextra")})}))
    assert tables(lab) == ["table inet fw4"]


def test_a_table_the_file_does_not_declare_fails_the_load(lab):
    """Read back: an include that makes a table of its own is caught by name."""
    prober = lab.containers[PROBER].name
    subprocess.run(["docker", "exec", prober, "sh", "-c", f"printf '{FOREIGN}' > /tmp/lw-included.nft"],
                   check=True, timeout=60)
    config = lab.router_firewall().read_text() + 'include "/tmp/lw-included.nft"\n'
    try:
        with pytest.raises(ProbeError, match=r"node router: after loading the ruleset the node holds the "
                                             r"tables inet fw4, inet lwforeign, but the file declares inet fw4 "
                                             r"\(extra: inet lwforeign; missing: none\)"):
            asyncio.run(lab.run({lab.policy.router: NodeJob(setup={"nft": config})}))
    finally:
        run_sync(lab.run({lab.policy.router: NodeJob(setup={"nft": lab.router_firewall().read_text()})}))
    assert tables(lab) == ["table inet fw4"]
