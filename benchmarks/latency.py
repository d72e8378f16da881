"""How accurate is the emulated latency, and how many packets a second does the delay line
relay? And is a page load the suite measures what a visitor gets? Prints figures; asserts nothing.

    python benchmarks/latency.py [--delays 0,10,50,300] [--rates 10000,20000,...] [--json]
    python benchmarks/latency.py --page [--loads 20] [--json]

Brings up tests/integration/latency_lab (laptop -> NAT gateway with a firewall -> satellite
hop -> server), then, for each one-way delay, impairs the sky link with just that delay
(no jitter, no loss), echoes 30 times across it (gateway -> satellite: one crossing each
way) and compares the round trip with twice the delay. Then it floods UDP from the laptop
to the server (each packet through the relay in the satellite node) at each rate for 2 s
and counts what arrives; the relay's maximum rate is the highest rate with under 1% loss.
Figures depend on the machine's load: the relay shares the cores with the sender.

--page brings up topologies/airplane instead and measures its page-load budget (visitor ->
edge http/80, through the tunnel and the satellite) twice, alternately, on the same lab:
the suite's own samples (labwarden.checks.latency.measure), and an independent client, Python's
http.client in the visitor's network namespace, loading the page one at a time, its clock
from before connect() to the last byte of the body.
"""

import argparse
import asyncio
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labwarden.realise import impair

from labwarden.checks import latency  # noqa: E402
from labwarden.declared.links import Link, Profile  # noqa: E402
from labwarden.realise.compose import PROBER, ComposeLab  # noqa: E402
from labwarden.declared.lab import load_lab  # noqa: E402
from labwarden.realise import compose_config  # noqa: E402
from labwarden.probe.ship import IN_PROBER  # noqa: E402

LAB = Path(__file__).resolve().parents[1] / "tests" / "integration" / "latency_lab"

# One process, two threads, each in a node's network namespace: a paced UDP sender in
# the laptop, a counting receiver in the server. Both scripts enter nodes the agent's way
# (agent/netns.py, imported from the zipapp: argv[1]), with the nodes' Transport.namespace().
FLOOD = r'''
import json, socket, sys, threading, time
sys.path.insert(0, sys.argv[1])
import netns
def enter(spec):
    netns.enter(json.loads(spec))
src_ns, dst_ns, dst, rate, seconds = sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]), float(sys.argv[6])
got = {"n": 0}
ready = threading.Event()
def receive():
    enter(dst_ns)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 25)
    s.bind(("0.0.0.0", 9999)); s.settimeout(1.0); ready.set()
    while True:
        try:
            s.recv(2048); got["n"] += 1
        except socket.timeout:
            return
t = threading.Thread(target=receive); t.start(); ready.wait()
enter(src_ns)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payload, sent, start = b"x" * 64, 0, time.time()
while True:
    now = time.time() - start
    if now >= seconds:
        break
    due = int(now * rate) - sent
    for _ in range(min(due, 500)):
        try:
            s.sendto(payload, (dst, 9999)); sent += 1
        except OSError:
            pass
    if due <= 0:
        time.sleep(0.0005)
elapsed = time.time() - start
t.join()
print(json.dumps({"sent": sent, "received": got["n"], "elapsed_s": round(elapsed, 3)}))
'''


# An independent visitor: stdlib http.client in the visitor's namespace, one load at a time.
VISITOR = r'''
import http.client, json, sys, time
sys.path.insert(0, sys.argv[1])
import netns
netns.enter(json.loads(sys.argv[2]))
dst, port, host, loads = sys.argv[3], int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
out = []
for _ in range(loads):
    start = time.time()
    try:
        conn = http.client.HTTPConnection(dst, port, timeout=5)
        conn.request("GET", "/", headers={"Host": host})
        reply = conn.getresponse(); reply.read(); conn.close()
        out.append(round((time.time() - start) * 1000, 1) if reply.status == 200 else None)
    except OSError:
        out.append(None)
    time.sleep(0.02)
print(json.dumps(out))
'''


def page(loads: int) -> dict:
    """The airplane's page loads: the suite's samples and an independent client's, alternately."""
    topology, policy = load_lab(Path(__file__).resolve().parents[1] / "topologies" / "airplane",
                                resolve=compose_config.resolver())
    budget = next(b for b in policy.budgets if b.kind == "http")
    budget = replace(budget, samples=loads)
    figures = {"budget": budget.label, "suite": [], "client": []}
    with ComposeLab(topology, policy, log=lambda m: None) as lab:
        for _ in range(2):
            measured = asyncio.run(latency.measure(lab, [budget]))[budget]
            figures["suite"] += measured.samples
            proc = subprocess.run(["docker", "exec", lab.containers[PROBER].name, "python3", "-c", VISITOR, IN_PROBER,
                                   json.dumps(lab.transports[budget.src].namespace()), str(budget.dst), str(budget.port),
                                   budget.host or str(budget.dst), str(loads)],
                                  capture_output=True, text=True, timeout=300)
            figures["client"] += json.loads(proc.stdout.strip().splitlines()[-1])
    for who in ("suite", "client"):
        stats = latency.Stats.of(figures[who])
        figures[who + "_stats"] = dict(zip(latency.STATS_COLUMNS, stats.row()))
    return figures


def impair_sky(lab, delay_ms: float):
    link = Link("sky", "sky", None, Profile(f"bench-{delay_ms:g}ms", delay_ms=delay_ms, limit=100000))
    lab.impairment = impair.apply(lab, "auto", [link])
    return link


def accuracy(lab, delays) -> list[dict]:
    rows = []
    base_check = None
    for delay in delays:
        link = impair_sky(lab, delay)
        check = latency.link_check(lab.topology, [link], link, impair.firewalled_nodes(lab))
        base_check = base_check or check
        samples = asyncio.run(latency.ping(lab, [(check.src, check.dst)], count=30, interval_s=0.01,
                                           timeout_s=max(3.0, 4 * delay / 1000)))
        stats = latency.Stats.of(samples[(check.src, check.dst)])
        rows.append({"one_way_ms": delay, "configured_rtt_ms": 2 * delay, "p50_ms": round(stats.p50, 3),
                     "mean_ms": round(stats.mean, 3), "min_ms": round(stats.min, 3), "max_ms": round(stats.max, 3),
                     "error_ms": round(stats.p50 - 2 * delay, 3),
                     "error_pct": round(100 * (stats.p50 - 2 * delay) / (2 * delay), 3) if delay else None,
                     "within": abs(stats.p50 - 2 * delay) <= latency.tolerance_ms(2 * delay)})
    # the same echo with no delay line at all: what the lab itself costs
    lab.prober_exec("python3", IN_PROBER, "delayline", "stop")
    samples = asyncio.run(latency.ping(lab, [(base_check.src, base_check.dst)], count=30, interval_s=0.01))
    stats = latency.Stats.of(samples[(base_check.src, base_check.dst)])
    rows.append({"one_way_ms": None, "configured_rtt_ms": None, "p50_ms": round(stats.p50, 3),
                 "mean_ms": round(stats.mean, 3), "min_ms": round(stats.min, 3), "max_ms": round(stats.max, 3),
                 "error_ms": None, "error_pct": None, "within": None, "note": "no delay line (the bare lab)"})
    return rows


def flood(lab, rate: float, seconds: float = 2.0) -> dict:
    src, dst = (json.dumps(lab.transports[n].namespace()) for n in ("laptop", "server"))
    proc = subprocess.run(["docker", "exec", lab.containers[PROBER].name, "python3", "-c", FLOOD, IN_PROBER, src, dst,
                           "198.18.72.10", str(rate), str(seconds)], capture_output=True, text=True, timeout=60)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["rate_asked"] = rate
    result["rate_sent"] = round(result["sent"] / result["elapsed_s"])
    result["loss_pct"] = round(100 * (1 - result["received"] / max(1, result["sent"])), 2)
    result["rate_relayed"] = round(result["received"] / result["elapsed_s"])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--delays", default="0,10,50,300", help="one-way delays in ms")
    parser.add_argument("--rates", default="10000,20000,30000,40000,50000,60000",
                        help="packets/s to flood through the relay")
    parser.add_argument("--page", action="store_true", help="the airplane's page: the suite vs a visitor")
    parser.add_argument("--loads", type=int, default=20, help="--page: loads per round (two rounds each)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.page:
        figures = page(args.loads)
        print(f"{figures['budget']}, ms")
        print(latency.render_table(["who", *latency.STATS_COLUMNS],
                                   [[who, *figures[who + "_stats"].values()] for who in ("suite", "client")]))
        if args.json:
            print(json.dumps(figures))
        return 0
    lab = ComposeLab(*load_lab(LAB, resolve=compose_config.resolver()), log=lambda m: None)
    figures = {}
    with lab:
        figures["method"] = lab.impairment.method
        figures["accuracy"] = accuracy(lab, [float(d) for d in args.delays.split(",")])
        impair_sky(lab, 10)
        figures["flood"] = []
        for rate in [float(r) for r in args.rates.split(",")]:
            figures["flood"].append(flood(lab, rate))
            time.sleep(0.5)
        figures["relay_counters"] = impair.counters(lab)
        ok = [f for f in figures["flood"] if f["loss_pct"] < 1]
        figures["max_rate_pps"] = max((f["rate_sent"] for f in ok), default=0)
    print(f"{'one-way ms':>10} {'rtt conf':>9} {'p50':>9} {'mean':>9} {'error ms':>9} {'error %':>8}  within")
    for row in figures["accuracy"]:
        if row["one_way_ms"] is None:
            print(f"{'-':>10} {'-':>9} {row['p50_ms']:>9} {row['mean_ms']:>9}  ({row['note']})")
            continue
        pct = "-" if row["error_pct"] is None else row["error_pct"]
        print(f"{row['one_way_ms']:>10g} {row['configured_rtt_ms']:>9g} {row['p50_ms']:>9} {row['mean_ms']:>9} "
              f"{row['error_ms']:>9} {pct:>8}  {row['within']}")
    print(f"\n{'asked pps':>10} {'sent pps':>9} {'relayed':>9} {'loss %':>7}")
    for row in figures["flood"]:
        print(f"{row['rate_asked']:>10g} {row['rate_sent']:>9} {row['rate_relayed']:>9} {row['loss_pct']:>7}")
    print(f"\nrelay max rate (< 1% loss): {figures['max_rate_pps']} packets/s ({figures['method']})")
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
