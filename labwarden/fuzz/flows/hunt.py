"""Hunting: hypothesis draws every batch of its profile, failures are *recorded* rather
than raised at the first (one false alarm must not hide an opening drawn later), and
then the hunt fails with all of them, described: openings first; for the first few,
what the router's rules did with the flow (traced, when the router is ours) and the
command that replays it alone.
"""

from __future__ import annotations

import shlex
from ipaddress import IPv4Address
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from labwarden.errors import LabwardenError
from labwarden.realise.lab import run_sync
from labwarden.routers.nftables.trace import explain as tell, parse_events, shown_path, stories
from labwarden.probe import NodeJob
from labwarden.fuzz.flows.flow import FuzzFlow
from labwarden.fuzz.flows.fuzzer import Failure, FlowFuzzer
from labwarden.fuzz.flows.strategies import Batch

SHOWN = 10                               # failures explained in full (traced); the rest one line each


def replay_command(flow: FuzzFlow, topology: str, router_config=None, test: str = "suites/fuzz/test_replay.py") -> str:
    parts = ["python3", "-m", "pytest", test, "--lw-fuzz-replay", flow.spec()]
    if topology != "homelab":
        parts += ["--lw-topology", topology]
    if router_config:
        path = Path(router_config).resolve()
        parts += ["--lw-router-config", str(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)]
    return " ".join(shlex.quote(p) for p in parts)


def explain(fuzzer: FlowFuzzer, flows: list[FuzzFlow]) -> dict[FuzzFlow, str]:
    """Per flow, 'was ACCEPTED by forward rule '...' (file:line)' from an nft trace of the
    router, when the router is ours (its config is known) and its kind can trace."""
    policy, lab = fuzzer.policy, fuzzer.lab
    config = lab.router_firewall()
    if config is None or not flows:
        return {}
    kind = lab.router_kind()
    if not kind.can_trace:
        return {f: f"(not traced: a router of kind {kind.name} cannot tell which rule decided)" for f in flows}
    topology = policy.topology
    keys, addresses = {}, set()
    for flow in flows:
        srcs = set(topology.nodes[flow.src].all_addresses())
        if flow.odd and flow.odd[0] == "spoof":
            srcs = {IPv4Address(flow.odd[1])}
        answerers = {flow.dst} | {topology.nodes[f.to].addresses[topology.nodes[f.to].segments[0]]
                                  for f in policy.forwards if flow.dst == policy.public}
        keys[flow] = (srcs, flow.dst, flow.proto, flow.port, answerers)
        addresses |= srcs | answerers
    trace = {"setup": kind.trace_setup(addresses)}
    try:
        fuzzer.observe(flows, fuzzer.confirm_timeout, trace=trace)
    except LabwardenError as err:
        return {f: f"(could not trace the router: {err})" for f in flows}
    finally:
        run_sync(lab.run({policy.router: NodeJob(setup=kind.untrace_setup())}))
    raw = (trace.get("answer").raw if trace.get("answer") else {}).get("trace") or {}
    told = stories(parse_events(raw.get("events", [])), keys)
    out = {}
    for flow in flows:
        fate, by = tell(told[flow], raw.get("ruleset", ""), config.read_text(), shown_path(config, topology))
        out[flow] = f"was {fate} {by}"
    return out


def describe(fuzzer: FlowFuzzer, failures: list[Failure], topology: str, router_config=None) -> str:
    """The failure text: openings first; for the first SHOWN, what the router's rules did
    with the flow (traced on one more send) and the replay command; the rest one line each."""
    failures = sorted(failures, key=lambda f: f.rank)
    shown, rest = failures[:SHOWN], failures[SHOWN:]
    told = explain(fuzzer, [f.flow for f in shown])
    policy = fuzzer.policy
    lines = []
    for f in shown:
        says = "allow" if f.expected.allowed else "deny"
        # the headline (pytest --tb=line shows it alone) names the rule that decided, or
        # for a flaky flow its two observations
        if f.flaky:
            lines.append(f"FLAKY: {f.flow.label(policy)}: {f.observed()}; policy says {says} "
                         f"({f.expected.reason}): expected {f.expected}")
            if f.flow in told:
                lines.append(f"  traced on one more send: it {told[f.flow]}")
        elif f.flow in told:
            lines.append(f"{f.flow.label(policy)} {told[f.flow]}; policy says {says} ({f.expected.reason})")
            lines.append(f"  expected {f.expected}, {f.observed()}")
        else:
            lines.append(f.message(policy))
        lines.append(f"  replay alone: {replay_command(f.flow, topology, router_config)}")
    if rest:
        lines.append(f"{len(rest)} more flow(s) failed:")
        lines += [f"  {f.message(policy)}" for f in rest]
    return "\n".join(lines)


def hunt(fuzzer: FlowFuzzer, strategy: st.SearchStrategy[Batch], settings, topology: str,
         router_config=None) -> None:
    """Let hypothesis draw every batch of its profile; a flow the policy does not admit is
    recorded, not raised, so that the search goes on (hypothesis would stop at the first,
    and a false alarm would hide an opening drawn later); then fail with all of them."""
    @settings
    @given(strategy)
    def check(batch: Batch):
        fuzzer.check(batch.flows)

    check()
    if fuzzer.failures:
        found = list(fuzzer.failures.values())
        flaky = sum(f.flaky for f in found)
        note = f" ({flaky} flaky: failed in a batch, not when re-sent alone)" if flaky else ""
        text = describe(fuzzer, found, topology, router_config)
        raise AssertionError(f"{text}\n{len(found)} flow(s) do not follow the policy{note}")
