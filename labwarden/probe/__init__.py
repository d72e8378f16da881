"""The engine side of probing: batches for the agent, and what came back.

The agent (labwarden/agent/, standard library only, shipped as one zipapp: see
`ship`) is the program that runs in the nodes' network namespaces. This module
encodes a request for it, sends each transport (a pytest-testinfra host) its
share, all transports at once (each call within a bound derived from its batch: `bound`),
and turns the answers into `Observation` values.

A transport is where the agent runs: in the Docker lab one prober container
enters every node's namespace, so one call carries all nodes; in a live lab
each node is its own SSH host.
"""

import asyncio
import base64
import json
import zlib
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address

from labwarden.errors import CaptureIncomplete, ProbeError
from labwarden.probe.bound import agent_bound, run_bounded

DOCUMENTATION_RANGES = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")


@dataclass(frozen=True)
class Probe:
    proto: str                 # tcp | udp | icmp
    dst: IPv4Address | IPv6Address
    port: int | None = None
    payload: bytes | None = None

    def request(self, probe_id: int) -> dict:
        item = {"id": probe_id, "proto": self.proto, "dst": str(self.dst)}
        if self.port is not None:
            item["port"] = self.port
        if self.payload is not None:
            item["payload"] = self.payload.hex()
        return item


@dataclass(frozen=True)
class Observation:
    """What one probe saw: the verdict, who answered and how."""
    verdict: str               # open | closed | rejected | filtered | error
    by: IPv4Address | IPv6Address | None
    detail: str
    ttl: int | None = None
    rtt_ms: float | None = None

    def explain(self) -> str:
        return f"{self.verdict} ({self.detail})"


@dataclass(frozen=True)
class Fetch:
    """One short TCP exchange: connect, send `send`, read what comes back (a page, a banner)."""
    dst: IPv4Address | IPv6Address
    port: int
    send: bytes = b""
    tls: bool = False
    read_s: float | None = None   # default: the batch's timeout
    max: int = 65536

    def request(self, fetch_id: int) -> dict:
        item = {"id": fetch_id, "dst": str(self.dst), "port": self.port, "tls": self.tls, "max": self.max}
        if self.send:
            item["send"] = self.send.hex()
        if self.read_s is not None:
            item["read_s"] = self.read_s
        return item


@dataclass(frozen=True)
class Fetched:
    """What one fetch got: connected or why not, and the bytes the peer sent."""
    fetch: Fetch
    sport: int | None
    connected: bool
    error: str | None          # None | refused | timeout | unreachable | reset | other text
    eof: bool                  # the peer closed the connection
    reply: bytes
    connect_ms: float | None
    ms: float | None

    def explain(self) -> str:
        where = f"{self.fetch.dst}:{self.fetch.port}"
        if not self.connected:
            why = {"refused": "connection refused (RST)", "timeout": "no answer to the SYN",
                   "unreachable": "unreachable (ICMP error or no route)"}.get(self.error, self.error)
            return f"could not connect to {where}: {why}"
        got = f"{len(self.reply)} bytes" + (f" ({self.reply[:60]!r})" if self.reply else "")
        end = "then the peer closed" if self.eof else f"then {self.error or 'nothing more'}"
        return f"connected to {where} in {self.connect_ms} ms, got {got}, {end}"


@dataclass
class NodeJob:
    """Everything one node does in one agent request."""
    probes: list[Probe] = field(default_factory=list)
    setup: dict | None = None
    capture_s: float | None = None
    send: list[dict] = field(default_factory=list)
    info: bool = False
    fetch: list[Fetch] = field(default_factory=list)
    trace: bool = False        # run `nft monitor trace` in the node for the window
    start_at: float | None = None  # wall-clock time to start sending at (agents on several hosts)

    SPLIT = ("send", "probes")  # the lists a paced (live) lab may spread over several calls, in order

    def packets(self, kind: str, item) -> int:
        """How many packets one item of the list `kind` sends (what a live host's pace counts)."""
        return 1

    def cost(self) -> int:
        """The packets this job sends: its SPLIT lists' and its fetches' (a connection each)."""
        return len(self.fetch) + sum(self.packets(k, item) for k in self.SPLIT for item in getattr(self, k))

    def request(self, netns: str | None) -> dict:
        item = {"netns": netns, "probes": [p.request(i) for i, p in enumerate(self.probes)]}
        if self.setup:
            item["setup"] = self.setup
        if self.capture_s:
            item["capture"] = {"seconds": self.capture_s}
        if self.send:
            item["send"] = self.send
        if self.info:
            item["info"] = True
        if self.fetch:
            item["fetch"] = [f.request(i) for i, f in enumerate(self.fetch)]
        if self.trace:
            item["trace"] = True
        if self.start_at is not None:
            item["start_at"] = self.start_at
        return item


@dataclass
class NodeAnswer:
    observations: list[Observation]
    frames: list[dict]         # the capture as the agent sent it: read it through `captured`
    info: dict | None
    raw: dict
    fetched: list[Fetched] = field(default_factory=list)
    node: str = "?"
    lost: list[str] = field(default_factory=list)  # why the capture is not whole

    @property
    def captured(self) -> list[dict]:
        """The frames the node captured; an error when some were lost, read by every check of a
        capture, so "nothing arrived" can never pass on a capture that lost frames."""
        if self.lost:
            raise CaptureIncomplete(f"node {self.node}: its capture is incomplete ({'; '.join(self.lost)}), "
                                    "so what it did not see proves nothing")
        return self.frames


@dataclass(frozen=True)
class Transport:
    """Where a node's agent runs: a testinfra host, and the namespace to enter there."""
    host: object               # testinfra.host.Host
    netns: str | None          # /proc/PID/ns/net, or None to probe from the host itself
    agent_path: str            # the agent's path on that host
    near: tuple = ()           # addresses of the node's next-hop routers: 0 hops away, even off-link
    container: str | None = None    # the full id of the container netns belongs to
    pid_start: int | None = None    # when netns's process started, once the lab is plumbed
    sudo: bool = False         # run the agent as `sudo -n python3 AGENT -`, the request on stdin (a live host's ?sudo=true)

    def namespace(self) -> dict:
        """How the agent enters the node: the path, and what it checks before every entry
        (the pid is still the container's process plumbed: agent/netns.py)."""
        return {k: v for k, v in (("netns", self.netns), ("container", self.container),
                                  ("pid_start", self.pid_start)) if v is not None}


def encode(request: dict) -> str:
    """The request as the agent reads it (on its stdin: `python3 agent.pyz -`)."""
    return base64.b64encode(zlib.compress(json.dumps(request).encode())).decode()


def _observation(item: dict) -> Observation:
    by = item.get("by")
    return Observation(item["verdict"], ip_address(by) if by else None,
                       item.get("detail", ""), item.get("ttl"), item.get("rtt_ms"))


def _call_agent(transport: Transport, request: dict) -> dict:
    parts = request["rounds"] if "rounds" in request else [request]
    nodes = sorted({n for part in parts for n in part.get("nodes", {})})
    where = f"{transport.host.backend.get_pytest_id()} (node{'s' if len(nodes) != 1 else ''} {', '.join(nodes)})"
    command = "sudo -n python3 %s -" if transport.sudo else "python3 %s -"
    result = run_bounded(transport.host, agent_bound(request), where, command,
                         transport.agent_path, stdin=encode(request).encode())
    if result.rc != 0:
        raise ProbeError(f"the probe agent failed on {where} "
                         f"(exit {result.rc}): {result.stderr.strip()[-2000:]}")
    try:
        answer = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise ProbeError(f"the probe agent printed no JSON: {result.stdout[-500:]!r} "
                         f"{result.stderr[-1500:]!r}") from None
    for part in [answer, *answer.get("rounds", [])]:
        if part.get("error"):
            raise ProbeError(f"the probe agent refused the batch: {part['error']}")
    return answer


def _node_requests(transports: dict[str, Transport], jobs: dict[str, NodeJob]) -> dict:
    """{id(host): (transport, {node: request})}: one agent call per transport host."""
    groups: dict[int, tuple[Transport, dict]] = {}
    for node, job in jobs.items():
        transport = transports[node]
        request = {**job.request(transport.netns), **transport.namespace()}
        if transport.near:
            request["near"] = [str(a) for a in transport.near]
        groups.setdefault(id(transport.host), (transport, {}))[1][node] = request
    return groups


def capture_losses(raw: dict) -> list[str]:
    """Why a node's capture is not whole: the agent's frame cap, the kernel's drops."""
    if "captured" not in raw:
        return []
    lost = []
    if raw.get("capture_truncated"):
        lost.append(f"{raw['capture_truncated']} frame(s) beyond the {len(raw['captured'])} the agent keeps "
                    "(MAX_FRAMES) were not kept: capture for less time, or send fewer packets at once")
    if raw.get("sniffer_drops"):
        lost.append(f"the kernel dropped {raw['sniffer_drops']} frame(s) for the sniffer (the machine "
                    "is overloaded): run again on a less loaded machine")
    return lost


def _node_answers(jobs: dict[str, NodeJob], merged: dict) -> dict[str, NodeAnswer]:
    out = {}
    for node in jobs:
        raw = merged.get(node) or {"error": "the agent returned nothing for this node"}
        if raw.get("error"):
            raise ProbeError(f"node {node}: {raw['error']}")
        results = sorted(raw.get("results", []), key=lambda r: r["id"])
        out[node] = NodeAnswer([_observation(r) for r in results], raw.get("captured", []),
                               raw.get("info"), raw, node=node, lost=capture_losses(raw))
        out[node].fetched = [Fetched(f, r["sport"], r["connected"], r["error"], r["eof"],
                                     bytes.fromhex(r["reply"]), r["connect_ms"], r["ms"])
                             for f, r in zip(jobs[node].fetch, sorted(raw.get("fetched", []), key=lambda r: r["id"]))]
    return out


async def run_jobs(transports: dict[str, Transport], jobs: dict[str, NodeJob],
                   allowed: list[str], timeout: float = 1.0) -> dict[str, NodeAnswer]:
    """Run every node's job at once: one agent call per transport host, all concurrent."""
    answers = await asyncio.gather(*(
        asyncio.to_thread(_call_agent, transport, {"timeout": timeout, "allowed": allowed, "nodes": nodes})
        for transport, nodes in _node_requests(transports, jobs).values()))
    return _node_answers(jobs, {node: raw for answer in answers for node, raw in answer["nodes"].items()})


async def run_rounds(transports: dict[str, Transport], rounds: list[dict[str, NodeJob]],
                     allowed: list[str], timeout: float = 1.0) -> list[dict[str, NodeAnswer]]:
    """Batches one after the other in one agent call (all their nodes on one host)."""
    grouped = [_node_requests(transports, jobs) for jobs in rounds]
    hosts = {h: transport for groups in grouped for h, (transport, _) in groups.items()}
    if len(hosts) > 1:
        raise ProbeError("rounds need every node on one agent host (an emulated lab's prober)")
    if not hosts:
        return [{} for _ in rounds]
    (host, transport), = hosts.items()
    request = {"timeout": timeout, "allowed": allowed,
               "rounds": [{"nodes": groups[host][1] if groups else {}} for groups in grouped]}
    answer = await asyncio.to_thread(_call_agent, transport, request)
    return [_node_answers(jobs, part["nodes"]) for jobs, part in zip(rounds, answer["rounds"])]
