"""The probe agent against a real routed lab: client -> router -> server, one prober.

    client 198.18.101.10 --(lab1)-- router .1 / .1 --(lab2)-- server 198.18.102.10 (http:80, dns:53)
    tv     198.18.101.20 (discovery) -'

The router's nftables make every verdict observable from the client:

    tcp/80 open, tcp/8080 closed (allowed, nothing listens), tcp/81 rejected by ICMP,
    tcp/82 rejected by a forged RST, tcp/84 filtered; udp/53 open, udp/9999 closed,
    udp/54 and udp/55 rejected, udp/56 filtered; ping client->server open, server->client filtered.

No mocks: the agent runs in a prober container that enters each node's namespace.
"""

import json
import secrets
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

PROBE_DIR = Path(__file__).resolve().parents[2] / "labwarden" / "agent"
sys.path.insert(0, str(PROBE_DIR))
from agent import encode_request  # noqa: E402  (the agent is a standalone script)

from labwarden.probe.ship import IN_PROBER, agent_zipapp  # noqa: E402
from labwarden.realise.image import ensure_image  # noqa: E402

ALLOWED = ["198.18.0.0/15", "203.0.113.0/24", "198.51.100.0/24", "192.0.2.0/24"]
CLIENT, SERVER, TV = "198.18.101.10", "198.18.102.10", "198.18.101.20"
ROUTER_CLIENT_SIDE, ROUTER_SERVER_SIDE = "198.18.101.1", "198.18.102.1"
TIMEOUT = 1.0

ROUTER_RULES = """flush ruleset
table inet lwtest {
  chain forward {
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    ip saddr 198.18.101.0/24 tcp dport { 80, 8080 } accept
    ip saddr 198.18.101.0/24 tcp dport 81 reject with icmp type admin-prohibited
    ip saddr 198.18.101.0/24 tcp dport 82 reject with tcp reset
    ip saddr 198.18.101.0/24 udp dport { 53, 9999 } accept
    ip saddr 198.18.101.0/24 udp dport 54 reject with icmp type host-prohibited
    ip saddr 198.18.101.0/24 udp dport 55 reject with icmp type port-unreachable
    ip saddr 198.18.101.0/24 icmp type echo-request accept
  }
}
"""
# A lab router must answer every rejected probe: the kernel's default ICMP rate limits
# (per destination and global) would turn a batch of rejections into "filtered".
NO_ICMP_LIMITS = {"net.ipv4.icmp_ratelimit": "0", "net.ipv4.icmp_msgs_per_sec": "1000000",
                  "net.ipv4.icmp_msgs_burst": "1000000"}
NO_ICMP_LIMITS_FLAGS = [arg for key, value in NO_ICMP_LIMITS.items() for arg in ("--sysctl", f"{key}={value}")]


def docker(*args: str, check: bool = True) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


class Lab:
    def __init__(self, prefix: str):
        self.prefix = prefix
        self.prober = f"{prefix}-prober"
        self.containers: list[str] = []
        self.networks: list[str] = []
        self.pids: dict[str, int] = {}
        self.ids: dict[str, str] = {}
        self.macs: dict[str, str] = {}

    def network(self, name: str, subnet: str) -> str:
        full = f"{self.prefix}-{name}"
        docker("network", "create", "--driver", "bridge", "--subnet", f"{subnet}.0/24",
               "--gateway", f"{subnet}.254",
               "-o", "com.docker.network.bridge.inhibit_ipv4=true",
               "-o", "com.docker.network.bridge.enable_ip_masquerade=false", full)
        self.networks.append(full)
        return full

    def node(self, name: str, *args: str) -> str:
        full = f"{self.prefix}-{name}"
        self.containers.append(full)
        docker("run", "-d", "--name", full, "--hostname", name, *args)
        return full

    def up(self):
        image = ensure_image(lambda message: None)  # the lab image, built if missing
        lab1, lab2 = self.network("lab1", "198.18.101"), self.network("lab2", "198.18.102")
        router = self.node("router", "--network", lab1, "--ip", ROUTER_CLIENT_SIDE,
                           "--sysctl", "net.ipv4.ip_forward=1", *NO_ICMP_LIMITS_FLAGS, image)
        docker("network", "connect", "--ip", ROUTER_SERVER_SIDE, lab2, router)
        self.node("server", "--network", lab2, "--ip", SERVER, *NO_ICMP_LIMITS_FLAGS, image, "http:80", "dns:53")
        self.node("client", "--network", lab1, "--ip", CLIENT, image)
        self.node("tv", "--network", lab1, "--ip", TV, image, "discovery")
        self.node("prober", "--pid", "host", "--network", "none",
                  "--cap-add", "SYS_ADMIN", "--cap-add", "SYS_PTRACE",
                  "--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW",
                  "-v", f"{agent_zipapp()}:{IN_PROBER}:ro", "--entrypoint", "sleep", image, "infinity")
        for name in ("router", "server", "client"):
            state = json.loads(docker("inspect", f"{self.prefix}-{name}"))[0]
            self.pids[name], self.ids[name] = state["State"]["Pid"], state["Id"]
            for net, settings in state["NetworkSettings"]["Networks"].items():
                self.macs[f"{name}@{net.removeprefix(self.prefix + '-')}"] = settings["MacAddress"]

    def down(self):
        for name in self.containers:
            docker("rm", "-f", name, check=False)
        for name in self.networks:
            docker("network", "rm", name, check=False)

    def netns(self, name: str) -> str:
        return f"/proc/{self.pids[name]}/ns/net"

    def agent(self, nodes: dict, timeout: float = TIMEOUT, allowed=ALLOWED, stdin=False, rounds=()) -> dict:
        for name, spec in [*nodes.items(), *(item for r in rounds for item in r.items())]:
            spec.setdefault("netns", self.netns(name) if name in self.pids else None)
            spec.setdefault("container", self.ids.get(name))
        request = {"timeout": timeout, "allowed": allowed}
        request.update({"rounds": [{"nodes": r} for r in rounds]} if rounds else {"nodes": nodes})
        request = encode_request(request)
        if stdin:
            out = subprocess.run(["docker", "exec", "-i", self.prober, "python3", IN_PROBER, "-"],
                                 input=request, capture_output=True, text=True, check=True).stdout
        else:
            out = docker("exec", self.prober, "python3", IN_PROBER, request)
        lines = out.splitlines()
        assert len(lines) == 1, out
        return json.loads(lines[0])

    def in_node(self, name: str, *argv: str) -> str:
        return docker("exec", self.prober, "python3", IN_PROBER, "enter", "--node", name, "--netns", self.netns(name),
                      "--container", self.ids[name], "--", *argv)


@pytest.fixture(scope="module")
def lab():
    lab = Lab(f"lwtest-agent-{secrets.token_hex(3)}")
    try:
        lab.up()
        answer = lab.agent({
            "router": {"setup": {"rename": {lab.macs["router@lab1"]: "personal",
                                            lab.macs["router@lab2"]: "servers"},
                                 "nft": ROUTER_RULES}, "info": True},
            "client": {"setup": {"routes": [["default", ROUTER_CLIENT_SIDE]]}, "info": True},
            "server": {"setup": {"routes": [["default", ROUTER_SERVER_SIDE]]}},
        })
        for name, node in answer["nodes"].items():
            assert node["error"] is None, (name, node["error"])
        lab.setup_answer = answer
        yield lab
    finally:
        lab.down()


def run_probes(lab, node: str, probes: list[tuple], **kw) -> list[dict]:
    specs = [dict(id=i, proto=p[0], dst=p[1], **({"port": p[2]} if len(p) > 2 else {}))
             for i, p in enumerate(probes)]
    answer = lab.agent({node: {"probes": specs}}, **kw)
    result = answer["nodes"][node]
    assert result["error"] is None, result["error"]
    return sorted(result["results"], key=lambda r: r["id"])


def test_setup_renames_routes_and_reports_info(lab):
    info = lab.setup_answer["nodes"]["router"]["info"]
    names = {i["name"]: i for i in info["interfaces"]}
    assert names["personal"]["addrs"] == [f"{ROUTER_CLIENT_SIDE}/24"]
    assert names["servers"]["addrs"] == [f"{ROUTER_SERVER_SIDE}/24"]
    assert names["personal"]["mac"] == lab.macs["router@lab1"]
    client = lab.setup_answer["nodes"]["client"]["info"]
    assert {"dst": "default", "via": ROUTER_CLIENT_SIDE, "dev": "eth0"} in client["routes"]


def test_sysctls_reach_the_node_namespace_only(lab):
    """Set by the runtime (--sysctl, compose's `sysctls:`), per network namespace."""
    assert lab.in_node("router", "cat", "/proc/sys/net/ipv4/icmp_ratelimit") == "0"
    assert docker("exec", lab.prober, "cat", "/proc/sys/net/ipv4/icmp_ratelimit") != "0"


def test_the_agent_writes_no_sysctls(lab):
    """A setup asking for sysctls fails its node before changing anything (Docker's AppArmor
    profile would deny the write), and the prober's /proc/sys stays read-only."""
    answer = lab.agent({"client": {"setup": {"routes": [["198.18.99.0/24", ROUTER_CLIENT_SIDE]],
                                             "sysctls": {"net.ipv4.icmp_ratelimit": "0"}}, "info": True}})
    error = answer["nodes"]["client"]["error"]
    assert "does not write sysctls (net.ipv4.icmp_ratelimit)" in error and "compose" in error
    assert "198.18.99.0/24" not in lab.in_node("client", "ip", "route")
    assert lab.in_node("client", "cat", "/proc/sys/net/ipv4/icmp_ratelimit") != "0"
    write = subprocess.run(["docker", "exec", lab.prober, "python3", IN_PROBER, "enter", "--node", "client",
                            "--netns", lab.netns("client"), "--container", lab.ids["client"], "--",
                            "sh", "-c", "echo 0 > /proc/sys/net/ipv4/icmp_ratelimit"],
                           capture_output=True, text=True)
    assert write.returncode != 0 and "Read-only file system" in write.stderr


def test_device_settings_over_netlink(lab):
    """What has a device (net.ipv4.conf.DEV.*) the agent sets over rtnetlink, which Docker's
    AppArmor profile allows, not through /proc/sys (read back there)."""
    script = ("import sys; sys.path.insert(0, %r); import devconf; "
              "devconf.set_conf('lo', {'accept_local': 1, 'send_redirects': 0}); "
              "print(devconf.read('net.ipv4.conf.lo.accept_local'), devconf.read('net.ipv4.conf.lo.send_redirects'))"
              % IN_PROBER)
    assert lab.in_node("client", "python3", "-c", script) == "1 0"
    assert docker("exec", lab.prober, "cat", "/proc/sys/net/ipv4/conf/lo/accept_local") == "0"


def test_tcp_verdicts(lab):
    results = run_probes(lab, "client", [("tcp", SERVER, 80), ("tcp", SERVER, 8080),
                                         ("tcp", SERVER, 81), ("tcp", SERVER, 82),
                                         ("tcp", SERVER, 84), ("tcp", ROUTER_CLIENT_SIDE, 9)])
    for r in results:
        print(r)
    open_, closed, icmp, rst, filtered, router_closed = results
    assert (open_["verdict"], open_["by"], open_["ttl"]) == ("open", SERVER, 63)
    assert open_["rtt_ms"] > 0
    assert (closed["verdict"], closed["by"]) == ("closed", SERVER)
    assert (icmp["verdict"], icmp["by"]) == ("rejected", ROUTER_CLIENT_SIDE)
    assert "admin-prohibited" in icmp["detail"]
    assert (rst["verdict"], rst["ttl"], rst["by"]) == ("rejected", 64, ROUTER_CLIENT_SIDE)
    assert "forged by the first hop" in rst["detail"]
    assert (filtered["verdict"], filtered["by"]) == ("filtered", None)
    assert "no answer within 1.0 s" in filtered["detail"]
    # a RST with ttl 64 from an on-link host is that host's own answer
    assert (router_closed["verdict"], router_closed["by"]) == ("closed", ROUTER_CLIENT_SIDE)


def test_udp_verdicts(lab):
    results = run_probes(lab, "client", [("udp", SERVER, 53), ("udp", SERVER, 9999),
                                         ("udp", SERVER, 54), ("udp", SERVER, 55),
                                         ("udp", SERVER, 56)])
    for r in results:
        print(r)
    dns, closed, prohibited, router_unreach, filtered = results
    assert (dns["verdict"], dns["by"]) == ("open", SERVER)
    assert (closed["verdict"], closed["by"]) == ("closed", SERVER)
    assert (prohibited["verdict"], prohibited["by"]) == ("rejected", ROUTER_CLIENT_SIDE)
    assert "host-prohibited" in prohibited["detail"]
    assert (router_unreach["verdict"], router_unreach["by"]) == ("rejected", ROUTER_CLIENT_SIDE)
    assert "port-unreachable" in router_unreach["detail"]
    assert filtered["verdict"] == "filtered"


def test_icmp_verdicts(lab):
    answer = lab.agent({"client": {"probes": [{"id": 0, "proto": "icmp", "dst": SERVER}]},
                        "server": {"probes": [{"id": 0, "proto": "icmp", "dst": CLIENT}]}})
    ping, = answer["nodes"]["client"]["results"]
    back, = answer["nodes"]["server"]["results"]
    assert (ping["verdict"], ping["by"], ping["ttl"]) == ("open", SERVER, 63)
    assert (back["verdict"], back["by"]) == ("filtered", None)


def test_discovery_any_host_may_answer_a_group_and_live_mode_stays_put(lab):
    answer = lab.agent({
        "client": {"probes": [{"id": 0, "proto": "udp", "dst": "224.0.0.251", "port": 5353},
                              {"id": 1, "proto": "udp", "dst": "239.255.255.250", "port": 1900},
                              {"id": 2, "proto": "udp", "dst": "255.255.255.255", "port": 5353},
                              {"id": 3, "proto": "udp", "dst": SERVER, "port": 5353}]},
        # netns null: the agent's own namespace (the prober's: --network none, only lo)
        "here": {"probes": [{"id": 0, "proto": "tcp", "dst": "127.0.0.1", "port": 9},
                            {"id": 1, "proto": "icmp", "dst": "127.0.0.1"},
                            {"id": 2, "proto": "tcp", "dst": SERVER, "port": 80}]},
    }, stdin=True)
    client = sorted(answer["nodes"]["client"]["results"], key=lambda r: r["id"])
    assert [(r["verdict"], r["by"]) for r in client] == [("open", TV)] * 3 + [("filtered", None)]
    here = sorted(answer["nodes"]["here"]["results"], key=lambda r: r["id"])
    assert [(r["verdict"], r["by"]) for r in here] == [
        ("closed", "127.0.0.1"), ("open", "127.0.0.1"), ("rejected", None)]
    assert "no route" in here[2]["detail"]


def frames(captured: list[dict]):
    """(iface, dir, (src, dst, proto, l4)) of every IPv4 frame captured."""
    for frame in captured:
        data = bytes.fromhex(frame["hex"])
        if data[12:14] == b"\x08\x00":
            ip = data[14:]
            ihl = (ip[0] & 15) * 4
            yield (frame["iface"], frame["dir"],
                   (socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20]), ip[9], ip[ihl:]))


def udp_packet(src: str, dst: str, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0) + payload  # checksum 0: none
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    return header + udp  # the kernel fills the IP checksum of IPPROTO_RAW packets


def arp_request(sender_mac: str, sender_ip: str, target_ip: str) -> bytes:
    mac = bytes.fromhex(sender_mac.replace(":", ""))
    return (b"\xff" * 6 + mac + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
            + mac + socket.inet_aton(sender_ip) + b"\0" * 6 + socket.inet_aton(target_ip))


def test_capture_sees_the_clients_packets_and_the_raw_sends(lab):
    marker = b"labwarden-raw-" + secrets.token_hex(4).encode()
    arp = arp_request(lab.macs["client@lab1"], CLIENT, ROUTER_CLIENT_SIDE)
    answer = lab.agent({
        "server": {"capture": {"seconds": 1.0}},
        "router": {"capture": {"seconds": 1.0}},
        "client": {"send": [{"l3": udp_packet(CLIENT, SERVER, 9999, marker).hex()},
                            {"l2": arp.hex(), "iface": "eth0"}],
                   "probes": [{"id": 0, "proto": "tcp", "dst": SERVER, "port": 80}]},
    })
    client, server, router = (answer["nodes"][n] for n in ("client", "server", "router"))
    assert client["error"] is None and server["error"] is None and router["error"] is None
    assert client["sent"] == 2 and client["results"][0]["verdict"] == "open"
    assert any(f["iface"] == "personal" and f["dir"] == "in" and f["hex"].startswith(arp.hex())
               for f in router["captured"])
    seen = list(frames(server["captured"]))
    syns = [f for f in seen if f[1] == "in" and f[2][:3] == (CLIENT, SERVER, 6)
            and f[2][3][13] == 0x02 and f[2][3][2:4] == b"\x00\x50"]
    assert syns and syns[0][0] == "eth0"
    assert any(d == "out" and p[:3] == (SERVER, CLIENT, 6) and p[3][13] == 0x12 for _, d, p in seen)
    assert any(d == "in" and p[:3] == (CLIENT, SERVER, 17) and marker in p[3] for _, d, p in seen)


def test_guard_refuses_outside_addresses_and_sends_nothing(lab):
    watch = {}
    watcher = threading.Thread(target=lambda: watch.update(
        lab.agent({"server": {"capture": {"seconds": 1.5}}})))
    watcher.start()
    time.sleep(0.5)  # the watcher's capture is running
    answer = lab.agent({"client": {
        "send": [{"l3": udp_packet(CLIENT, SERVER, 9999, b"must not leave").hex()}],
        "probes": [{"id": 0, "proto": "tcp", "dst": SERVER, "port": 80},
                   {"id": 1, "proto": "udp", "dst": "8.8.8.8", "port": 53}]}})
    watcher.join()
    assert answer["refused"] == ["8.8.8.8"], answer
    assert answer["error"].startswith("refused: 8.8.8.8 (probe 1 of node client)")
    assert "nodes" not in answer
    assert not [p for _, _, p in frames(watch["nodes"]["server"]["captured"]) if p[0] == CLIENT]


def test_guard_checks_arp_targets_and_names(lab):
    arp = arp_request(lab.macs["client@lab1"], CLIENT, "8.8.4.4")
    answer = lab.agent({"client": {"send": [{"l2": arp.hex(), "iface": "eth0"}],
                                   "probes": [{"id": 7, "proto": "icmp", "dst": "dns.google"}]}})
    assert answer["refused"] == ["8.8.4.4", "dns.google"], answer
    assert "raw packet 0 of node client" in answer["error"]


def test_node_failures_are_reported_per_node(lab):
    answer = lab.agent({
        "gone": {"netns": "/proc/999999999/ns/net",
                 "probes": [{"id": 0, "proto": "tcp", "dst": SERVER, "port": 80}]},
        "server": {"setup": {"nft": "this is not nftables"}},
        "client": {"probes": [{"id": 0, "proto": "tcp", "dst": SERVER, "port": 80}]},
    })
    gone, server, client = (answer["nodes"][n] for n in ("gone", "server", "client"))
    assert "node gone" in gone["error"] and "pid 999999999" in gone["error"], gone
    assert "node server" in server["error"] and "nft -f -" in server["error"], server
    assert "syntax error" in server["error"].lower() or "error" in server["error"].lower()
    assert client["error"] is None and client["results"][0]["verdict"] == "open"


def test_rounds_run_in_turn_each_with_its_own_ruleset(lab):
    opened = ROUTER_RULES.replace("tcp dport { 80, 8080 } accept", "tcp dport { 80, 84, 8080 } accept")
    probe = [{"id": 0, "proto": "tcp", "dst": SERVER, "port": 84}]
    answer = lab.agent({}, timeout=0.3, rounds=[
        {"router": {"setup": {"nft": opened, "flush_conntrack": True}}, "client": {"probes": probe}},
        {"router": {"setup": {"nft": ROUTER_RULES, "flush_conntrack": True}}, "client": {"probes": probe}},
    ])
    first, second = (r["nodes"] for r in answer["rounds"])
    assert first["router"]["error"] is None and second["router"]["error"] is None
    assert first["client"]["results"][0]["verdict"] == "closed"   # let through: the server's RST
    assert second["client"]["results"][0]["verdict"] == "filtered"


def test_500_probes_over_three_nodes_in_one_batch(lab):
    for name in ("client", "server", "router"):  # cold ARP caches: the worst case
        lab.in_node(name, "ip", "neigh", "flush", "all")
    tcp = lambda dst, port, n: [{"proto": "tcp", "dst": dst, "port": port} for _ in range(n)]
    plan = {"client": tcp(SERVER, 80, 200) + tcp(SERVER, 84, 50),
            "server": tcp(ROUTER_SERVER_SIDE, 22, 150),
            "router": tcp(SERVER, 80, 100)}
    nodes = {name: {"probes": [dict(p, id=i) for i, p in enumerate(probes)]}
             for name, probes in plan.items()}
    started = time.monotonic()
    answer = lab.agent(nodes)
    elapsed = time.monotonic() - started
    print(f"\n500 probes over 3 nodes: agent {answer['elapsed_s']} s, docker exec {elapsed:.3f} s, "
          + ", ".join(f"{n} {answer['nodes'][n]['elapsed_s']} s" for n in plan))
    verdicts = {name: [r["verdict"] for r in sorted(answer["nodes"][name]["results"],
                                                     key=lambda r: r["id"])] for name in plan}
    assert verdicts["client"] == ["open"] * 200 + ["filtered"] * 50
    assert verdicts["server"] == ["closed"] * 150
    assert verdicts["router"] == ["open"] * 100  # what it costs: printed above, and benchmarks/matrix.py


TRACE_TABLE = """table inet lwtrace {
  chain pre {
    type filter hook prerouting priority -350; policy accept;
    ip saddr 198.18.101.10 meta nftrace set 1
  }
}
"""


def test_trace_names_the_rule_that_decided_each_packet(lab):
    answer = lab.agent({
        "router": {"setup": {"nft_add": TRACE_TABLE}, "trace": True},
        "client": {"probes": [{"id": 0, "proto": "tcp", "dst": SERVER, "port": 80},
                              {"id": 1, "proto": "tcp", "dst": SERVER, "port": 84}]},
    })
    try:
        router, client = answer["nodes"]["router"], answer["nodes"]["client"]
        assert router["error"] is None and client["error"] is None, answer
        assert [r["verdict"] for r in sorted(client["results"], key=lambda r: r["id"])] == ["open", "filtered"]
        events = router["trace"]["events"]
        accepted = [e for e in events if " lwtest forward rule " in e and "tcp dport { 80, 8080 } accept"
                    in e and "(verdict accept)" in e]
        assert accepted and "# handle " in accepted[0], events
        dropped = [e for e in events if " lwtest forward policy drop" in e]
        assert dropped, events
        # the same trace id carries the packet's header: which flow it was
        trace_id = dropped[0].split()[2]
        assert any(e.startswith(f"trace id {trace_id} ") and "tcp dport 84" in e and " packet: " in e
                   for e in events), events
        assert "table inet lwtest" in router["trace"]["ruleset"] and "# handle" in router["trace"]["ruleset"]
    finally:
        lab.agent({"router": {"setup": {"nft_add": "delete table inet lwtrace"}}})


def test_fetch_is_a_short_exchange_and_says_how_it_failed(lab):
    get = b"GET / HTTP/1.0\r\nHost: lab\r\n\r\n".hex()
    answer = lab.agent({"client": {"fetch": [
        {"id": 0, "dst": SERVER, "port": 80, "send": get, "read_s": 2.0},
        {"id": 1, "dst": SERVER, "port": 8080, "send": get},      # allowed, nothing listens
        {"id": 2, "dst": SERVER, "port": 84, "send": get},        # dropped by the router
        {"id": 3, "dst": SERVER, "port": 80, "send": get, "max": 10}]}, "server": {"info": True}})
    page, closed, dropped, short = sorted(answer["nodes"]["client"]["fetched"], key=lambda f: f["id"])
    reply = bytes.fromhex(page["reply"])
    assert page["connected"] and page["eof"] and page["error"] is None, page
    assert reply.startswith(b"HTTP/1.0 200") and b"served by server" in reply
    assert 1024 <= page["sport"] <= 65535 and page["connect_ms"] > 0
    assert (closed["connected"], closed["error"]) == (False, "refused")
    assert (dropped["connected"], dropped["error"]) == (False, "timeout")
    assert len(bytes.fromhex(short["reply"])) == 10
    listening = {s["local"] for s in answer["nodes"]["server"]["info"]["tcp"] if s["state"] == "LISTEN"}
    assert "0.0.0.0:80" in listening


def test_guard_refuses_a_fetch_outside_the_lab(lab):
    answer = lab.agent({"client": {"fetch": [{"id": 0, "dst": "8.8.8.8", "port": 443}]}})
    assert answer["refused"] == ["8.8.8.8"] and "fetch 0 of node client" in answer["error"]


def test_a_capture_over_the_cap_is_an_error_when_read(lab):
    """More frames than the agent keeps: the answer says how many were lost, and reading the
    capture engine-side raises, naming the node and the cause (never an empty-looking pass)."""
    from labwarden.errors import CaptureIncomplete
    from labwarden.probe import NodeJob, _node_answers
    packet = {"l3": udp_packet(CLIENT, SERVER, 9, b"over the cap").hex()}
    answer = lab.agent({"client": {"capture": {"seconds": 1.0}, "send": [packet] * 6000}}, stdin=True)
    client = answer["nodes"]["client"]
    assert client["error"] is None and client["sent"] == 6000, client["error"]
    assert len(client["captured"]) == 5000 and client["capture_truncated"] >= 1000
    node = _node_answers({"client": NodeJob(capture_s=1.0)}, answer["nodes"])["client"]
    with pytest.raises(CaptureIncomplete, match=rf"^node client: its capture is incomplete \("
                                                rf"{client['capture_truncated']} frame\(s\) beyond the 5000 the agent keeps"):
        node.captured
