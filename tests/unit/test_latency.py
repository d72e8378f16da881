"""Latency machinery without Docker: statistics, budgets, profiles, the delay line's plan
and its packet handling, expected routes."""

import math
import random
import socket
import sys
import threading
import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from labwarden.realise import impair
from labwarden.declared import budgets, links as declared_links

from labwarden.checks import latency
from labwarden.errors import ConfigError, LabError
from labwarden.declared.lab import load_lab

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "labwarden" / "agent"))
import delayline  # noqa: E402  (a standalone program, like the agent)
import timing  # noqa: E402  (the agent's latency samples)

LAB = Path(__file__).resolve().parents[1] / "integration" / "latency_lab"


@pytest.fixture(scope="module")
def topology():
    return load_lab(LAB).topology


@pytest.fixture(scope="module")
def policy():
    return load_lab(LAB).policy


# ---------------------------------------------------------------- statistics

def test_percentiles_interpolate_like_numpy():
    values = [float(v) for v in range(1, 11)]
    assert latency.percentile(values, 50) == 5.5
    assert latency.percentile(values, 95) == pytest.approx(9.55)
    assert latency.percentile([3.0], 99) == 3.0
    assert latency.percentile([], 50) is None


def test_jitter_is_the_mean_difference_of_consecutive_samples():
    # RFC 3550: |D(i-1, i)|, averaged; lost samples are skipped, order is kept
    assert latency.jitter([10.0, 12.0, 11.0, None, 15.0]) == pytest.approx((2 + 1 + 4) / 3)
    assert latency.jitter([10.0]) is None


def test_a_lost_sample_is_slower_than_any_limit():
    stats = latency.Stats.of([1.0, None, 3.0, 2.0])
    assert (stats.count, stats.received, stats.loss_pct) == (4, 3, 25.0)
    assert (stats.min, stats.p50, stats.p95, stats.max, stats.mean) == (1.0, 2.5, math.inf, math.inf, math.inf)
    assert stats.jitter == pytest.approx(1.5)              # of the received samples, in order
    assert stats.row()[2:] == ["1.00", "2.50", "lost", "lost", "lost", "1.50"]
    # between a received sample and a lost one is lost, never half way to infinity
    assert latency.percentile([1.0, math.inf], 50) == math.inf
    assert latency.Stats.of([None] * 3).min == math.inf and latency.Stats.of([]).p50 is None


def test_nineteen_lost_loads_and_a_fast_one_break_the_budget(policy):
    budget = budgets.parse_budget("policy.yaml", "budgets[x]", "laptop -> server http/80",
                                  ["p95 < 1500 ms", "ttfb p95 < 1500 ms"], policy)
    measured = latency.Measured(budget, [None] * 19 + [12.0], [None] * 19 + [11.0], {"timeout": 19})
    failures = measured.failures()
    assert len(failures) == 3, failures
    assert "'p95 < 1500 ms' broken: p95 is a lost sample" in failures[0] and "1/20 samples" in failures[0]
    assert "'ttfb p95 < 1500 ms' broken: ttfb p95 is a lost sample" in failures[1]
    assert "'loss < 5% (default)' broken: measured loss 95.00%" in failures[2] and "timeout x19" in failures[2]
    [main, ttfb] = measured.rows()
    assert main["bad"] and main["cells"][-2] == "p95 < 1500 ms, loss < 5% (default)"
    assert main["cells"][4:9] == ["12.00", "lost", "lost", "lost", "lost"]


def test_a_budget_without_a_loss_limit_gets_the_default_one(policy):
    own = budgets.parse_budget("policy.yaml", "budgets[x]", "laptop -> server icmp", ["p95 < 5 ms", "loss < 1%"],
                               policy)
    assert [l.text for l in own.limits] == ["p95 < 5 ms", "loss < 1%"]
    given = budgets.parse_budget("policy.yaml", "budgets[x]", "laptop -> server icmp", "p95 < 5 ms", policy)
    assert [(l.metric, l.bound, l.text) for l in given.limits] == [
        ("p95", 5.0, "p95 < 5 ms"), ("loss", budgets.DEFAULT_LOSS_PCT, "loss < 5% (default)")]
    assert latency.Measured(given, [1.0] * 20).failures() == []
    assert latency.Measured(given, [1.0] * 19 + [None]).failures()  # 5% lost: not under 5%


# ---------------------------------------------------------------- budgets

def test_budgets_name_their_path_and_resolve_addresses(policy):
    labels = [b.label for b in policy.budgets]
    assert labels[0] == "cabin/laptop -> uplink/server tcp/80"
    assert policy.budgets[0].dst == IPv4Address("198.18.72.10")
    router = next(b for b in policy.budgets if b.dst_node == "gw")
    assert router.label == "cabin/laptop -> gw@cabin icmp" and router.dst == IPv4Address("198.18.70.1")
    page = next(b for b in policy.budgets if b.kind == "http")
    assert (page.samples, page.interval_s, page.port) == (10, 0.02, 80)
    assert [(l.series, l.metric, l.bound) for l in page.limits] == [("main", "p95", 400.0), ("ttfb", "p95", 400.0),
                                                                    ("main", "loss", 5.0)]


@pytest.mark.parametrize("path, value, field, words", [
    ("laptop -> nowhere icmp", "p95 < 5 ms", "budgets[laptop -> nowhere icmp]", "unknown node 'nowhere'"),
    ("laptop server icmp", "p95 < 5 ms", "budgets[laptop server icmp]", "is not a path"),
    ("laptop -> server udp/53", "p95 < 5 ms", "budgets[laptop -> server udp/53]", "not a measure"),
    ("laptop -> server icmp", "p97 < 5 ms", "budgets[laptop -> server icmp].limits[0]", "unknown metric 'p97'"),
    ("laptop -> server icmp", "loss < 5 ms", "budgets[laptop -> server icmp].limits[0]", "loss is a percentage"),
    ("laptop -> server icmp", "ttfb p95 < 5 ms", "budgets[laptop -> server icmp].limits[0]", "http/N paths only"),
    ("laptop -> server icmp", {"limits": ["p95 < 5 ms"], "every": 3},
     "budgets[laptop -> server icmp].every", "unknown key"),
    ("uplink/laptop -> server icmp", "p95 < 5 ms", "budgets[uplink/laptop -> server icmp]", "not uplink"),
])
def test_budget_mistakes_name_file_field_and_problem(policy, path, value, field, words):
    with pytest.raises(ConfigError) as err:
        budgets.load_budgets("policy.yaml", {path: value}, policy)
    assert err.value.field == field and words in err.value.problem


def test_a_broken_budget_names_path_budget_and_measured_figure(policy):
    budget = budgets.parse_budget("policy.yaml", "budgets[x]", "laptop -> server tcp/80", "p95 < 5 ms", policy)
    measured = latency.Measured(budget, [100.0 + i for i in range(20)])
    [failure] = measured.failures()
    assert failure.startswith("cabin/laptop -> uplink/server tcp/80: budget 'p95 < 5 ms' broken: measured p95 118.05 ms")
    assert latency.Measured(budget, [1.0] * 20).failures() == []
    lost = latency.Measured(budget, [None] * 5, errors={"timeout": 5})
    assert "nothing was received" in lost.failures()[0] and "timeout x5" in lost.failures()[0]


def test_an_error_page_is_a_lost_page_load_not_a_fast_one(policy):
    budget = budgets.parse_budget("policy.yaml", "budgets[x]", "laptop -> server http/80",
                                  ["p95 < 700 ms", "loss < 10%"], policy)
    fast_503s = latency.Measured(budget, [12.0, 640.0, 11.0, 655.0], [11.0, 630.0, 10.0, 650.0],
                                 status=[503, 200, 503, 301])
    judged = latency.only_pages(fast_503s)
    assert judged.samples == [None, 640.0, None, 655.0] and judged.ttfb == [None, 630.0, None, 650.0]
    assert judged.errors == {"HTTP 503": 2}
    p95, loss = judged.failures()
    assert "'p95 < 700 ms' broken: p95 is a lost sample" in p95
    assert "'loss < 10%' broken: measured loss 50.00%" in loss and "HTTP 503 x2" in loss


# ---------------------------------------------------------------- taking samples (on loopback)

class PageServer:
    """A web server on 127.0.0.1 that counts how many page loads it serves at once.
    /slow answers after 50 ms, /short closes 10 bytes into a 100-byte body, /silent never answers."""

    PAGE = b"x" * 5000   # longer than the 4 kB the sampler keeps of a reply

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.sock.getsockname()[1]
        self.open = self.most = self.served = 0
        self.lock = threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn):
        with self.lock:
            self.open += 1
            self.most = max(self.most, self.open)
        try:
            path = conn.recv(4096).split(b" ")[1]
            if path == b"/silent":
                conn.recv(1)                 # until the sampler gives up and closes
                return
            if path == b"/short":
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 100\r\n\r\n" + b"y" * 10)
                return
            time.sleep(0.05)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(self.PAGE) + self.PAGE)
            conn.recv(1)                     # keep it open: the body's length says it is complete
        except OSError:
            pass
        finally:
            with self.lock:
                self.open -= 1
                self.served += 1
            conn.close()

    def close(self):
        self.sock.close()


@pytest.fixture
def server():
    s = PageServer()
    yield s
    s.close()


def page_spec(server, path, count, **extra):
    return {"id": 0, "kind": "http", "dst": "127.0.0.1", "port": server.port, "path": path, "count": count,
            "interval_s": 0.01, "timeout_s": 1.0, **extra}


def test_page_loads_are_taken_one_at_a_time(server, policy):
    budget = budgets.parse_budget("policy.yaml", "budgets[x]", "laptop -> server http/80", "p95 < 1 s", policy)
    assert budget.spec(0)["serial"] is True
    [row] = timing.measure([page_spec(server, "/slow", 5, serial=True)], [])["latency"]
    assert server.most == 1, f"{server.most} page loads at once"
    assert None not in row["samples"] and row["status"] == [200] * 5 and row["errors"] == {}


def test_a_page_cut_short_or_never_answered_is_lost(server):
    [short] = timing.measure([page_spec(server, "/short", 2, serial=True)], [])["latency"]
    assert short["samples"] == [None, None] and short["errors"] == {"cut short": 2}
    [silent] = timing.measure([page_spec(server, "/silent", 2, serial=True, timeout_s=0.2)], [])["latency"]
    assert silent["samples"] == [None, None] and silent["errors"] == {"timeout": 2}  # the next one still went


# ---------------------------------------------------------------- profiles and links

def test_named_profiles_match_the_issue():
    rtt = {name: p.rtt_ms for name, p in declared_links.PROFILES.items()}
    assert rtt["lan"] == pytest.approx(0.2) and rtt["fiber-isp"] == 10
    assert 25 <= rtt["leo-satellite"] - 2 * declared_links.PROFILES["leo-satellite"].jitter_ms
    assert rtt["leo-satellite"] + 2 * declared_links.PROFILES["leo-satellite"].jitter_ms <= 60
    geo = declared_links.PROFILES["geo-satellite"]
    assert 550 <= geo.rtt_ms - 2 * geo.jitter_ms and geo.rtt_ms + 2 * geo.jitter_ms <= 650 and geo.loss_pct
    wifi = declared_links.PROFILES["airline-wifi"]
    assert wifi.delay_ms == geo.delay_ms and wifi.rate_kbit > 0


def test_profiles_parse_units_and_overrides():
    p = declared_links.parse_profile("c.yaml", "x", {"profile": "geo-satellite", "loss": "0%", "rate": "2 mbit"})
    assert (p.name, p.delay_ms, p.loss_pct, p.rate_kbit) == ("geo-satellite*", 300, 0, 2000)
    assert declared_links.parse_profile("c.yaml", "x", {"delay": "0.3 s", "jitter": 5}).delay_ms == 300
    with pytest.raises(ConfigError, match="unknown profile 'moon'.*known profiles: lan"):
        declared_links.parse_profile("c.yaml", "x", "moon")
    with pytest.raises(ConfigError, match="more than the delay"):
        declared_links.parse_profile("c.yaml", "x", {"delay": "1 ms", "jitter": "2 ms"})
    with pytest.raises(ConfigError, match="not a quantity"):
        declared_links.parse_profile("c.yaml", "x", {"delay": "soon"})


def test_links_come_from_compose(topology):
    [link] = topology.links
    assert (link.name, link.segment, link.node, link.profile.delay_ms) == ("sky", "sky", None, 50)


MACS = {("gw", "sky"): "02:42:00:00:00:01", ("sat", "sky"): "02:42:00:00:00:02"}


def test_a_firewalled_sender_is_carried_by_its_receivers(topology):
    links = topology.links
    plan = impair.delayline_plan(topology, links, {"gw"}, MACS)
    assert list(plan) == ["sat"]
    [entry] = plan["sat"]
    assert entry["ingress"] == {"ifname": "sky", "macs": ["02:42:00:00:00:01"]}
    assert entry["egress"]["routes"] == [["198.18.71.0/24", "198.18.71.2"]]
    assert entry["egress"]["from"] == ["ground"]
    # without the firewall, each sender carries its own side
    plan = impair.delayline_plan(topology, links, set(), MACS)
    assert sorted(plan) == ["gw", "sat"] and all("ingress" not in e for es in plan.values() for e in es)
    assert ["default", "198.18.71.1"] in plan["gw"][0]["egress"]["routes"]


def test_an_attachment_is_impaired_both_ways(topology):
    link = declared_links.Link("sat@sky", "sky", "sat", declared_links.PROFILES["lan"])
    legs = impair.legs(topology, [link])
    assert {(l.sender, l.to) for l in legs} == {("sat", None), ("gw", "sat")}
    plan = impair.delayline_plan(topology, [link], set(), MACS)
    assert plan["gw"][0]["egress"]["routes"] == [["198.18.71.2/32", "198.18.71.1"], ["default", "198.18.71.1"]]
    with pytest.raises(LabError, match="neither sat nor gw can carry"):
        impair.delayline_plan(topology, [link], {"gw", "sat"}, MACS)


def test_netem_puts_every_leg_on_its_senders_egress(topology):
    plan = impair.netem_plan(topology, topology.links)
    assert plan["gw"] == [["tc", "qdisc", "replace", "dev", "sky", "root", "netem", "delay", "50ms", "2ms",
                           "limit", "1000"]]
    link = declared_links.Link("sat@sky", "sky", "sat", declared_links.PROFILES["geo-satellite"])
    cmds = impair.netem_plan(topology, [link])["gw"]
    assert cmds[0][6:8] == ["handle", "1:"] and any("198.18.71.2/32" in c for c in cmds)


def test_expected_route_adds_the_links_on_the_way(topology):
    links = topology.links
    hops = latency.expected_route(topology, links, "laptop", IPv4Address("198.18.72.10"))
    assert [(h.node, str(h.address), h.rtt_ms, h.jitter_ms) for h in hops] == [
        ("gw", "198.18.70.1", 0, 0), ("sat", "198.18.71.2", 100, 4), ("server", "198.18.72.10", 100, 4)]
    check = latency.link_check(topology, links, links[0], {"gw"})
    assert (check.src, check.dst_node, check.rtt_ms) == ("gw", "sat", 100)


def test_a_traceroute_hop_is_judged_by_the_links_on_its_way(topology):
    links = topology.links

    def hops(*medians):
        addrs = ["198.18.70.1", "198.18.71.2", "198.18.72.10"]
        return {"reached": True, "hops": [{"ttl": i + 1, "replies": [{"addr": a, "ms": ms}] * 3}
                                          for i, (a, ms) in enumerate(zip(addrs, medians))]}

    dst = IPv4Address("198.18.72.10")
    busy = latency.judge_traceroute(topology, links, "laptop", dst, hops(3.2, 104.0, 109.0))[1]
    assert busy == []  # a loaded machine's milliseconds are not a misplaced link
    _, problems = latency.judge_traceroute(topology, links, "laptop", dst, hops(100.0, 101.0, 100.0))
    assert problems == ["hop 1 (gw): median 100.0 ms; the links on the way add 0.0 ms (±12.0 ms)"]


def test_accuracy_tolerance_is_one_percent_or_two_ms():
    assert latency.tolerance_ms(600) == 6 and latency.tolerance_ms(20) == 2


# ---------------------------------------------------------------- the relay's packet handling

def ipv4(ttl: int) -> bytearray:
    header = bytearray(b"\x45\x00\x00\x1c\x00\x01\x00\x00" + bytes([ttl, 17]) + b"\x00\x00"
                       + bytes([198, 18, 70, 10, 198, 18, 72, 10]))
    csum = delayline_checksum(header)
    header[10], header[11] = csum >> 8, csum & 0xFF
    return header + b"\x00" * 8


def delayline_checksum(header: bytes) -> int:
    total = sum(int.from_bytes(header[i:i + 2], "big") for i in range(0, 20, 2) if i != 10)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@pytest.mark.parametrize("ttl, ttl_one, after", [(63, False, 64), (1, False, 2), (255, False, 255), (2, True, 1)])
def test_restore_ttl_keeps_the_checksum_valid(ttl, ttl_one, after):
    packet = ipv4(ttl)
    delayline.restore_ttl(packet, ttl_one)
    assert packet[8] == after
    assert int.from_bytes(packet[10:12], "big") == delayline_checksum(packet)


class FakeLoop:
    def __init__(self):
        self.now, self.timers = 0.0, []

    def time(self):
        return self.now

    def call_at(self, when, func):
        handle = FakeTimer(when, func)
        self.timers.append(handle)
        return handle


class FakeTimer:
    def __init__(self, when, func):
        self._when, self.func, self.cancelled = when, func, False

    def when(self):
        return self._when

    def cancel(self):
        self.cancelled = True


def stats():
    return dict.fromkeys(("in", "out", "lost", "overflow", "write_errors", "max_backlog", "late_ms_sum"), 0)


def test_direction_keeps_order_under_jitter_and_drops_at_the_loss_rate():
    loop = FakeLoop()
    d = delayline.Direction(loop, {"delay_ms": 300, "jitter_ms": 10}, random.Random(1), stats())
    for i in range(200):
        loop.now = i * 0.001
        d.push(loop.now, 0, ipv4(64), False)
    dues = [item[0] for item in d.queue]
    assert dues == sorted(dues)                       # in order, as a link keeps it
    assert all(0.29 <= due - i * 0.001 <= 0.32 for i, due in enumerate(dues))
    lossy = delayline.Direction(loop, {"delay_ms": 1, "loss_pct": 10}, random.Random(2), stats())
    for _ in range(5000):
        lossy.push(loop.now, 0, ipv4(64), False)
    assert 400 <= lossy.stats["lost"] <= 600


def test_direction_serialises_packets_at_the_rate():
    loop = FakeLoop()
    d = delayline.Direction(loop, {"delay_ms": 0, "rate_kbit": 8, "limit": 3}, random.Random(1), stats())
    for _ in range(5):
        d.push(0.0, 0, bytearray(100), False)   # 100 bytes at 8 kbit/s: 0.1 s each
    assert [round(item[0], 3) for item in d.queue] == [0.1, 0.2, 0.3]
    assert d.stats["overflow"] == 2
