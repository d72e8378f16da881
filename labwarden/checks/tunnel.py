"""Tunnels, judged from outside: the published page through the edge, reachable
there only, exposing one port and not the node, and what the edge does when
the client dies.

A tunnel (policy `tunnels:`) is a client node that publishes a local port
through an outbound-only connection to an edge node, which serves it on a
public port at its own addresses: `cloudflared tunnel --url`, here `ssh -R` (the
home lab) or PageKite (the airplane, whose edge routes by the Host a visitor sends:
the tunnel's `host`).
Each check is one or a few agent batches; the outcome is a value with an
`explain()`, and suites/tunnel asserts on it. The fault helpers act on the
client's container (Docker labs only) and always put it back. `start(lab)`
brings a lab up and waits for its tunnels: the plugin and the CLI start labs with it.
"""

import asyncio
import struct
import time
from dataclasses import dataclass
from ipaddress import IPv4Address

from labwarden.checks.surface import COMMON_UDP, Surface, scan
from labwarden.checks.fetch import content, fetch_for, parse_http, summary
from labwarden.checks.matrix import COMMON_TCP, Cell, observe
from labwarden.declared.policy import Policy, Service, Tunnel
from labwarden.probe import Fetch, Fetched, NodeJob
from labwarden.realise.lab import Lab

LOOPBACK = IPv4Address("127.0.0.1")
DOWN_WITHIN_S = {"killed": 5.0, "hung": 15.0}   # the edge must answer with an error by then
UP_WITHIN_S = 30.0                              # and serve the page again after the client is back
TUNNELS_WITHIN_S = 30.0                         # a new lab's tunnels are up (else logged, not fatal)
POLL_S = 0.25
READ_S = 5.0            # for the page: a GEO satellite hop costs ~0.6 s a round trip, and an
                        # ssh -R tunnel adds two (channel open, then the request)


def edge_address(policy: Policy, tunnel: Tunnel) -> IPv4Address:
    node = policy.topology.nodes[tunnel.edge]
    return next(iter(node.addresses.values()))


def visitors(policy: Policy, tunnel: Tunnel) -> list[str]:
    """Nodes of the edge's zone (the internet) that are neither the edge nor the client,
    those on the edge's own segment first."""
    zone, topology = policy.zone_of(tunnel.edge), policy.topology
    found = [n for n in topology.nodes
             if n not in (policy.router, tunnel.edge, tunnel.client) and policy.zone_of(n) == zone]
    near = set(topology.nodes[tunnel.edge].segments)
    return sorted(found, key=lambda n: (not near & set(topology.nodes[n].segments),
                                        len(topology.nodes[n].segments)))  # hosts before routers


def visitor_host(policy: Policy, tunnel: Tunnel) -> str:
    """What a visitor sends as Host: the tunnel's name, else the edge's address."""
    return tunnel.host or str(edge_address(policy, tunnel))


def tunnel_label(policy: Policy, tunnel: Tunnel, src: str) -> str:
    return f"{tunnel.name}: {policy.label(src)} -> {policy.label(tunnel.edge)} {tunnel.public}"


# -- the page through the edge --------------------------------------------------

@dataclass(frozen=True)
class PageCheck:
    """A visitor asks the edge for the page; the client asks its own local server."""
    tunnel: Tunnel
    src: str
    via: Fetched               # the visitor, through the edge
    local: Fetched             # the client, from 127.0.0.1
    page: bytes | None         # the file the policy names, if any
    state: str                 # up | tunnel down | no answer | wrong page | local server down
    why: str

    def explain(self, policy: Policy) -> str:
        return f"{tunnel_label(policy, self.tunnel, self.src)}: {self.state}: {self.why}"


def _down_reason(policy: Policy, tunnel: Tunnel, via: Fetched) -> str:
    where = f"{policy.label(tunnel.edge)} {via.fetch.dst}:{via.fetch.port}"
    if not via.connected and via.error == "refused":
        return f"{where} refused the connection (RST): no tunnel client is behind {tunnel.public}"
    if not via.connected and via.error == "timeout":
        return f"{where} did not answer at all (the edge itself is unreachable)"
    if not via.connected:
        return f"{where}: {summary(via)}"
    if not via.reply:
        if via.eof:
            return (f"{where} accepted the connection and closed it without a reply: nothing behind "
                    "the tunnel served the request")
        return (f"{where} accepted the connection and sent nothing in {via.fetch.read_s} s: the tunnel "
                "client does not answer (hung, or its link is cut)")
    http = parse_http(via)
    if http is not None and http.status == 503:
        return (f"{where} answered {summary(via)}: the edge has no tunnel client connected for "
                f"Host {visitor_host(policy, tunnel)}")
    return f"{where} answered {summary(via)}"


def judge_page(policy: Policy, tunnel: Tunnel, src: str, via: Fetched, local: Fetched) -> PageCheck:
    page = tunnel.page.read_bytes() if tunnel.page else None
    wanted = content(local)
    got = content(via)
    http = parse_http(via)
    if wanted is None:
        state, why = "local server down", (f"{policy.label(tunnel.client)}'s own server on "
                                           f"{tunnel.local} does not serve the page: {summary(local)}")
    elif got is None and http is None and (via.connected and not via.reply and not via.eof
                                           or not via.connected and via.error == "timeout"):
        state, why = "no answer", _down_reason(policy, tunnel, via)
    elif got is None and (http is None or http.status >= 500):
        # an error answer: refused, closed without a word, or a 5xx page from the edge
        state, why = "tunnel down", _down_reason(policy, tunnel, via)
    elif got != wanted:
        state, why = "wrong page", (f"got {summary(via)}; {policy.label(tunnel.client)} serves "
                                    f"{summary(local)} on {tunnel.local}: not byte for byte the same")
    elif page is not None and got != page:
        state, why = "wrong page", (f"the edge and {policy.label(tunnel.client)} serve {len(got)} bytes, "
                                    f"not the {len(page)} bytes of {tunnel.page.name}")
    else:
        state, why = "up", (f"{summary(via)} in {via.ms:.0f} ms, byte for byte what "
                            f"{policy.label(tunnel.client)} serves on {tunnel.local}"
                            + (f" ({tunnel.page.name})" if page is not None else ""))
    return PageCheck(tunnel, src, via, local, page, state, why)


async def check_pages(lab, policy: Policy, tunnel: Tunnel, sources: list[str] | None = None,
                      timeout: float = 1.0, read_s: float = READ_S) -> list[PageCheck]:
    """Every visitor asks the edge for the page while the client asks its own server."""
    sources = visitors(policy, tunnel) if sources is None else sources
    address = edge_address(policy, tunnel)
    host = visitor_host(policy, tunnel)
    jobs = {src: NodeJob(fetch=[fetch_for(address, tunnel.public.port, host=host, read_s=read_s)])
            for src in sources}
    local = fetch_for(LOOPBACK, tunnel.local.port, host=host, read_s=read_s)
    jobs.setdefault(tunnel.client, NodeJob()).fetch.append(local)
    answers = await lab.run(jobs, timeout=timeout)
    mine = answers[tunnel.client].fetched[-1]
    return [judge_page(policy, tunnel, src, answers[src].fetched[0], mine) for src in sources]


async def status(lab, policy: Policy, tunnel: Tunnel, src: str, timeout: float = 1.0,
                 read_s: float = READ_S) -> PageCheck:
    check, = await check_pages(lab, policy, tunnel, [src], timeout, read_s)
    return check


async def wait_up(lab: Lab, within_s: float | None = None) -> None:
    """Until each tunnel's page comes through its edge (a front-end such as pagekite's
    listens before its client has connected), at most `within_s` (TUNNELS_WITHIN_S). One
    that does not come up is logged, not fatal: suites/tunnel says what is wrong with it."""
    within_s = TUNNELS_WITHIN_S if within_s is None else within_s
    deadline = time.monotonic() + within_s
    policy = lab.policy
    pending = [t for t in policy.tunnels if visitors(policy, t)]
    while pending:
        checks = [await status(lab, policy, t, visitors(policy, t)[0]) for t in pending]
        pending = [t for t, check in zip(pending, checks) if check.state != "up"]
        if pending and time.monotonic() > deadline:
            lab.log(f"labwarden: lab {lab.project}: tunnels not up after {within_s:.0f} s: "
                    + "; ".join(f"{c.tunnel.name}: {c.state} ({c.why})" for c in checks if c.state != "up"))
            return
        if pending:
            await asyncio.sleep(0.2)


def start(lab: Lab) -> Lab:
    """`lab.up()`, then wait for its tunnels (`wait_up`): how the plugin and the CLI start a
    lab, so that no suite sees a tunnel still connecting. On failure the lab is taken down."""
    try:  # up() undoes itself when it fails; an interrupt just after it returned is caught here
        lab.up()
        asyncio.run(wait_up(lab))  # where up() runs its own coroutines: in this thread, so Ctrl-C stops it
    except BaseException:
        lab.down()
        raise
    return lab


# -- reachable only through the tunnel --------------------------------------------

def direct_flows(policy: Policy, tunnel: Tunnel) -> list:
    """Outside nodes to every address of the client (its local port, the usual ports,
    ping) and to the router's public address on the local and public ports."""
    client = policy.topology.nodes[tunnel.client]
    services = sorted({tunnel.local, tunnel.public, Service("icmp")} | {Service("tcp", p) for p in COMMON_TCP},
                      key=lambda s: (s.proto, s.port or 0))
    targets = list(client.addresses.values())
    if policy.public is not None:
        targets.append(policy.public)
    return [policy.flow(src, address, svc) for src in visitors(policy, tunnel) + [tunnel.edge]
            for address in targets for svc in services
            if not (address == policy.public and svc not in (tunnel.local, tunnel.public))]


async def direct_reach(lab, policy: Policy, tunnel: Tunnel, timeout: float = 1.0) -> list[Cell]:
    """The direct flows, probed: each must be what the policy says (closed to the tunnel)."""
    flows = direct_flows(policy, tunnel)
    observed = await observe(lab, flows, timeout)
    return [Cell(f, policy.expect(f), observed[f]) for f in flows]


def forwards_to(policy: Policy, tunnel: Tunnel) -> list[str]:
    """The policy's own forwards that would open the published service without the tunnel."""
    return [f"forward '{f.name}' ({f.public} -> {f.to} {f.target})" for f in policy.forwards
            if f.to == tunnel.client and f.target == tunnel.local]


@dataclass(frozen=True)
class Connection:
    """The tunnel's own connection, as the client's and the edge's TCP sockets show it."""
    client_side: list          # [(local, remote)]: the client's established connections to the edge
    edge_side: list            # [(local, remote)]: the edge's, on a port it listens on, from those
    client_listening: set      # ports the client listens on

    @property
    def outbound(self) -> bool:
        """The client opened it: from a port it does not listen on, to one the edge does."""
        return bool(self.client_side and self.edge_side) and not any(
            _port(mine) in self.client_listening for mine, _ in self.client_side)

    def explain(self, policy: Policy) -> str:
        ours = ", ".join(f"{mine} -> {far}" for mine, far in self.client_side) or "none"
        theirs = ", ".join(f"{far} -> {mine}" for mine, far in self.edge_side) or "none"
        seen = {far.rsplit(":", 1)[0] for _, far in self.edge_side}
        masked = " (the router's public address)" if str(policy.public) in seen else ""
        return f"the client's connections to the edge: {ours}; as the edge sees them: {theirs}{masked}"


def _port(endpoint: str) -> str:
    return endpoint.rsplit(":", 1)[1]


async def connection(lab, policy: Policy, tunnel: Tunnel) -> Connection:
    answers = await lab.run({tunnel.client: NodeJob(info=True), tunnel.edge: NodeJob(info=True)})
    edge_ips = {str(a) for a in policy.topology.nodes[tunnel.edge].addresses.values()}
    client_tcp, edge_tcp = answers[tunnel.client].info["tcp"], answers[tunnel.edge].info["tcp"]
    edge_listening = {_port(s["local"]) for s in edge_tcp if s["state"] == "LISTEN"}
    client_side = [(s["local"], s["remote"]) for s in client_tcp if s["state"] == "ESTABLISHED"
                   and s["remote"].rsplit(":", 1)[0] in edge_ips and _port(s["remote"]) in edge_listening]
    client_ports = {_port(mine) for mine, _ in client_side}
    edge_side = [(s["local"], s["remote"]) for s in edge_tcp if s["state"] == "ESTABLISHED"
                 and _port(s["local"]) in edge_listening and _port(s["remote"]) in client_ports]
    listening = {_port(s["local"]) for s in client_tcp if s["state"] == "LISTEN"}
    return Connection(client_side, edge_side, listening)


# -- one port, not the node -------------------------------------------------------

PROXY_PROBES = {
    "a SOCKS5 greeting": b"\x05\x01\x00",
    "a SOCKS4 CONNECT to 127.0.0.1:22": b"\x04\x01\x00\x16\x7f\x00\x00\x01labwarden\x00",
    "an HTTP CONNECT to 127.0.0.1:22": b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n",
}


def proxy_probes(tunnel: Tunnel) -> dict[str, bytes]:
    """PROXY_PROBES, and for a named tunnel a CONNECT to its name's ssh port: how an edge
    that routes by name (PageKite's raw kites, `pagekite.py ... AND ssh://NAME`) opens
    any other service its client publishes under that name."""
    probes = dict(PROXY_PROBES)
    if tunnel.host:
        target = f"{tunnel.host}:22"
        probes[f"an HTTP CONNECT to {target}"] = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
    return probes


def proxy_answer(name: str, reply: bytes) -> str | None:
    """How the reply to a proxy request shows a proxy, or None."""
    if name.startswith("a SOCKS5") and len(reply) >= 2 and reply[0] == 5 and reply[1] != 0xFF:
        return f"it answered {reply[:2].hex(' ')}: a SOCKS5 proxy"
    if name.startswith("a SOCKS4") and len(reply) >= 2 and reply[0] == 0 and reply[1] == 0x5A:
        return "it granted the CONNECT: a SOCKS4 proxy"
    if name.startswith("an HTTP CONNECT") and reply.startswith(b"HTTP/") and reply[9:12] == b"200":
        return "it answered 200 to CONNECT: an HTTP proxy"
    return None


def socks5_connect(address: IPv4Address, port: int) -> bytes:
    return b"\x05\x01\x00" + b"\x05\x01\x00\x01" + address.packed + struct.pack("!H", port)


@dataclass
class Exposure:
    """What the edge exposes: a scan of its address, and the public port asked as a proxy."""
    surface: Surface
    proxies: list              # [(probe name, how it showed a proxy)]
    through: list              # [(what was reached through the proxy, what answered)]

    def problems(self, policy: Policy, tunnel: Tunnel) -> list[str]:
        where = f"{policy.label(tunnel.edge)} {edge_address(policy, tunnel)} {tunnel.public}"
        # what is open and should not be, or should be and is not (closed or filtered
        # elsewhere exposes nothing: the edge's own firewall is its business)
        found = [self.surface.explain(policy, c) for c in self.surface.unexpected()
                 if c.observed.verdict == "open" or "open" in c.expected.verdicts]
        for name, how in self.proxies:
            found.append(f"tunnel '{tunnel.name}' exposes more than {policy.label(tunnel.client)} "
                         f"{tunnel.local}: {where} was sent {name} and {how}")
        for target, answer in self.through:
            found.append(f"through {where}, {policy.label(self.surface.src)} reached {target}: {answer}")
        return found


async def exposure(lab, policy: Policy, tunnel: Tunnel, timeout: float = 1.0,
                   tcp_ports=range(1, 65536)) -> Exposure:
    src = visitors(policy, tunnel)[0]
    address = edge_address(policy, tunnel)
    surface = await scan(lab, policy, src, address, tcp_ports=tcp_ports, udp_ports=COMMON_UDP,
                             timeout=timeout)
    probes = proxy_probes(tunnel)
    asks = [Fetch(address, tunnel.public.port, data, read_s=READ_S) for data in probes.values()]
    answers = await lab.run({src: NodeJob(fetch=asks)}, timeout=timeout)
    proxies = [(name, how) for name, got in zip(probes, answers[src].fetched)
               if (how := proxy_answer(name, got.reply))]
    through = []
    if any(name.startswith("a SOCKS5") for name, _ in proxies):
        targets = beyond(policy, tunnel)
        answers = await lab.run({src: NodeJob(fetch=[
            Fetch(address, tunnel.public.port, socks5_connect(a, p), read_s=READ_S)
            for _, a, p in targets])}, timeout=timeout)
        for (what, _, _), got in zip(targets, answers[src].fetched):
            reply = got.reply[2:]  # past the greeting's answer
            if len(reply) >= 2 and reply[1] == 0:
                rest = reply[10:].split(b"\n", 1)[0].strip()
                through.append((what, "the proxy connected" + (f", and it said {rest[:60]!r}" if rest else "")))
    return Exposure(surface, proxies, through)


def beyond(policy: Policy, tunnel: Tunnel) -> list[tuple[str, IPv4Address, int]]:
    """What a proxy on the client would give away: its other ports on its loopback, and a
    service of each neighbour on its segments (the router's too)."""
    topology = policy.topology
    client = topology.nodes[tunnel.client]
    own = sorted(({s.port for s in policy.listening(tunnel.client) if s.proto == "tcp"} | {22})
                 - {tunnel.local.port})
    found = [(f"{policy.label(tunnel.client)}'s own tcp/{p} at 127.0.0.1", LOOPBACK, p) for p in own]
    for name, node in topology.nodes.items():
        shared = [s for s in node.segments if s in client.segments]
        tcp = sorted(s.port for s in policy.listening(name) if s.proto == "tcp")
        if name != tunnel.client and shared and tcp:
            address = node.address_on(shared[0])
            found.append((f"{policy.label(name)} tcp/{tcp[0]} at {address}, on "
                          f"{policy.label(tunnel.client)}'s network", address, tcp[0]))
    return found


# -- faults: the client dies, and comes back ----------------------------------------

def client_containers(lab, tunnel: Tunnel) -> list:
    """The containers that share the client node's network namespace (its tunnel client)."""
    node = lab.containers[tunnel.client]
    mode = f"container:{node.id}"
    return [c for name, c in lab.containers.items()
            if name != tunnel.client and c.attrs["HostConfig"].get("NetworkMode") == mode]


@dataclass(frozen=True)
class Fault:
    """What the edge did after the client was `kind` (killed | hung), and after it came back."""
    kind: str
    down_after_s: float | None       # when a visitor first got an error, None: never within the bound
    down: PageCheck | None           # that error
    up_after_s: float | None         # when the page was back after the client was restored
    up: PageCheck | None

    def explain(self, policy: Policy) -> str:
        bound = DOWN_WITHIN_S[self.kind]
        if self.down_after_s is None:
            last = f" ({self.down.state}: {self.down.why})" if self.down else ""
            first = (f"the edge did not answer with an error within {bound:.0f} s after the client "
                     f"was {self.kind}{last}")
        else:
            first = (f"client {self.kind} -> {self.down.state} after {self.down_after_s:.1f} s "
                     f"({self.down.why})")
        if self.up_after_s is None:
            second = f"not back {UP_WITHIN_S:.0f} s after the client was restored" + \
                (f" ({self.up.state}: {self.up.why})" if self.up else "")
        else:
            second = f"back up {self.up_after_s:.1f} s after the client was restored"
        return f"{first}; {second}"


async def _poll(lab, policy, tunnel, src, want: str, within: float, timeout: float):
    """Ask the edge every POLL_S until the page's state is `want` (or `within` passes)."""
    started = time.monotonic()
    last = None
    while time.monotonic() - started < within:
        last = await status(lab, policy, tunnel, src, timeout)
        if last.state == want:
            return time.monotonic() - started, last
        await asyncio.sleep(POLL_S)
    return None, last


async def fault(lab, policy: Policy, tunnel: Tunnel, kind: str, timeout: float = 1.0) -> Fault:
    """Kill (SIGKILL) or freeze (docker pause) the tunnel client, watch the edge from a
    visitor until it answers with an error, then restore the client and watch until the
    page is back. The client is restored whatever happens."""
    containers = client_containers(lab, tunnel)
    if not containers:
        raise LookupError(f"no container shares {tunnel.client}'s network namespace: give its tunnel "
                          f"client a service of its own (network_mode: service:{tunnel.client})")
    src = visitors(policy, tunnel)[0]
    try:
        for c in containers:
            c.kill() if kind == "killed" else c.pause()
        down_s, down = await _poll(lab, policy, tunnel, src, "tunnel down", DOWN_WITHIN_S[kind], timeout)
    finally:
        for c in containers:
            c.start() if kind == "killed" else c.unpause()
    up_s, up = await _poll(lab, policy, tunnel, src, "up", UP_WITHIN_S, timeout)
    return Fault(kind, down_s, down, up_s, up)
