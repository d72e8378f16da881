"""Readiness does not depend on the router config under test (issue 9, item 10).

The router's services used to be probed from the router itself: out through its output
hook, back in through its input hook on lo. A config whose input chain does not accept lo
(`oifname "lo" accept` written for `iifname`) then stopped the lab with "not ready after
30 s, services not answering: router: tcp/22 on 203.0.113.2, ..." and the config was never
judged. Readiness now reads the nodes' listening sockets.
"""

import asyncio
from pathlib import Path

import pytest

from labwarden.realise.compose import ComposeLab
from labwarden.declared.lab import load_lab
from labwarden.probe import NodeJob, Probe

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parents[2]


def test_a_config_that_drops_the_routers_own_loopback_still_gives_a_ready_lab(tmp_path):
    topology, policy = load_lab(ROOT / "topologies" / "homelab")
    own = topology.nodes[policy.router].firewall.read_text()
    assert '\t\tiifname "lo" accept\n' in own
    config = tmp_path / "no-loopback.nft"
    config.write_text(own.replace('iifname "lo" accept', 'oifname "lo" accept'))
    with ComposeLab(topology, policy, router_config=config, log=lambda *a: None) as lab:
        # the ruleset does block the router's own probe of its DNS: that did not stop the lab
        answers = asyncio.run(lab.run({policy.router: NodeJob(probes=[Probe("tcp", policy.public, 53)])},
                                      timeout=0.5))
        assert answers[policy.router].observations[0].verdict == "filtered"
