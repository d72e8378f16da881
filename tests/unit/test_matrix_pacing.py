"""The matrix paces SYNs to a rate-limiting router (policy syn_limit), with no Docker:
a fake lab runs each batch against a token bucket like nftables' `limit rate R/second
burst B packets` on a simulated clock, and answers every probe it sends."""

import asyncio
import random
from pathlib import Path

import pytest

from labwarden import matrix
from labwarden.matrix import SYN_SHARE, matrix_flows, observe
from labwarden.policy import load_policy
from labwarden.probe import Observation
from labwarden.topology import load_topology

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"


class Answer:
    def __init__(self, observations):
        self.observations = observations


class FakeLab:
    """Sends a batch instantly after a random prober delay; the router's SYN limiter drops
    what its bucket cannot pay for (such probes come back filtered)."""

    def __init__(self, policy, clock, delay=(0.05, 0.6)):
        self.policy, self.clock, self.delay = policy, clock, delay
        limit = policy.syn_limit
        self.rate, self.burst = (limit.rate, limit.burst) if limit else (0, 0)
        self.tokens, self.last = float(self.burst), 0.0
        self.batches, self.dropped = [], 0

    async def run(self, jobs, timeout=1.0):
        self.clock[0] += random.uniform(*self.delay)  # docker exec, agent start: the SYNs leave now
        now = self.clock[0]
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        limited, answers = 0, {}
        for src, job in jobs.items():
            observations = []
            for probe in job.probes:
                flow = self.policy.flow(src, probe.dst, f"{probe.proto}/{probe.port}"
                                        if probe.port else probe.proto)
                verdict = "open"
                if self.policy.syn_limited(flow):
                    limited += 1
                    if self.tokens >= 1:
                        self.tokens -= 1
                    else:
                        verdict, self.dropped = "filtered", self.dropped + 1
                observations.append(Observation(verdict, None, ""))
            answers[src] = Answer(observations)
        self.batches.append(limited)
        self.clock[0] += 0.01  # the answers
        return answers


@pytest.fixture
def clock(monkeypatch):
    now = [0.0]

    async def sleep(seconds):
        now[0] += max(0.0, seconds)

    monkeypatch.setattr(matrix.asyncio, "sleep", sleep)
    return now


@pytest.mark.parametrize("seed", range(5))
def test_syns_to_a_rate_limiting_router_are_never_dropped(clock, seed):
    random.seed(seed)
    policy = load_policy(load_topology(TOPOLOGIES / "openwrt-homelab"))
    flows = matrix_flows(policy)
    lab = FakeLab(policy, clock)
    observed = asyncio.run(observe(lab, flows))
    assert set(observed) == set(flows) and lab.dropped == 0
    paced = sum(policy.syn_limited(f) for f in flows)
    size = int(policy.syn_limit.burst * SYN_SHARE)
    assert paced > policy.syn_limit.burst  # the matrix would overrun the limiter unpaced
    assert lab.batches == [size] * (paced // size) + ([paced % size] if paced % size else [])
    # about one refill per batch after the first, plus what the prober itself takes
    assert clock[0] < (len(lab.batches) - 1) * size / policy.syn_limit.rate + len(lab.batches) * 0.61


def test_unpaced_the_limiter_would_drop(clock):
    policy = load_policy(load_topology(TOPOLOGIES / "openwrt-homelab"))
    lab = FakeLab(policy, clock)
    asyncio.run(matrix._observe_batch(lab, matrix_flows(policy), 1.0))
    assert lab.dropped > 0


def test_a_router_without_a_syn_limit_gets_one_batch(clock):
    policy = load_policy(load_topology(TOPOLOGIES / "homelab"))
    lab = FakeLab(policy, clock)
    flows = matrix_flows(policy)
    assert set(asyncio.run(observe(lab, flows))) == set(flows)
    assert len(lab.batches) == 1 and clock[0] < 1.0
