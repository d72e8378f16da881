"""The segmentation matrix: which flows are probed, and how a cell is judged.

Every node (but the router) probes every address of every other node on the
ports the policy names plus a fixed set of common ones, ICMP echo and two UDP
ports. The expected verdict of each cell comes from the policy (the oracle);
the observed one from the probe agent. Each source node also gets positive
controls, flows the policy says must be `open`: a timeout only counts as
evidence of isolation when the same node demonstrably gets through elsewhere.

A router that rate-limits new TCP connections to itself (policy `syn_limit`)
would drop part of a matrix's worth of SYNs: those probes go in paced batches.
"""

import asyncio
from dataclasses import dataclass

from .policy import Expectation, Flow, Policy, Service
from .probe import NodeJob, Observation, Probe

COMMON_TCP = (22, 53, 80, 443, 445, 3389, 8080, 9418, 11434)
COMMON_UDP = (53, 5353)
CONTROLS_PER_NODE = 3
SYN_SHARE = 0.8  # of the router's SYN burst that one paced batch uses
LOSS_RETRIES = 3  # more rounds for silent probes on lossy links (1% a round trip: 4 in a row, 1e-8)


def matrix_services(policy: Policy) -> list[Service]:
    services = set(policy.declared_services())
    services |= {Service("tcp", p) for p in COMMON_TCP} | {Service("udp", p) for p in COMMON_UDP}
    services.add(Service("icmp", None))
    return sorted(services, key=lambda s: (s.proto, s.port or 0))


def matrix_flows(policy: Policy) -> list[Flow]:
    topology = policy.topology
    services = matrix_services(policy)
    flows = []
    for src in topology.nodes:
        if src == policy.router:
            continue
        for dst_name, dst in topology.nodes.items():
            if dst_name == src:
                continue
            for address in dst.addresses.values():
                flows += [policy.flow(src, address, service) for service in services]
    return flows


def controls(policy: Policy, flows: list[Flow]) -> dict[str, list[Flow]]:
    """Per source node, a few flows that must be open, spread over destinations."""
    chosen: dict[str, list[Flow]] = {}
    for flow in flows:
        if policy.expect(flow).verdicts != {"open"}:
            continue
        picked = chosen.setdefault(flow.src, [])
        if len(picked) < CONTROLS_PER_NODE and all(f.dst != flow.dst for f in picked):
            picked.append(flow)
    return chosen


@dataclass(frozen=True)
class Cell:
    flow: Flow
    expected: Expectation
    observed: Observation

    @property
    def ok(self) -> bool:
        return self.observed.verdict in self.expected.verdicts

    def message(self, policy: Policy) -> str:
        topology = policy.topology
        by = self.observed.by
        who = ""
        if by is not None:
            node = topology.node_at(by)
            who = f", answered by {policy.label(node.name)}" if node else f", answered by {by}"
        return (f"{self.flow.label(policy)}: expected {self.expected} ({self.expected.reason}), "
                f"observed {self.observed.explain()}{who}")


def probe_of(flow: Flow) -> Probe:
    return Probe(flow.proto, flow.dst, flow.port)


async def observe(lab, flows: list[Flow], timeout: float = 1.0) -> dict[Flow, Observation]:
    """Send every flow for real, all source nodes at once, and return what each saw.

    On a lab with lossy links (labwarden.impair), a probe that heard nothing where the
    policy expects an answer is sent again, up to LOSS_RETRIES times: a lost packet is
    not a filter, and a real filter stays silent every time.
    """
    observed = await _observe_paced(lab, flows, timeout)
    policy = getattr(lab, "policy", None)
    impairment = getattr(lab, "impairment", None)
    lossy = impairment is not None and impairment.method != "none" and \
        any(link.profile.loss_pct > 0 for link in impairment.links)
    for _ in range(LOSS_RETRIES if lossy and policy is not None else 0):
        again = [f for f in flows if observed[f].verdict == "filtered"
                 and not policy.expect(f).admits("filtered")]
        if not again:
            break
        answers = await _observe_paced(lab, again, timeout)
        observed.update({f: o for f, o in answers.items() if o.verdict != "filtered"})
    return observed


async def _observe_paced(lab, flows: list[Flow], timeout: float) -> dict[Flow, Observation]:
    """observe(), one round.

    Under the policy's syn_limit, SYNs to the router's own addresses go in batches of
    SYN_SHARE of its burst, the first one with every other flow. The next batch starts
    when the router's token bucket has earned a batch again, counted from the end of the
    previous one (all its SYNs had left by then), so however late the prober is, the
    limiter never drops a probe; each batch after the first adds about size / rate s.
    """
    policy = getattr(lab, "policy", None)
    limit = policy.syn_limit if policy is not None else None
    paced = [f for f in flows if limit is not None and policy.syn_limited(f)]
    if not paced:
        return await _observe_batch(lab, flows, timeout)
    size = max(1, int(limit.burst * SYN_SHARE))
    chosen = set(paced)
    batches = [paced[i:i + size] for i in range(0, len(paced), size)]
    batches[0] = [f for f in flows if f not in chosen] + batches[0]
    observed: dict[Flow, Observation] = {}
    for i, batch in enumerate(batches):
        if i:
            await asyncio.sleep(size / limit.rate)
        observed.update(await _observe_batch(lab, batch, timeout))
    return {flow: observed[flow] for flow in flows}


async def _observe_batch(lab, flows: list[Flow], timeout: float) -> dict[Flow, Observation]:
    by_src: dict[str, list[Flow]] = {}
    for flow in flows:
        by_src.setdefault(flow.src, []).append(flow)
    answers = await lab.run({src: NodeJob(probes=[probe_of(f) for f in fs])
                             for src, fs in by_src.items()}, timeout=timeout)
    return {flow: obs for src, fs in by_src.items()
            for flow, obs in zip(fs, answers[src].observations)}


@dataclass
class MatrixRun:
    policy: Policy
    cells: dict[Flow, Cell]
    failed_controls: dict[str, list[Cell]]

    def summary(self) -> str:
        bad = [c for c in self.cells.values() if not c.ok]
        return f"{len(self.cells)} cells, {len(bad)} mismatches"


async def run_matrix(lab, policy: Policy, flows: list[Flow] | None = None,
                     timeout: float = 1.0) -> MatrixRun:
    flows = matrix_flows(policy) if flows is None else flows
    checks = controls(policy, flows)
    control_flows = [f for fs in checks.values() for f in fs]
    observed = await observe(lab, list(dict.fromkeys(flows + control_flows)), timeout)
    cells = {f: Cell(f, policy.expect(f), observed[f]) for f in observed}
    failed = {src: [cells[f] for f in fs if not cells[f].ok] for src, fs in checks.items()}
    return MatrixRun(policy, cells, {src: cs for src, cs in failed.items() if cs})


def render_grid(run: MatrixRun) -> str:
    """A compact source x destination grid: '.' all as expected, else the mismatch count."""
    policy = run.policy
    srcs = sorted({f.src for f in run.cells}, key=policy.label)
    dsts = sorted({f.dst_node for f in run.cells if f.dst_node}, key=policy.label)
    bad: dict[tuple, int] = {}
    for flow, cell in run.cells.items():
        key = (flow.src, flow.dst_node)
        bad[key] = bad.get(key, 0) + (not cell.ok)
    width = max(len(policy.label(n)) for n in srcs)
    head = " " * width + " " + " ".join(f"{n[:7]:>7}" for n in dsts)
    rows = [head]
    for src in srcs:
        marks = []
        for dst in dsts:
            if (src, dst) not in bad:
                marks.append(f"{'-':>7}")
            else:
                marks.append(f"{'.' if bad[(src, dst)] == 0 else 'x' + str(bad[(src, dst)]):>7}")
        rows.append(f"{policy.label(src):>{width}} " + " ".join(marks))
    return "\n".join(rows) + f"\n{run.summary()} ('.' as expected, xN mismatches)"
