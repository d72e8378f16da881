"""The latency machinery on a lab of its own (latency_lab/: laptop -> NAT gateway with a
firewall -> satellite hop -> server; the sky segment 50 ms each way): the delay line is
applied and read back, as slow as configured, caught when broken, traced hop by hop, and
gone with the lab. No mocks: real packets through the relay in the satellite node.
"""

import asyncio
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from labwarden.realise import impair

from labwarden.checks import latency
from labwarden.realise.impair import firewalled_nodes
from labwarden.realise.compose import ComposeLab
from labwarden.declared.budgets import parse_budget
from labwarden.declared.lab import load_lab
from labwarden.probe.ship import IN_PROBER

pytestmark = pytest.mark.lab
LAB = Path(__file__).resolve().parent / "latency_lab"
SERVER = IPv4Address("198.18.72.10")


@pytest.fixture(scope="module")
def lab():
    instance = ComposeLab(*load_lab(LAB), log=lambda *a: None)
    with instance:
        yield instance


def link_check(lab):
    links = lab.impairment.links
    return latency.link_check(lab.topology, links, links[0], firewalled_nodes(lab))


def ping_across(lab, check, count=30):
    samples = asyncio.run(latency.ping(lab, [(check.src, check.dst)], count=count, interval_s=check.interval_s))
    return check.judge(samples[(check.src, check.dst)])


def test_the_link_is_applied_by_the_delay_line_and_read_back(lab):
    imp = lab.impairment
    available, why = impair.netem_available(lab)
    assert imp.method == ("netem" if available else "delayline") and imp.reason == why
    if imp.method != "delayline":
        pytest.skip("netem carries the links here")
    # the gateway runs a firewall: the satellite carries both directions of the sky link
    assert list(imp.carriers) == ["sat"] and "ingress sky from 1 sender" in imp.carriers["sat"][0]
    back = imp.readback["sat"]["readback"]
    assert {t["name"] for t in back["tuns"]} == {"lwd0o", "lwd0i", "lwd0j"}
    assert lab.mac("gw", "sky") in back["nft"]
    assert impair.verify_delayline(imp.readback["sat"]["links"], back) == []
    assert imp.header()["links"][0]["delay_ms"] == 50


def test_round_trips_across_the_link_are_as_configured(lab):
    check = link_check(lab)
    stats, problem = ping_across(lab, check)
    assert problem is None, problem
    assert stats.loss_pct == 0


def test_a_budget_tighter_than_the_link_fails_naming_path_budget_and_figure(lab):
    tight = parse_budget("policy.yaml", "budgets[t]", "laptop -> server icmp", "p95 < 50 ms", lab.policy)
    [measured] = asyncio.run(latency.measure(lab, [tight])).values()
    [failure] = measured.failures()
    assert failure.startswith("cabin/laptop -> uplink/server icmp: budget 'p95 < 50 ms' broken: measured p95 1")
    assert measured.stats.p95 > 95  # 100 ms configured (a busy machine only adds)


def test_traceroute_shows_the_satellite_hop_behind_the_link(lab):
    answers = asyncio.run(latency.traceroute(lab, [("laptop", SERVER, "udp", None), ("laptop", SERVER, "tcp", 80)],
                                             max_hops=5))
    for (src, dst, proto, _), answer in answers.items():
        rows, problems = latency.judge_traceroute(lab.topology, lab.impairment.links, src, dst, answer)
        assert problems == [], f"{proto}: {problems}\n" + latency.render_table(latency.TRACE_COLUMNS, rows)
        assert [r["cells"][2] for r in rows] == ["gw", "sat", "server"]
        sat_ms = [reply["ms"] for reply in answer["hops"][1]["replies"] if reply]
        assert all(95 < ms < 150 for ms in sat_ms), sat_ms  # delayed both ways (not 50), though the TTL ran out


def test_a_stopped_delay_line_does_not_pass_silently(lab):
    if lab.impairment.method != "delayline":
        pytest.skip("netem carries the links here")
    check = link_check(lab)
    lab.prober_exec("python3", IN_PROBER, "delayline", "stop")
    try:
        stats, problem = ping_across(lab, check, count=10)
        assert problem and "configured 100.00 ms" in problem and stats.p50 < 5
        assert impair.prober_status(lab) == {}
    finally:
        lab.impairment = impair.apply(lab)
    assert ping_across(lab, check)[1] is None
