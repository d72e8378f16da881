"""`FlowFuzzer`: sends a batch of flows in one agent request (probes from the sources,
raw packets, captures on the targets), remembers what each flow did, and re-sends each
flow the oracle does not admit alone, with the full probe timeout, before it counts: a
silence that then answers was a wait too short (or a packet a lossy link lost) and
passes; an answer that does not come again is a `Failure` marked flaky, with both
observations.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from labwarden.realise.lab import run_sync
from labwarden.declared.policy import Policy
from labwarden.probe import NodeJob, Probe
from labwarden.fuzz.flows.flow import SAFE_RANGES, FuzzFlow
from labwarden.fuzz.flows.oracle import ARRIVED, LOST, Expected, expect_flow
from labwarden.fuzz.flows.packets import arrivals, craft

SILENT = frozenset({"filtered", LOST})   # outcomes that are the absence of an answer
RAW_SPORTS = range(20000, 30000)  # below the probes' ephemeral ports; one per raw flow of a batch


@dataclass(frozen=True)
class Seen:
    outcome: str
    detail: str
    by: IPv4Address | None = None


@dataclass(frozen=True)
class Failure:
    """A flow the oracle does not admit: what it did in its batch, and re-sent alone."""
    flow: FuzzFlow
    expected: Expected
    seen: Seen                           # in its batch
    alone: Seen                          # re-sent alone, with the full timeout

    @property
    def flaky(self) -> bool:
        """It did not fail again: the batch saw an answer the re-send did not give."""
        return self.expected.admits(self.alone.outcome)

    @property
    def rank(self) -> tuple:
        """Openings first (the policy denies, and something answered), flaky ones last."""
        opening = not self.expected.allowed and self.seen.outcome not in SILENT
        return (self.flaky, not opening, self.flow.spec())

    def observed(self) -> str:
        alone = f"{self.alone.outcome} ({self.alone.detail})"
        if self.flaky:
            return (f"observed {self.seen.outcome} ({self.seen.detail}) in its batch, but {alone} "
                    "when re-sent alone")
        if self.alone != self.seen:
            return f"observed {alone} (in its batch: {self.seen.outcome}, {self.seen.detail})"
        return f"observed {alone}"

    def message(self, policy: Policy) -> str:
        flaky = "FLAKY: " if self.flaky else ""
        expected = f"expected {self.expected} ({self.expected.reason})"
        return f"{flaky}{self.flow.label(policy)}: {expected}, {self.observed()}"


@dataclass
class FlowFuzzer:
    """Sends flows in batches, remembers what each did, re-sends what fails before it counts."""
    lab: object
    policy: Policy
    timeout: float = 0.5                 # per batch
    confirm_timeout: float = 1.0         # a flow that fails is re-sent alone with this one
    loss_retries: int = 0                # more re-sends of a silence, on a lab with lossy links
    seen: dict = field(default_factory=dict)
    expected: dict = field(default_factory=dict)
    failures: dict = field(default_factory=dict)   # flow -> Failure
    answered_alone: list = field(default_factory=list)  # silent in a batch, answered re-sent
    sent: int = 0
    batches: int = 0
    seconds: float = 0.0

    def observe(self, flows, timeout: float | None = None, trace: dict | None = None) -> dict[FuzzFlow, Seen]:
        """One agent request for every flow (probes from sources, packets crafted, targets
        capturing). `trace`: extra NodeJob fields for the router (used to explain)."""
        flows = list(dict.fromkeys(flows))
        timeout = self.timeout if timeout is None else timeout
        jobs: dict[str, NodeJob] = {}
        probes: dict[str, list[FuzzFlow]] = {}
        markers: dict[str, dict[bytes, FuzzFlow]] = {}
        first = RAW_SPORTS.start + secrets.randbelow(len(RAW_SPORTS) - len(flows))
        sport = iter(range(first, first + len(flows)))
        for flow in flows:
            job = jobs.setdefault(flow.src, NodeJob())
            if not flow.raw:
                job.probes.append(Probe(flow.proto, flow.dst, flow.port))
                probes.setdefault(flow.src, []).append(flow)
                continue
            marker = b"lwfuzz-" + secrets.token_hex(6).encode()
            job.send += self.framed(flow, craft(self.policy, flow, next(sport), marker))
            target = self.policy.topology.node_at(flow.dst).name
            jobs.setdefault(target, NodeJob()).capture_s = timeout
            markers.setdefault(target, {})[marker] = flow
        if trace:
            router = jobs.setdefault(self.policy.router, NodeJob())
            router.setup, router.trace = trace.get("setup"), True
        started = time.monotonic()
        answers = run_sync(self.lab.run(jobs, timeout=timeout, allow_extra=[str(SAFE_RANGES[0])]))
        self.seconds += time.monotonic() - started
        self.sent += len(flows)
        self.batches += 1
        out: dict[FuzzFlow, Seen] = {}
        for src, fs in probes.items():
            for flow, obs in zip(fs, answers[src].observations):
                out[flow] = Seen(obs.verdict, obs.detail, obs.by)
        for target, marked in markers.items():
            got = arrivals(answers[target].captured, marked)
            for flow in marked.values():
                out[flow] = Seen(ARRIVED, f"its marker was captured on {target}", None) if flow in got \
                    else Seen(LOST, f"nothing of it was captured on {target} within {timeout} s", None)
        if trace is not None:
            trace["answer"] = answers.get(self.policy.router)
        return out

    def framed(self, flow: FuzzFlow, items: list[dict]) -> list[dict]:
        """The packets as Ethernet frames to the next hop, sent on the source's interface:
        past the source's own IP stack, whose conntrack (Docker's DNS rules load it in every
        container) would reassemble fragments and drop odd packets before they leave."""
        topology = self.policy.topology
        node = topology.nodes[flow.src]
        target = topology.node_at(flow.dst)
        segment = next((s for s in node.segments if s in target.addresses), None)
        hop = target.name
        if segment is None:  # through the node's router for dst
            via = node.next_hop(flow.dst)
            hop = topology.node_at(via).name
            segment = topology.segment_of(via).name
        head = (bytes.fromhex(self.lab.mac(hop, segment).replace(":", ""))
                + bytes.fromhex(self.lab.mac(flow.src, segment).replace(":", "")) + b"\x08\x00")
        return [{"l2": (head + bytes.fromhex(item["l3"])).hex(), "iface": node.interfaces[segment]}
                for item in items]

    def check(self, flows) -> list[Failure]:
        """Sends the flows not sent before; returns the failures among all of them."""
        flows = list(dict.fromkeys(flows))
        new = [f for f in flows if f not in self.seen]
        if new:
            self.seen.update(self.observe(new))
            self.settle([f for f in new if not self.expect(f).admits(self.seen[f].outcome)])
        return [self.failures[f] for f in flows if f in self.failures]

    def settle(self, doubtful: list[FuzzFlow]) -> None:
        """Re-sends each flow its batch failed alone, with the full timeout, before it counts.

        A silence that then answers as the oracle says was a wait too short, or a packet
        a lossy link lost: it passes (and is counted). An answer the oracle does not admit
        is evidence: if the re-send behaves, the failure is flaky, never a pass. On a lab
        with lossy links a silence is re-sent `loss_retries` more times before it counts."""
        if not doubtful:
            return
        alone = self.observe(doubtful, self.confirm_timeout)
        for _ in range(self.loss_retries):
            lost = [f for f in doubtful if alone[f].outcome in SILENT and not self.expect(f).admits(alone[f].outcome)]
            if not lost:
                break
            alone.update({f: s for f, s in self.observe(lost, self.confirm_timeout).items()
                          if s.outcome not in SILENT})
        for f in doubtful:
            if self.seen[f].outcome in SILENT and self.expect(f).admits(alone[f].outcome):
                self.answered_alone.append(f)
                self.seen[f] = alone[f]
            else:
                self.failures[f] = Failure(f, self.expect(f), self.seen[f], alone[f])

    def expect(self, flow: FuzzFlow) -> Expected:
        if flow not in self.expected:
            self.expected[flow] = expect_flow(self.policy, flow)
        return self.expected[flow]

    def rate(self) -> str:
        per_s = self.sent / self.seconds if self.seconds else 0.0
        late = self.answered_alone
        late = f"; silent in a batch, answered when re-sent alone: {', '.join(f.spec() for f in late)}" if late else ""
        return f"{self.sent} flows in {self.batches} requests, {self.seconds:.1f} s: {per_s:.0f} flows/s{late}"
