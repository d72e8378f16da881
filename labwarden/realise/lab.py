"""Lab: what every realised lab offers the checks, whoever realised it.

Two classes implement it: `ComposeLab` (realise/compose.py: the topology started
with Docker Compose, plumbed and impaired by labwarden) and `LiveLab`
(realise/live.py: real hosts, probed in place, read-only). Checks, suites, the
plugin and the CLI hold a `Lab` and use only what is declared here, so nothing
asks a lab which kind it is or probes it for attributes: what one kind of lab
does not have is still there, empty (a live lab's `impairment` has no links,
its `router_firewall()` is None, its `exec` refuses).

What only a Compose lab has (its containers, `prober_exec`, `router_on_loan`)
stays on `ComposeLab`, for the code that only runs on one (impairment, the rule
fuzzer, the tunnel fault checks).
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import subprocess
from collections.abc import Callable
from pathlib import Path

from labwarden.declared.policy import Policy
from labwarden.declared.topology import Topology
from labwarden.probe import NodeAnswer, NodeJob, Transport
from labwarden.routers import RouterKind
from labwarden.realise.impair import Impairment


class Lab(abc.ABC):
    """A lab: started with `up()` (or as a context manager), probed with `run()`, removed
    with `down()`."""

    topology: Topology
    policy: Policy
    project: str                     # the lab's name in messages and reports
    transports: dict[str, Transport]  # node -> where its probe agent runs
    timings: dict[str, float]        # seconds spent bringing it up ("up_s", ...)
    impairment: Impairment           # the emulated links; no links when nothing is emulated
    log: Callable[[str], None]
    keep: bool = False               # leave it running when the `with` block ends

    # ---- lifecycle -------------------------------------------------------
    @abc.abstractmethod
    def up(self) -> Lab:
        """Start (or attach to) the lab; on failure, undo what was started and raise."""

    @abc.abstractmethod
    def down(self) -> None:
        """Remove what `up()` started; safe to call twice or after a failed `up()`."""

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(self, *exc) -> None:
        if not self.keep:
            self.down()

    # ---- the router ------------------------------------------------------
    @abc.abstractmethod
    def router_firewall(self) -> Path | None:
        """The router's firewall config when labwarden loaded it (the rules are known, so a
        trace can name the deciding rule); None when the router's rules are not ours."""

    @abc.abstractmethod
    def router_kind(self) -> RouterKind | None:
        """How the router loads that config (nftables, iptables: labwarden.routers): what
        reloads it, names its tool's version, and says whether a trace can name the
        deciding rule; None when the router's rules are not ours."""

    # ---- probing ---------------------------------------------------------
    @abc.abstractmethod
    def allowed_ranges(self, extra=()) -> list[str]:
        """The subnets probes may go to; the agent refuses a batch that leaves them."""

    @abc.abstractmethod
    async def run(self, jobs: dict[str, NodeJob], timeout: float = 1.0,
                  allow_extra=()) -> dict[str, NodeAnswer]:
        """One batch: every node's job at once, each from its own place in the network."""

    async def run_rounds(self, rounds: list[dict[str, NodeJob]],
                         timeout: float = 1.0) -> list[dict[str, NodeAnswer]]:
        """Batches one after the other, each answered before the next is sent."""
        return [await self.run(jobs, timeout) for jobs in rounds]

    @abc.abstractmethod
    def mac(self, node: str, segment: str) -> str:
        """The MAC address of the node's interface on that segment."""

    @abc.abstractmethod
    def exec(self, node: str, *argv: str) -> subprocess.CompletedProcess:
        """Run a command with the node's own tools (a LabError where the lab allows none)."""

    def near(self, name: str) -> tuple:
        """Every address (IPv4 and IPv6) of the node's next-hop routers (IPv4's and IPv6's): a
        RST from one of them is genuine."""
        node = self.topology.nodes[name]
        hops = [node.gateway, *node.routes.values(), node.gateway6, *node.routes6.values()]
        routers = {self.topology.node_at(hop) for hop in hops if hop is not None} - {None}
        return tuple(sorted({a for r in routers for a in r.all_addresses()}, key=lambda a: (a.version, a)))


def run_sync(coro):
    """Run a lab's coroutine to the end from sync code, whatever loop the caller has."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
