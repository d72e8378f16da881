"""The matrix under rate limits, with no Docker: a fake lab answers every probe as the
policy says, except what a token bucket like nftables' `limit rate R/second burst B
packets` cannot pay for (such probes come back filtered), on a simulated clock.

Two limiters: the policy's syn_limit (OpenWrt's syn_flood, paced from the start), and one
the policy does not know of (the nftables wiki's `icmp type echo-request limit rate
5/second accept` on the router): mismatches are re-sent alone and paced, and only those
that persist are mismatches."""

import asyncio
import contextvars
import random
from pathlib import Path

import pytest

from labwarden.checks import matrix
from labwarden.checks.matrix import (FLAKY_NOTE, PACE_BATCH, PACED_NOTE, SYN_SHARE, Cell, ControlFailed, Controls, Reprobes,
                              controls, crosses, matrix_flows, observe, silent_nodes)
from labwarden.declared.lab import load_lab
from labwarden.probe import Observation
from labwarden.realise.impair import Impairment

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"
ELAPSED = contextvars.ContextVar("elapsed", default=0.0)  # simulated time, per task (waves overlap)


class Answer:
    def __init__(self, observations):
        self.observations = observations


class FakeLab:
    """Sends a batch instantly after a random prober delay; `limited(flow)` says which flows
    the router's bucket counts; it drops what it cannot pay for. `blocked`/`opened`: flows the
    router really drops or lets through, whatever the policy says."""

    def __init__(self, policy, limited, rate, burst, delay=(0.05, 0.6), blocked=(), opened=()):
        self.policy, self.limited, self.delay = policy, limited, delay
        self.impairment = Impairment([])  # no emulated links
        self.rate, self.burst = rate, burst
        self.tokens, self.last = float(burst), 0.0
        self.blocked, self.opened = set(blocked), set(opened)
        self.batches, self.dropped, self.lost = [], 0, []  # lost: dropped, though the policy expects an answer

    async def run(self, jobs, timeout=1.0):
        now = ELAPSED.get() + random.uniform(*self.delay)  # docker exec, agent start: the probes leave now
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.last) * self.rate)
        self.last = max(self.last, now)
        counted, answers, silent = 0, {}, False
        for src, job in jobs.items():
            observations = []
            for probe in job.probes:
                flow = self.policy.flow(src, probe.dst, f"{probe.proto}/{probe.port}" if probe.port else probe.proto)
                verdict = "open" if flow in self.opened else min(self.policy.expect(flow).verdicts)
                if flow in self.blocked:
                    verdict = "filtered"
                elif self.limited(flow):
                    counted += 1
                    if self.tokens >= 1:
                        self.tokens -= 1
                    else:
                        verdict, self.dropped = "filtered", self.dropped + 1
                        if not self.policy.expect(flow).admits("filtered"):
                            self.lost.append(flow)
                silent |= verdict == "filtered"
                observations.append(Observation(verdict, None, "made up"))
            answers[src] = Answer(observations)
        self.batches.append(counted)
        ELAPSED.set(now + (timeout if silent else 0.01))  # a silent probe waits its timeout
        return answers


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    async def sleep(seconds):
        ELAPSED.set(ELAPSED.get() + max(0.0, seconds))

    monkeypatch.setattr(matrix.asyncio, "sleep", sleep)
    ELAPSED.set(0.0)


def openwrt():
    return load_lab(TOPOLOGIES / "openwrt-homelab").policy


def homelab():
    return load_lab(TOPOLOGIES / "homelab").policy


def syn_lab(policy, **kw):
    return FakeLab(policy, policy.syn_limited, policy.syn_limit.rate, policy.syn_limit.burst, **kw)


def ping_lab(policy, **kw):
    """Pings to the router's own addresses at 5/second, burst 5: the nftables wiki's home router
    (its `icmp type echo-request limit rate 5/second accept` is IPv4's: ICMPv6 echo is `icmpv6`)."""
    return FakeLab(policy, lambda f: f.proto == "icmp" and f.dst_node == policy.router and f.dst.version == 4,
                   5.0, 5, **kw)


@pytest.mark.parametrize("seed", range(5))
def test_syns_to_a_rate_limiting_router_are_never_dropped(seed):
    random.seed(seed)
    policy = openwrt()
    flows = matrix_flows(policy)
    lab = syn_lab(policy)
    reprobes = Reprobes()
    observed = asyncio.run(observe(lab, flows, reprobes=reprobes))
    assert set(observed) == set(flows) and lab.dropped == 0 and not reprobes.sent
    paced = sum(policy.syn_limited(f) for f in flows)
    size = int(policy.syn_limit.burst * SYN_SHARE)
    assert paced > policy.syn_limit.burst  # the matrix would overrun the limiter unpaced
    assert lab.batches == [size] * (paced // size) + ([paced % size] if paced % size else [])


def test_unpaced_the_limiter_would_drop():
    policy = openwrt()
    lab = syn_lab(policy)
    asyncio.run(matrix._observe_batch(lab, matrix_flows(policy), 1.0))
    assert lab.dropped > 0


def test_a_router_without_a_syn_limit_gets_one_batch():
    policy = homelab()
    lab = FakeLab(policy, lambda f: False, 1.0, 1)
    flows = matrix_flows(policy)
    assert set(asyncio.run(observe(lab, flows))) == set(flows)
    assert len(lab.batches) == 1 and ELAPSED.get() < 1.0


@pytest.mark.parametrize("seed", range(5))
def test_a_ping_limit_the_policy_does_not_know_is_no_mismatch(seed):
    random.seed(seed)
    policy = homelab()
    flows = matrix_flows(policy)
    lab = ping_lab(policy)
    reprobes = Reprobes()
    observed = asyncio.run(observe(lab, flows, reprobes=reprobes))
    wrong = [f.label(policy) for f, o in observed.items() if not policy.expect(f).admits(o.verdict)]
    assert not wrong
    assert lab.lost and reprobes.sent == reprobes.answered == lab.lost  # the burst lost these, pacing got them
    assert all(PACED_NOTE in observed[f].detail for f in reprobes.answered)
    assert all(size <= PACE_BATCH for size in lab.batches[1:])  # alone: a couple of probes at a time
    cell = Cell(reprobes.answered[0], policy.expect(reprobes.answered[0]), observed[reprobes.answered[0]])
    assert cell.ok and cell.paced and PACED_NOTE in cell.message(policy)


def test_under_the_limit_an_opening_and_a_block_still_count():
    random.seed(1)
    policy = homelab()
    flows = matrix_flows(policy)
    opening = policy.flow("web", "198.18.1.10", "tcp/22")      # the policy: filtered
    block = policy.flow("laptop", "198.18.10.10", "tcp/80")    # the policy: open
    lab = ping_lab(policy, blocked=[block], opened=[opening])
    reprobes = Reprobes()
    observed = asyncio.run(observe(lab, flows, reprobes=reprobes))
    wrong = {f for f, o in observed.items() if not policy.expect(f).admits(o.verdict)}
    assert wrong == {opening, block}
    assert {opening, block} <= set(reprobes.sent) and not {opening, block} & set(reprobes.answered)
    assert observed[opening].verdict == "open" and observed[block].verdict == "filtered"
    assert PACED_NOTE not in observed[block].detail


def test_an_answer_that_does_not_come_again_still_counts():
    """An opening seen once (a connection some earlier state let through) is not cleared by a
    silent re-send: it stays the cell's observation, marked flaky."""
    random.seed(3)
    policy = homelab()
    once = policy.flow("web", "198.18.1.10", "tcp/22")      # the policy: filtered
    lab = ping_lab(policy, opened=[once])
    sent = lab.run

    async def run_then_close(jobs, timeout=1.0):
        answers = await sent(jobs, timeout)
        lab.opened.discard(once)  # from the next batch on, the router drops it as it should
        return answers

    lab.run = run_then_close
    observed = asyncio.run(observe(lab, matrix_flows(policy), reprobes=Reprobes()))
    assert observed[once].verdict == "open" and FLAKY_NOTE in observed[once].detail
    assert not Cell(once, policy.expect(once), observed[once]).ok


def test_controls_cross_the_router_first():
    policy = homelab()
    checks = controls(policy, matrix_flows(policy))
    assert set(checks) == {n for n in policy.topology.nodes if n != policy.router}
    assert all(crosses(policy, fs[0]) for fs in checks.values())
    # the old controls: the router's own address, or a neighbour on the same segment
    assert not crosses(policy, policy.flow("laptop", "198.18.1.1", "icmp"))
    assert not crosses(policy, policy.flow("laptop", "198.18.1.11", "icmp"))
    # a port-forward crosses: it lands on the web server
    assert crosses(policy, policy.flow("visitor", "203.0.113.2", "tcp/80"))


def test_a_node_that_may_reach_nothing_is_controlled_by_the_routers_capture():
    policy = openwrt()
    checks = controls(policy, matrix_flows(policy))
    assert silent_nodes(policy, checks) == ["gpu"]
    assert not any(policy.expect(f).reached for f in matrix_flows(policy) if f.src == "gpu")


def test_a_failed_control_names_the_node_and_what_it_saw():
    policy = homelab()
    flow = policy.flow("gpu", "203.0.113.10", "icmp")
    good = Cell(policy.flow("laptop", "198.18.10.10", "icmp"), policy.expect(flow), Observation("open", None, "reply"))
    bad = Cell(flow, policy.expect(flow), Observation("filtered", None, "no answer"))
    checked = Controls(policy, {"laptop": [good], "gpu": [bad]})
    checked.require("laptop", "web")  # passed, or no controls at all: nothing to say
    with pytest.raises(ControlFailed, match=r"ai/gpu: ai/gpu -> wan/visitor icmp: expected open .*observed filtered"):
        checked.require("laptop", "gpu")


def test_the_report_shows_what_was_rate_limited():
    from labwarden.checks.matrix import MatrixRun
    from labwarden.report.html import render_html
    from labwarden.report.model import Report
    random.seed(2)
    policy = homelab()
    flows = matrix_flows(policy)
    reprobes = Reprobes()
    observed = asyncio.run(observe(ping_lab(policy), flows, reprobes=reprobes))
    run = MatrixRun(policy, {f: Cell(f, policy.expect(f), observed[f]) for f in flows}, reprobes=reprobes)
    assert f"{len(reprobes.sent)} mismatches re-sent alone, {len(reprobes.answered)} then answered" in run.summary()
    report = Report()
    matrix = report.add_matrix(run)
    paced = reprobes.answered[0].label(policy)
    assert matrix["rate_limited"] == matrix["reprobed"] and paced in matrix["rate_limited"]
    record, = [p for p in report.probes if p["flow"] == paced]
    assert record["ok"] and record["detail"].endswith(PACED_NOTE)
    assert "only when re-sent alone and paced (rate-limited, not blocked)" in render_html(report.to_dict())


class OverloadedLab(FakeLab):
    """The first burst loses every answer (a prober overloaded by a big lab); later batches
    are answered as the policy says."""

    async def run(self, jobs, timeout=1.0):
        answers = await super().run(jobs, timeout)
        if len(self.batches) == 1:
            for answer in answers.values():
                answer.observations = [Observation("filtered", None, "lost") for _ in answer.observations]
        return answers


def test_thousands_of_misses_are_re_sent_in_one_batch_not_paced_for_minutes():
    random.seed(3)
    policy = homelab()
    flows = matrix_flows(policy)
    lab = OverloadedLab(policy, lambda f: False, 1.0, 1)
    reprobes = Reprobes()
    observed = asyncio.run(observe(lab, flows, reprobes=reprobes))
    assert len(reprobes.sent) > matrix.PACED_MAX
    assert all(policy.expect(f).admits(o.verdict) for f, o in observed.items())
    assert len(lab.batches) == 2 and ELAPSED.get() < 5.0  # one re-send, not len/2 waves 0.5 s apart
    assert not reprobes.answered  # they answered at once: no rate limit to name


def test_a_batch_bigger_than_the_prober_s_sockets_goes_in_calls_of_whole_nodes(monkeypatch):
    policy = homelab()
    flows = matrix_flows(policy)
    monkeypatch.setattr(matrix, "MAX_PROBES_PER_CALL", 300)
    lab = FakeLab(policy, lambda f: False, 1.0, 1)
    sizes = []
    run = lab.run

    async def counted(jobs, timeout=1.0):
        sizes.append(sum(len(j.probes) for j in jobs.values()))
        return await run(jobs, timeout)
    lab.run = counted
    observed = asyncio.run(observe(lab, flows))
    assert set(observed) == set(flows) and all(policy.expect(f).admits(o.verdict) for f, o in observed.items())
    per_node = max(sum(1 for f in flows if f.src == n) for n in policy.topology.nodes)
    assert sum(sizes) == len(flows) and len(sizes) > 1 and max(sizes) <= max(300, per_node), sizes
