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
- it paces itself: at most `max_pps` packets per host in any one second, for the
  whole run (one bucket per host, labwarden.probe.pace, shared by every call, check
  and suite; latency samples and traceroutes count), so a nightly run cannot look
  like an attack; `peak_pps()` is the peak it reached (in the report's header);
- hosts are reached as labwarden.realise.ssh says: known host keys, bounded
  commands, no password on a command line, specs shown masked;
- the agent runs as whoever the spec logs in as (`?sudo=true`: only the agent
  runs as root, as `sudo -n python3 AGENT REQUEST`).
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

from labwarden.errors import LabError, ProbeError
from labwarden.probe import NodeJob, NodeAnswer, Transport, encode, run_jobs
from labwarden.declared.inventory import Inventory
from labwarden.probe.pace import Pace
from labwarden.probe.ship import agent_bytes
from labwarden.declared.topology import Topology
from labwarden.realise import private
from labwarden.realise.impair import Impairment
from labwarden.realise.lab import Lab
from labwarden.realise.ssh import connect

START_LEAD_S, START_TRIES, LATE_S = 1.0, 3, 0.02  # synchronised rounds: lead time, tries, tolerance
MERGED_ROWS = ("latency", "traceroute")  # the agent's per-item answers, when a job went in several rounds
SHORT_S = 60  # pushing, removing the agent, asking who we are
PUSH = ("import base64, os, sys, tempfile; d = tempfile.mkdtemp(prefix='labwarden-'); "
        "p = os.path.join(d, 'agent.pyz'); open(p, 'wb').write(base64.b64decode(sys.stdin.buffer.read())); "
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
        self.pace = Pace(inventory.max_pps)  # one bucket per host, for the whole run

    def peak_pps(self) -> int:
        """The most packets any one host was allowed to send within one second."""
        return self.pace.peak()

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
                + f"; at most {self.inventory.max_pps} packets per host in any second")

    def _connect(self, name: str, spec: str, blob: str) -> None:
        shown = f"node {name} ({self.inventory.shown(name)})"
        live = connect(spec, name not in self.inventory.unchecked_host_keys, self.inventory.ssh_config,
                       f"{self._control}-{name}")  # one ssh connection per host, reused (ControlMaster)
        try:
            pushed = live.host.run("python3 -c %s", PUSH, timeout=SHORT_S, stdin=blob.encode())
        except Exception as err:  # testinfra raises plain exceptions for a host it cannot reach
            raise LabError(f"{shown}: cannot reach it: {err}") from None
        if pushed.rc != 0:
            raise LabError(f"{shown}: could not push the probe agent (needs python3 >= 3.11 there): "
                           f"{pushed.stderr.strip()[-500:]}")
        self._agents[name] = pushed.stdout.strip().splitlines()[-1]
        self.transports[name] = Transport(live.host, None, self._agents[name], self.near(name), sudo=live.sudo)
        if live.sudo:  # the agent alone runs as root: try it once, with nothing to do
            tried = live.host.run("sudo -n python3 %s -", self._agents[name], timeout=SHORT_S,
                                  stdin=encode({"nodes": {}}).encode())
            if tried.rc != 0:
                raise LabError(f"{shown}: ?sudo=true, but sudo refused to run the agent "
                               f"({tried.stderr.strip()[-300:]}): allow it in sudoers (README, "
                               "\"The live lab\"), or drop ?sudo=true to probe without root")
        self.privileged[name] = live.sudo or live.host.run("id -u", timeout=SHORT_S).stdout.strip() == "0"

    def _check_node(self, name: str, info: dict) -> None:
        """The host really is the node: it holds the node's addresses; learn its interfaces."""
        held = {a.split("/")[0]: link for link in info.get("interfaces", []) for a in link.get("addrs", [])}
        node = self.topology.nodes[name]
        for seg, address in node.addresses.items():
            link = held.get(str(address))
            if link is None:
                raise LabError(f"node {name} ({self.inventory.shown(name)}) does not hold {address} "
                               f"(its address on {seg}); it holds {', '.join(sorted(held)) or 'nothing'}: "
                               "fix the inventory's addresses")
            if node.interfaces[seg] != link["name"]:
                raise LabError(f"node {name}: {address} is on interface {link['name']}, not "
                               f"{node.interfaces[seg]}: set nodes.{name}.interfaces.{seg} in the inventory")
        self.info[name] = info

    def down(self) -> None:
        for name, path in list(self._agents.items()):
            try:
                self.transports[name].host.run("rm -rf %s", str(Path(path).parent), timeout=SHORT_S)
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
            return await self._paced(jobs, timeout)
        lead = self.lead
        for _ in range(START_TRIES):
            start_at = time.time() + lead
            timed = {n: dataclasses.replace(job, start_at=start_at) for n, job in jobs.items()}
            answers = await self._paced(timed, timeout)
            late = {n: a.raw.get("late_s", 0.0) for n, a in answers.items() if a.raw.get("late_s", 0.0) > LATE_S}
            if not late:
                return answers
            self.log(f"labwarden: agents started late ({', '.join(f'{n} {s:.2f} s' for n, s in late.items())}); "
                     f"again with {lead * 2:.1f} s lead")
            lead *= 2
        raise ProbeError(f"agents kept starting late ({late}): captures could miss what others sent, "
                         "so this round proves nothing (are the hosts' clocks in sync?)")

    async def _paced(self, jobs: dict[str, NodeJob], timeout: float) -> dict[str, NodeAnswer]:
        """One agent call per host, once every host's bucket holds its packets (labwarden.probe.pace)."""
        need: dict[str, int] = {}
        for name, job in jobs.items():
            need[self.inventory.hosts[name]] = need.get(self.inventory.hosts[name], 0) + job.cost()
        ticket = await self.pace.take(need)
        try:
            return await run_jobs(self.transports, jobs, self.allowed_ranges(), timeout)
        finally:
            self.pace.give_back(ticket)

    def mac(self, node: str, segment: str) -> str:
        ifname = self.topology.nodes[node].interfaces[segment]
        for link in self.info.get(node, {}).get("interfaces", []):
            if link["name"] == ifname:
                return link["mac"]
        raise LabError(f"node {node} has no interface {ifname}")

    def exec(self, node: str, *argv: str):
        raise LabError("live mode runs nothing in the nodes but the probe agent")

    async def run(self, jobs: dict[str, NodeJob], timeout: float = 1.0, allow_extra=()) -> dict[str, NodeAnswer]:
        """Like `ComposeLab.run`, read-only and paced: each node's packets in rounds of at most
        max_pps, every round waiting for its hosts' buckets (`_paced`)."""
        for name, job in jobs.items():
            if job.setup:
                raise ProbeError(f"live mode never changes a host: refused the setup of {name}")
        raw = sorted(n for n, job in jobs.items() if (job.capture_s or job.send) and not self.privileged.get(n, True))
        if raw:
            raise NeedsRoot(f"no root on {', '.join(raw)} (inventory {self.inventory.file.name}): "
                            "this check captures or sends raw packets there")
        self._enough_threads()
        rounds: list[dict[str, NodeJob]] = []
        for name, job in jobs.items():
            for i, chunk in enumerate(self._chunks(job)):
                while len(rounds) <= i:
                    rounds.append({})
                # every round captures its own answers; the rest goes with the first
                rest = {"info": False, "fetch": [], "trace": False} if i else {}
                rounds[i][name] = dataclasses.replace(
                    job, **{k: [item for kind, item in chunk if kind == k] for k in job.SPLIT}, **rest)
        merged: dict[str, NodeAnswer] = {}
        for round_jobs in rounds:
            answers = await self._together(round_jobs, timeout)
            for name, answer in answers.items():
                if name not in merged:
                    merged[name] = answer
                    continue
                merged[name].observations += answer.observations
                merged[name].frames += answer.frames
                merged[name].lost += answer.lost
                for key in MERGED_ROWS:
                    merged[name].raw.setdefault(key, []).extend(answer.raw.get(key, []))
        return merged

    def _chunks(self, job: NodeJob) -> list[list[tuple[str, object]]]:
        """The job's items (job.SPLIT, in order) in chunks of at most max_pps packets; an item
        bigger than that (a latency spec of many samples) alone in its chunk."""
        chunks: list[list] = [[]]
        room = self.inventory.max_pps - len(job.fetch)   # the fetches go with the first chunk
        for kind in job.SPLIT:
            for item in getattr(job, kind):
                cost = job.packets(kind, item)
                if cost > room and chunks[-1]:
                    chunks.append([])
                    room = self.inventory.max_pps
                chunks[-1].append((kind, item))
                room -= cost
        return chunks
