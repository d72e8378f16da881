"""The live lab: the same suites against real hosts, reached over SSH (or any testinfra backend).

An inventory (labwarden.declared.inventory; annotated example:
topologies/homelab/live.example.yaml) maps every node of the topology to a testinfra host spec and may give the
real subnets, addresses and interface names; the policy is the topology's
own. `LiveLab` is a `Lab` (realise/lab.py), like the Compose lab, but:

- it never changes anything: no firewall, route, service or sysctl is touched
  (a setup job is refused), nothing is brought up or down; the only trace it
  leaves is the probe agent (one zipapp file), pushed into a temporary folder
  on each host at `up()` and removed at `down()`;
- every probe and raw packet must go to an address inside the inventory's
  `ranges` (the agent refuses the whole batch otherwise, before sending);
- it paces itself: each node starts at most `max_pps` probes and raw packets
  per second (one burst per second), so a nightly run cannot look like an attack;
- the agent runs as whoever the spec logs in as (`?sudo=true` for root).
  Without root it cannot sniff or send raw packets: it falls back to
  connect()-based probes, and the checks that need raw packets skip; `up()`
  says which nodes are in which mode.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import secrets
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import testinfra

from labwarden.errors import LabError, ProbeError
from labwarden.probe import NodeJob, NodeAnswer, Transport, run_jobs
from labwarden.declared.inventory import Inventory
from labwarden.probe.ship import agent_bytes
from labwarden.declared.topology import Topology
from labwarden.realise import private
from labwarden.realise.impair import Impairment
from labwarden.realise.lab import Lab

START_LEAD_S, START_TRIES, LATE_S = 1.0, 3, 0.02  # synchronised rounds: lead time, tries, tolerance
PUSH = ("import base64, os, sys, tempfile; d = tempfile.mkdtemp(prefix='labwarden-'); "
        "p = os.path.join(d, 'agent.pyz'); open(p, 'wb').write(base64.b64decode(sys.argv[1])); "
        "print(p)")  # the agent zipapp (labwarden.probe.ship), into a private temporary folder


class NeedsRoot(ProbeError):
    """A check needs raw packets (captures, crafted sends) on a host the agent has no root on."""


class LiveLab(Lab):
    """Real hosts, probed in place; read-only. Use as a context manager."""

    def __init__(self, topology: Topology, policy, inventory: Inventory, log=print):
        self.topology, self.policy, self.inventory, self.log = topology, policy, inventory, log
        self.project = f"live:{inventory.file.name}"
        self.impairment = Impairment([], reason="a live lab: its links are real, nothing is emulated")
        self.transports: dict[str, Transport] = {}
        self.privileged: dict[str, bool] = {}
        self.info: dict[str, dict] = {}
        self.timings: dict[str, float] = {}
        self._agents: dict[str, str] = {}
        self._control = f"{private.folder()}/ssh-{secrets.token_hex(4)}"
        self.lead = START_LEAD_S

    def router_firewall(self):
        return None  # the live router's rules are its own business: never read or changed

    def router_kind(self):
        return None

    def allowed_ranges(self, extra=()) -> list[str]:
        return [str(r) for r in self.inventory.ranges]  # no extras: live probes stay in the inventory

    def up(self) -> LiveLab:
        started = time.monotonic()
        try:
            blob = base64.b64encode(agent_bytes()).decode()
            for name, spec in self.inventory.hosts.items():
                self._connect(name, spec, blob)
            began = time.monotonic()
            answers = asyncio.run(self.run({n: NodeJob(info=True) for n in self.topology.nodes}))
            # synchronised rounds start this far ahead: room for every host's call to arrive
            self.lead = max(START_LEAD_S, 3 * (time.monotonic() - began))
            for name, answer in answers.items():
                self._check_node(name, answer.info or {})
        except BaseException:
            self.down()
            raise
        self.log(self.summary())
        self.timings["up_s"] = time.monotonic() - started
        return self

    def summary(self) -> str:
        """How this live lab probes: which nodes have root, the pace."""
        plain = [n for n, root in self.privileged.items() if not root]
        return (f"labwarden: live lab from {self.inventory.file.name}: {len(self.transports)} hosts; "
                + (f"no root on {', '.join(plain)}: connect()-based probes only there, "
                   "raw-packet checks skip" if plain else "raw-socket probes everywhere (root)")
                + f"; at most {self.inventory.max_pps} probes/s per node")

    def _connect(self, name: str, spec: str, blob: str) -> None:
        kwargs = {"ssh_config": self.inventory.ssh_config} if self.inventory.ssh_config else {}
        if spec.startswith("ssh://"):  # one connection per host, reused by every call (ControlMaster)
            kwargs["controlpath"] = f"{self._control}-{name}"
        host = testinfra.get_host(spec, **kwargs)
        shown = f"node {name} ({spec})"
        try:
            pushed = host.run("python3 -c %s %s", PUSH, blob)
        except Exception as err:  # testinfra raises plain exceptions for a host it cannot reach
            raise LabError(f"{shown}: cannot reach it: {err}") from None
        if pushed.rc != 0:
            raise LabError(f"{shown}: could not push the probe agent (needs python3 >= 3.11 there): "
                           f"{pushed.stderr.strip()[-500:]}")
        self._agents[name] = pushed.stdout.strip().splitlines()[-1]
        self.transports[name] = Transport(host, None, self._agents[name], self.near(name))
        self.privileged[name] = host.run("id -u").stdout.strip() == "0"

    def _check_node(self, name: str, info: dict) -> None:
        """The host really is the node: it holds the node's addresses; learn its interfaces."""
        held = {a.split("/")[0]: link for link in info.get("interfaces", []) for a in link.get("addrs", [])}
        node = self.topology.nodes[name]
        for seg, address in node.addresses.items():
            link = held.get(str(address))
            if link is None:
                raise LabError(f"node {name} ({self.inventory.hosts[name]}) does not hold {address} "
                               f"(its address on {seg}); it holds {', '.join(sorted(held)) or 'nothing'}: "
                               "fix the inventory's addresses")
            if node.interfaces[seg] != link["name"]:
                raise LabError(f"node {name}: {address} is on interface {link['name']}, not "
                               f"{node.interfaces[seg]}: set nodes.{name}.interfaces.{seg} in the inventory")
        self.info[name] = info

    def down(self) -> None:
        for name, path in list(self._agents.items()):
            try:
                self.transports[name].host.run("rm -rf %s", str(Path(path).parent))
            except Exception:  # an unreachable host keeps a file in its temp folder: nothing to undo
                pass
            self._agents.pop(name, None)
        for name in self.transports:  # end the shared SSH connections now, not 60 s later
            socket_path = Path(f"{self._control}-{name}")
            if socket_path.exists():
                subprocess.run(["ssh", "-o", f"ControlPath={socket_path}", "-O", "exit", name],
                               capture_output=True, timeout=10)

    def _enough_threads(self) -> None:
        """A thread per host: asyncio's default pool (cores + 4) would start some agents only
        after others ended, too late for their captures."""
        loop = asyncio.get_running_loop()
        if getattr(loop, "_labwarden_threads", 0) < len(self.transports):
            loop.set_default_executor(ThreadPoolExecutor(max_workers=len(self.transports) + 4,
                                                         thread_name_prefix="labwarden-live"))
            loop._labwarden_threads = len(self.transports)

    async def _together(self, jobs: dict[str, NodeJob], timeout: float) -> dict[str, NodeAnswer]:
        """One round. When some node captures while others send, every agent starts sending at
        one wall-clock time (hosts' clocks agree to ms under NTP) far enough ahead that all have
        their sniffers running; a round in which an agent was late is run again, with more lead."""
        if not any(job.capture_s for job in jobs.values()):
            return await run_jobs(self.transports, jobs, self.allowed_ranges(), timeout)
        lead = self.lead
        for _ in range(START_TRIES):
            start_at = time.time() + lead
            timed = {n: dataclasses.replace(job, start_at=start_at) for n, job in jobs.items()}
            answers = await run_jobs(self.transports, timed, self.allowed_ranges(), timeout)
            late = {n: a.raw.get("late_s", 0.0) for n, a in answers.items() if a.raw.get("late_s", 0.0) > LATE_S}
            if not late:
                return answers
            self.log(f"labwarden: agents started late ({', '.join(f'{n} {s:.2f} s' for n, s in late.items())}); "
                     f"again with {lead * 2:.1f} s lead")
            lead *= 2
        raise ProbeError(f"agents kept starting late ({late}): captures could miss what others sent, "
                         "so this round proves nothing (are the hosts' clocks in sync?)")

    def mac(self, node: str, segment: str) -> str:
        ifname = self.topology.nodes[node].interfaces[segment]
        for link in self.info.get(node, {}).get("interfaces", []):
            if link["name"] == ifname:
                return link["mac"]
        raise LabError(f"node {node} has no interface {ifname}")

    def exec(self, node: str, *argv: str):
        raise LabError("live mode runs nothing in the nodes but the probe agent")

    async def run(self, jobs: dict[str, NodeJob], timeout: float = 1.0, allow_extra=()) -> dict[str, NodeAnswer]:
        """Like `ComposeLab.run`, read-only and paced: rounds of at most max_pps packets per node, a second apart."""
        for name, job in jobs.items():
            if job.setup:
                raise ProbeError(f"live mode never changes a host: refused the setup of {name}")
        raw = sorted(n for n, job in jobs.items() if (job.capture_s or job.send) and not self.privileged.get(n, True))
        if raw:
            raise NeedsRoot(f"no root on {', '.join(raw)} (inventory {self.inventory.file.name}): "
                            "this check captures or sends raw packets there")
        self._enough_threads()
        pps = self.inventory.max_pps
        rounds: list[dict[str, NodeJob]] = []
        for name, job in jobs.items():
            sends = [("send", s) for s in job.send] + [("probe", p) for p in job.probes]
            chunks = [sends[i:i + pps] for i in range(0, len(sends), pps)] or [[]]
            for i, chunk in enumerate(chunks):
                while len(rounds) <= i:
                    rounds.append({})
                # every round captures its own answers; the rest goes with the first
                rest = {"info": False, "fetch": [], "trace": False} if i else {}
                rounds[i][name] = dataclasses.replace(job, probes=[p for k, p in chunk if k == "probe"],
                                                      send=[s for k, s in chunk if k == "send"], **rest)
        merged: dict[str, NodeAnswer] = {}
        for i, round_jobs in enumerate(rounds):
            began = time.monotonic()
            answers = await self._together(round_jobs, timeout)
            for name, answer in answers.items():
                if name not in merged:
                    merged[name] = answer
                else:
                    merged[name].observations += answer.observations
                    merged[name].frames += answer.frames
                    merged[name].lost += answer.lost
            if i + 1 < len(rounds):
                await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - began)))
        return merged
