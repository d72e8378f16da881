"""The segmentation matrix: which flows are probed, and how a cell is judged.

Every node (but the router) probes every address of every other node on the
ports the policy names plus a fixed set of common ones, ICMP echo and two UDP
ports. The expected verdict of each cell comes from the policy (the oracle);
the observed one from the probe agent.

Each source node also gets positive controls: a timeout only counts as evidence
of isolation when the same node demonstrably gets through. A control is a flow
the policy says must be `open`, one that crosses the router first when the
policy allows one (it proves forwarding, not just the link); a node the policy
lets reach nothing gets one that needs no answer: the router's capture must see
its probe arrive. A node whose controls failed gets errors, never passes, from
every check that judges its silence (`Controls.require`).

A rate limit is not a firewall verdict: a router that accepts pings to itself at
5/second drops most of a matrix's burst. So before a probe counts as a mismatch
it is sent again, alone and paced (PACE_BATCH probes every PACE_GAP_S, all nodes
together), and only a mismatch that persists is one; a probe that then answers
as the policy says passes, its detail noting PACED_NOTE. A router that
rate-limits new TCP connections to itself (policy `syn_limit`) would drop part
of a matrix's worth of SYNs: those probes go in paced batches from the start.
"""

import asyncio
from dataclasses import dataclass, field, replace

from labwarden.probe import packets
from labwarden.errors import LabwardenError
from labwarden.declared.policy import Expectation, Flow, Policy, Service
from labwarden.probe import NodeJob, Observation, Probe

COMMON_TCP = (22, 53, 80, 443, 445, 3389, 8080, 9418, 11434)
COMMON_UDP = (53, 5353)
CONTROLS_PER_NODE = 3
SYN_SHARE = 0.8  # of the router's SYN burst that one paced batch uses
LOSS_RETRIES = 3  # more rounds for silent probes on lossy links (1% a round trip: 4 in a row, 1e-8)
PACE_BATCH = 2     # probes per paced wave, all nodes together: a router's limiter counts every source
PACE_GAP_S = 0.5   # between waves: 4 probes/s stays under `limit rate 5/second` (the nftables wiki's pings)
MAX_PROBES_PER_CALL = 15_000  # a socket each in one agent process: the prober's open files are capped
                              # (20,000 on our engine: an 80-node matrix's 89,000 probes failed EMFILE)
PACED_MAX = 400    # paced re-sends at most (100 s of waves); more are re-sent in one batch first.
                   # A limiter's misses are many more than 40: the homelab behind 5/s limits had
                   # 51 and 60 (tests/integration/test_rate_limits.py failed at 40)
PACED_NOTE = "answered when paced: rate-limited"
FLAKY_NOTE = "FLAKY: not seen again when re-sent alone"
CAPTURE_S = 1.0    # the router's capture window of a control that needs no answer


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
            for address in dst.all_addresses():  # IPv4, then IPv6: same ports
                flows += [policy.flow(src, address, service) for service in services]
    return flows


def crosses(policy: Policy, flow: Flow) -> bool:
    """Whether the flow, as the policy says it lands, is forwarded by the router: it reaches
    a node that shares no segment with the source (a port-forward's target included)."""
    reached = policy.expect(flow).reached
    if reached in (None, policy.router, flow.src):
        return False
    nodes = policy.topology.nodes
    return not set(nodes[reached].segments) & set(nodes[flow.src].segments)


def controls(policy: Policy, flows: list[Flow]) -> dict[str, list[Flow]]:
    """Per source node, a few flows that must be open, spread over destinations; the first
    crosses the router whenever the policy lets the node cross it at all. As many per
    address family the node probes: an IPv6 silence needs an IPv6 control."""
    chosen: dict[str, list[Flow]] = {}
    per_family: dict[tuple, int] = {}
    open_flows = [f for f in flows if policy.expect(f).verdicts == {"open"}]
    for flow in sorted(open_flows, key=lambda f: not crosses(policy, f)):  # stable: crossing first
        picked, key = chosen.setdefault(flow.src, []), (flow.src, flow.dst.version)
        if per_family.get(key, 0) < CONTROLS_PER_NODE and all(f.dst != flow.dst for f in picked):
            picked.append(flow)
            per_family[key] = per_family.get(key, 0) + 1
    return chosen


def local_only_nodes(policy: Policy) -> list[str]:
    """Nodes whose services no wan node reaches, at any address (port-forwards included)."""
    topology = policy.topology
    wan_nodes = [n for n in topology.nodes if policy.zone_of(n) == "wan"]
    addresses = [a for node in topology.nodes.values() for a in node.all_addresses()]
    return [name for name in topology.nodes
            if name != policy.router and policy.zone_of(name) != "wan"
            and not any(policy.expect(policy.flow(w, a, s)).reached == name
                        for w in wan_nodes for a in addresses for s in policy.services.get(name, ()))]


def reachers(policy: Policy, node: str) -> set[str]:
    """The zones some matrix flow of which lands on the node."""
    return {policy.zone_of(f.src) for f in matrix_flows(policy) if policy.expect(f).reached == node}


def one_way_pairs(policy: Policy) -> list[tuple[Flow, Flow]]:
    """(allowed flow, reverse flow) per zone pair and address family where only one side may
    initiate: a new connection across the router, and the same service the other way round,
    which the policy forbids (replies to the first pass; the second may not open anything)."""
    pairs: dict[tuple, tuple[Flow, Flow]] = {}
    flows = matrix_flows(policy)
    for flow in sorted(flows, key=lambda f: f.proto != "tcp"):  # a SYN-ACK is the reply to show
        if policy.expect(flow).verdicts != {"open"} or flow.dst_node == policy.router or not crosses(policy, flow):
            continue
        key = (policy.zone_of(flow.src), policy.zone_of(flow.dst_node), flow.dst.version)
        if key in pairs or flow.dst_node != policy.expect(flow).reached:
            continue
        src_node = policy.topology.nodes[flow.src]
        mine = {(s.proto, s.port) for s in policy.services.get(flow.src, ())}
        for reverse in flows:
            if (reverse.src == flow.dst_node and reverse.dst in src_node.all_addresses()
                    and reverse.dst.version == flow.dst.version
                    and (reverse.proto, reverse.port) in mine and policy.expect(reverse).reached is None
                    and not policy.topology.on_link(reverse.src, reverse.dst)):
                pairs[key] = (flow, reverse)
                break
    return list(pairs.values())


def silent_nodes(policy: Policy, checks: dict[str, list[Flow]]) -> list[str]:
    """Source nodes with no open flow to check: their control is the router seeing them."""
    return [n for n in policy.topology.nodes if n != policy.router and not checks.get(n)]


@dataclass(frozen=True)
class Cell:
    flow: Flow
    expected: Expectation
    observed: Observation

    @property
    def ok(self) -> bool:
        return self.observed.verdict in self.expected.verdicts

    @property
    def paced(self) -> bool:
        """Answered as the policy says only when re-sent alone and paced: a rate limit."""
        return PACED_NOTE in self.observed.detail

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


@dataclass
class Reprobes:
    """What confirming mismatches took: the flows re-sent alone, and those that then answered
    as the policy says (rate-limited, not filtered)."""
    sent: list[Flow] = field(default_factory=list)
    answered: list[Flow] = field(default_factory=list)

    def summary(self) -> str:
        if not self.sent:
            return "no probe needed re-sending"
        return (f"{len(self.sent)} mismatches re-sent alone, {len(self.answered)} then answered as the "
                f"policy says ({PACED_NOTE})")


async def observe(lab, flows: list[Flow], timeout: float = 1.0,
                  reprobes: Reprobes | None = None) -> dict[Flow, Observation]:
    """Send every flow for real, all source nodes at once, and return what each saw.

    On a lab with impaired links every probe waits their round trips on top of `timeout`.
    On a lab with lossy links (labwarden.realise.impair), a probe that heard nothing where the
    policy expects an answer is sent again, up to LOSS_RETRIES times: a lost packet is
    not a filter, and a real filter stays silent every time. Then every probe whose
    observation the policy does not admit is confirmed (`_confirm`); `reprobes`, if
    given, counts what that took.
    """
    policy = lab.policy
    timeout += lab.impairment.round_trip_allowance_s()
    observed = await _observe_paced(lab, flows, timeout)
    for _ in range(LOSS_RETRIES if lab.impairment.lossy else 0):
        again = [f for f in flows if observed[f].verdict == "filtered"
                 and not policy.expect(f).admits("filtered")]
        if not again:
            break
        answers = await _observe_paced(lab, again, timeout)
        observed.update({f: o for f, o in answers.items() if o.verdict != "filtered"})
    observed.update(await _confirm(lab, policy, observed, timeout, reprobes or Reprobes()))
    return observed


async def _confirm(lab, policy: Policy, observed: dict[Flow, Observation], timeout: float,
                   reprobes: Reprobes) -> dict[Flow, Observation]:
    """Mismatches sent again alone: what they observe then is their observation, but for an
    answer where the policy expects none that does not come again: it still came (flaky).

    A limiter drops (or rejects) what exceeds its rate, so a probe that missed an answer
    the policy expects goes paced; an answer where the policy expects none is never a
    limiter's doing, and is re-sent in one small batch. The first burst drained the
    limiter, but it took a timeout: a bucket of a few per second has refilled by now.
    More than PACED_MAX such misses are no limiter's (a prober overloaded by a large lab's
    burst on a busy machine): they go again in one batch, and only what that batch
    still misses goes paced (as the batch saw them when even that is more than PACED_MAX).
    """
    doubtful = [f for f, o in observed.items() if not policy.expect(f).admits(o.verdict)]
    if not doubtful:
        return {}
    leaks = [f for f in doubtful if policy.expect(f).reached is None and observed[f].verdict != "filtered"]
    leaked = set(leaks)  # a set: on an overloaded machine thousands of probes can be doubtful
    paced = [f for f in doubtful if f not in leaked]  # few: only mismatches get here
    again: dict[Flow, Observation] = {}
    if len(paced) > PACED_MAX:  # not a limiter's handful (an overloaded machine's): all at once first
        again.update(await _observe_batch(lab, paced, timeout))
        paced = [f for f in paced if not policy.expect(f).admits(again[f].verdict)]
        paced = paced if len(paced) <= PACED_MAX else []  # still too many: as that batch saw them
    waves = [paced[i:i + PACE_BATCH] for i in range(0, len(paced), PACE_BATCH)]

    async def wave(i: int, batch: list[Flow]) -> dict[Flow, Observation]:
        await asyncio.sleep(i * PACE_GAP_S)  # waves overlap: a silent one waits its timeout, the next goes on
        return await _observe_batch(lab, batch, timeout)

    for answers in await asyncio.gather(*(wave(i, b) for i, b in enumerate(waves)),
                                        *([_observe_batch(lab, leaks, timeout)] if leaks else [])):
        again.update(answers)
    reprobes.sent += doubtful
    for flow in paced:
        if policy.expect(flow).admits(again[flow].verdict):
            reprobes.answered.append(flow)
            again[flow] = replace(again[flow], detail=f"{again[flow].detail}; {PACED_NOTE}")
    for flow in leaks:  # an answer that did not come again still came: it stays, marked flaky
        if policy.expect(flow).admits(again[flow].verdict):
            first = observed[flow]
            again[flow] = replace(first, detail=f"{first.detail}; {FLAKY_NOTE} ({again[flow].explain()})")
    return again


async def _observe_paced(lab, flows: list[Flow], timeout: float) -> dict[Flow, Observation]:
    """observe(), one round.

    Under the policy's syn_limit, SYNs to the router's own addresses go in batches of
    SYN_SHARE of its burst, the first one with every other flow. The next batch starts
    when the router's token bucket has earned a batch again, counted from the end of the
    previous one (all its SYNs had left by then), so however late the prober is, the
    limiter never drops a probe; each batch after the first adds about size / rate s.
    """
    policy = lab.policy
    limit = policy.syn_limit
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
    """The flows, all at once, in as few calls as the prober's sockets allow: whole source
    nodes per call, at most MAX_PROBES_PER_CALL probes (but never fewer than one node's)."""
    by_src: dict[str, list[Flow]] = {}
    for flow in flows:
        by_src.setdefault(flow.src, []).append(flow)
    calls: list[dict[str, list[Flow]]] = [{}]
    for src, fs in by_src.items():
        if calls[-1] and sum(map(len, calls[-1].values())) + len(fs) > MAX_PROBES_PER_CALL:
            calls.append({})
        calls[-1][src] = fs
    observed: dict[Flow, Observation] = {}
    for call in calls:  # one after the other: each holds its sockets until its timeout
        answers = await lab.run({src: NodeJob(probes=[probe_of(f) for f in fs])
                                 for src, fs in call.items()}, timeout=timeout)
        observed.update({flow: obs for src, fs in call.items()
                         for flow, obs in zip(fs, answers[src].observations)})
    return {flow: observed[flow] for flow in flows}


class ControlFailed(LabwardenError):
    """A node's positive controls failed: its silence is no evidence of isolation."""


@dataclass
class Controls:
    """Per source node, the cells of its positive controls (see the module's docstring)."""
    policy: Policy
    cells: dict[str, list[Cell]] = field(default_factory=dict)

    @property
    def failed(self) -> dict[str, list[Cell]]:
        return {src: bad for src, cs in self.cells.items() if (bad := [c for c in cs if not c.ok])}

    def require(self, *nodes: str) -> None:
        """Raise ControlFailed when a control of any of these nodes failed. Call it from a
        fixture, so a check that judges their silence errors (never passes, never fails)."""
        failed = self.failed
        lines = [f"{self.policy.label(n)}: {c.message(self.policy)}"
                 for n in dict.fromkeys(nodes) for c in failed.get(n, ())]
        if lines:
            raise ControlFailed("positive controls failed, so silence from or towards these nodes "
                                "proves nothing (is the node's link up? its route?):\n  " + "\n  ".join(lines))


async def seen_by_router(lab, policy: Policy, nodes: list[str], timeout: float = 1.0) -> list[Cell]:
    """A control that needs no answer: each node pings its first hop while the router
    captures; the router must see the echo request arrive on the node's segment.

    (The router's firewall may drop it: the capture sees it before any rule does.)"""
    topology = policy.topology
    router = topology.nodes[policy.router]
    plan = {}
    for name in nodes:
        node = topology.nodes[name]
        shared = [s for s in node.segments if s in router.addresses]
        if shared:
            plan[name] = (shared[0], router.addresses[shared[0]])
    if not plan:
        return []
    jobs = {n: NodeJob(probes=[Probe("icmp", address)]) for n, (_, address) in plan.items()}
    jobs[policy.router] = NodeJob(capture_s=CAPTURE_S)
    answers = await lab.run(jobs, timeout=timeout)
    seen = packets.decode(answers[policy.router].captured)
    cells = []
    for name, (segment, address) in plan.items():
        src, iface = topology.nodes[name].addresses[segment], router.interfaces.get(segment, segment)
        hit = any(s.direction == "in" and s.src == src and s.iface == iface for s in seen)
        why = f"the router's capture on {iface} must see the node's probes arrive"
        observed = Observation("seen" if hit else "unseen", None,
                               f"the router's capture on {iface} {'saw' if hit else 'saw no packet from'} {src}")
        cells.append(Cell(policy.flow(name, address, "icmp"), Expectation(frozenset({"seen"}), policy.router, why),
                          observed))
    return cells


async def check_controls(lab, policy: Policy, timeout: float = 1.0,
                         observed: dict[Flow, Observation] | None = None) -> Controls:
    """Every source node's controls, judged; the open flows are probed now unless `observed`
    (a matrix that sent them in its own batch) already has them."""
    checks = controls(policy, matrix_flows(policy))
    wanted = [f for fs in checks.values() for f in fs if observed is None or f not in observed]
    seen = dict(observed or {})
    if wanted:
        seen.update(await observe(lab, wanted, timeout))
    result = Controls(policy, {src: [Cell(f, policy.expect(f), seen[f]) for f in fs] for src, fs in checks.items()})
    for cell in await seen_by_router(lab, policy, silent_nodes(policy, checks), timeout):
        result.cells.setdefault(cell.flow.src, []).append(cell)
    return result


@dataclass
class MatrixRun:
    policy: Policy
    cells: dict[Flow, Cell]
    controls: Controls | None = None
    reprobes: Reprobes = field(default_factory=Reprobes)

    @property
    def failed_controls(self) -> dict[str, list[Cell]]:
        return self.controls.failed if self.controls is not None else {}

    def summary(self) -> str:
        bad = [c for c in self.cells.values() if not c.ok]
        return f"{len(self.cells)} cells, {len(bad)} mismatches; {self.reprobes.summary()}"


async def run_matrix(lab, policy: Policy, flows: list[Flow] | None = None,
                     timeout: float = 1.0) -> MatrixRun:
    """The matrix's flows (default: all of them) and every node's controls, in one batch."""
    flows = matrix_flows(policy) if flows is None else flows
    checks = controls(policy, matrix_flows(policy))
    control_flows = [f for fs in checks.values() for f in fs]
    reprobes = Reprobes()
    observed = await observe(lab, list(dict.fromkeys(flows + control_flows)), timeout, reprobes)
    cells = {f: Cell(f, policy.expect(f), observed[f]) for f in flows}
    return MatrixRun(policy, cells, await check_controls(lab, policy, timeout, observed), reprobes)


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
