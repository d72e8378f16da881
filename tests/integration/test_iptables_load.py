"""An iptables router on a real lab: the homelab with router/rules.v4 and rules.v6 beside it
(the iptables kind, detected from the file), loaded with the real iptables and ip6tables
tools inside the router.

A load replaces the router's whole firewall (nft tables left by anything before are gone),
reads it back, and a file iptables-restore cannot parse changes nothing.
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
RULES = ROOT / "topologies" / "homelab" / "router" / "rules.v4"
RULES6 = RULES.with_suffix(".v6")
OWN = ["table ip filter", "table ip nat", "table ip raw", "table ip6 filter", "table ip6 raw"]
FOREIGN = "table inet lwforeign {\n  chain forward {\n    type filter hook forward priority -10; policy accept;\n  }\n}\n"


@pytest.fixture(scope="module")
def lab():
    with ComposeLab(*load_lab(ROOT / "topologies" / "homelab"), router_config=RULES, log=lambda *a: None) as instance:
        yield instance


def in_router(lab, *argv) -> str:
    """A command in the router's namespace, from the prober (the router lacks NET_ADMIN)."""
    proc = subprocess.run(["docker", "exec", lab.containers[PROBER].name, "nsenter",
                           f"--net={lab.transports[lab.policy.router].netns}", *argv],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def tables(lab) -> list[str]:
    return sorted(in_router(lab, "nft", "list", "tables").split("\n")[:-1])


def test_the_router_holds_the_files_tables_and_rules(lab):
    assert lab.router_kind().name == "iptables"
    assert tables(lab) == OWN
    saved = in_router(lab, "iptables-save")
    assert ":FORWARD DROP" in saved
    assert "-A PREROUTING -d 203.0.113.2/32 -i wan -p tcp -m multiport --dports 80,443 " \
           "-j DNAT --to-destination 198.18.10.10" in saved
    assert saved.count("\n-A ") == RULES.read_text().count("\n-A ")
    saved6 = in_router(lab, "ip6tables-save")
    assert "-A FORWARD -d 2001:db8:0:10::10/128 -i wan -o servers -p tcp -m multiport --dports 80,443 -j ACCEPT" in saved6
    assert saved6.count("\n-A ") == RULES6.read_text().count("\n-A ")


def test_a_v4_file_without_its_v6_loads_no_ipv6_tables(lab):
    with lab.router_on_loan():
        run_sync(lab.run({lab.policy.router: NodeJob(setup=lab.router_kind().load(RULES.read_text()))}))
        assert tables(lab) == [t for t in OWN if "ip6" not in t]
    assert tables(lab) == OWN


def test_a_load_replaces_nft_tables_and_the_loan_gives_the_iptables_config_back(lab):
    with lab.router_on_loan():
        run_sync(lab.run({lab.policy.router: NodeJob(setup={"nft_add": FOREIGN})}))
        assert tables(lab) == sorted(OWN + ["table inet lwforeign"])
        run_sync(lab.run({lab.policy.router: NodeJob(setup=lab.router_kind().load(RULES.read_text(), RULES))}))
        assert tables(lab) == OWN  # the foreign table is gone: the whole firewall was replaced
        run_sync(lab.run({lab.policy.router: NodeJob(setup={"nft_add": FOREIGN})}))
    assert tables(lab) == OWN


def test_a_file_iptables_restore_refuses_changes_nothing(lab):
    rule = "-A FORWARD -i ai -o wan -j ACCEPT"
    line = RULES.read_text().splitlines().index(rule) + 1
    broken = RULES.read_text().replace(rule, "-A FORWARD -i ai --no-such-option")
    with pytest.raises(ProbeError, match=rf"(?s)node router: `iptables-restore --test` failed .*unknown option "
                                         rf"\"--no-such-option\".*line: {line}\b"):
        asyncio.run(lab.run({lab.policy.router: NodeJob(setup=lab.router_kind().load(broken, RULES))}))
    assert tables(lab) == OWN
    assert in_router(lab, "iptables-save").count("\n-A ") == RULES.read_text().count("\n-A ")
