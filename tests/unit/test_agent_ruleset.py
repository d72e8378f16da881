"""Which tables an nft file leaves behind: what the agent reads back after a load."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "labwarden" / "agent"))
from agent import declared_tables  # noqa: E402  (the agent is a standalone script)


def test_the_shipped_configs_declare_their_tables():
    homelab = (ROOT / "topologies/homelab/router/nftables.conf").read_text()
    openwrt = (ROOT / "topologies/openwrt-homelab/router/fw4-homelab.nft").read_text()
    assert declared_tables(homelab) == {("inet", "filter"), ("ip", "nat")}
    assert declared_tables(openwrt) == {("inet", "fw4")}  # `flush table inet fw4` declares nothing


def test_statements_comments_and_deletions():
    text = ("add table t; create table ip6 six # table inet not_this\n"
            "table bridge br { chain c { } }\n"
            "  table netdev gone\ndelete table netdev gone\n"
            "table inet x\ndestroy table inet x\n")
    assert declared_tables(text) == {("ip", "t"), ("ip6", "six"), ("bridge", "br")}
