"""How do labs grow? Generates routed labs of N nodes, brings each up and probes its matrix.

    python benchmarks/scale.py [--sizes 10,20,40,80] [--json] [--base 10.100]

A lab of size N is N containers: one router and N-1 hosts spread round-robin over
S = N/5 segments (bridges, 10.100.I.0/24: router .1, hosts from .10), generated into a
temporary folder: compose.yaml, policy.yaml (zones z0..zS-1, one per segment; each zone
may reach the next one's tcp/80 and ping it, in a ring; everything else is dropped) and
the router's nftables config saying the same. Every host serves http:80.

Per size it prints: up_s (compose up, plumbing, readiness), matrix_s (the full
segmentation matrix, controls and re-probes included), verdicts, verdicts_per_s,
mismatches (0 expected: the config matches the policy), the agent's peak memory
(agent_maxrss_mb, the largest of its calls), its time (agent_elapsed_s, from reading the
request to its answer) and CPU time (agent_cpu_s; commands it ran counted apart), summed
over the matrix's calls, this process's CPU time for the matrix
(engine_cpu_s), and the request's size (request_kib: the largest one agent call carried
on its stdin). With --json one JSON line per size.

Each lab is removed before the next starts, and on Ctrl-C or SIGTERM too (the lab's
`down` runs in `finally`; the temporary folder goes with it). The generated labs use
10.100.0.0/16 unless --base says otherwise; their topology names (scale-nN-10-100: size
and range) key their locks.
"""

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import labwarden.probe  # noqa: E402
from labwarden.checks.matrix import run_matrix  # noqa: E402
from labwarden.declared.lab import load_lab  # noqa: E402
from labwarden.realise import compose_config  # noqa: E402
from labwarden.errors import LabError  # noqa: E402
from labwarden.realise.compose import ComposeLab  # noqa: E402
from labwarden.realise.image import ensure_image  # noqa: E402

PORTS = (80,)   # what each zone may reach in the next one (and icmp)

NODE = """\
x-node: &node
  image: ${LABWARDEN_IMAGE:-labwarden/node:latest}
  stop_grace_period: 1s
  sysctls: &sysctls
    net.ipv4.icmp_ratelimit: 0
    net.ipv4.icmp_msgs_per_sec: 100000
    net.ipv4.icmp_msgs_burst: 100000

x-segment: &segment
  driver: bridge
  driver_opts:
    com.docker.network.bridge.inhibit_ipv4: "true"
    com.docker.network.bridge.enable_ip_masquerade: "false"
    com.docker.network.bridge.enable_icc: "true"
"""


def plan(n: int) -> tuple[int, dict[str, int]]:
    """S segments and {host: segment} for a lab of n containers (one is the router)."""
    if n < 3:
        raise SystemExit(f"--sizes: a lab needs at least 3 nodes (a router and two hosts), not {n}")
    segments = max(1, n // 5)
    if segments > 250:
        raise SystemExit(f"--sizes: {n} nodes make {segments} segments; at most 250 fit the generator")
    return segments, {f"h{j:03d}": j % segments for j in range(n - 1)}


def generate(folder: Path, n: int, base: str) -> Path:
    """compose.yaml, policy.yaml and router/nftables.conf of the size-n lab, in a folder of folder."""
    segments, hosts = plan(n)
    lab = folder / f"scale-n{n}-{base.replace('.', '-')}"  # the name keys the lock: size and range
    (lab / "router").mkdir(parents=True)
    net = lambda s: f"{base}.{s}"  # noqa: E731
    seq = {s: 0 for s in range(segments)}
    lines = [NODE, "services:", "  router:", "    <<: *node", "    command: []", "    sysctls:",
             "      <<: *sysctls", "      net.ipv4.ip_forward: 1", "      net.ipv4.conf.all.rp_filter: 0",
             "    networks:"]
    lines += [f"      s{s}: {{ipv4_address: {net(s)}.1}}" for s in range(segments)]
    lines += ["    x-labwarden: {firewall: router/nftables.conf}"]
    for host, s in hosts.items():
        seq[s] += 1
        lines += [f"  {host}:", "    <<: *node", "    command: [http:80]",
                  f"    networks: {{s{s}: {{ipv4_address: {net(s)}.{9 + seq[s]}}}}}",
                  f"    x-labwarden: {{gateway: {net(s)}.1}}"]
    lines += ["networks:"]
    lines += [f"  s{s}:\n    <<: *segment\n    ipam: {{config: [{{subnet: {net(s)}.0/24, gateway: {net(s)}.254}}]}}"
              for s in range(segments)]
    (lab / "compose.yaml").write_text("\n".join(lines) + "\n")

    ring = [(s, (s + 1) % segments) for s in range(segments) if (s + 1) % segments != s]
    ports = ", ".join(f"tcp/{p}" for p in PORTS)
    policy = ["router: router", "zones:", *(f"  z{s}: [s{s}]" for s in range(segments)),
              "blocked: drop", "services:", *(f"  {h}: [tcp/80]" for h in hosts), "allow:"]
    policy += [f"  - {{name: z{a} uses z{b}, from: z{a}, to: z{b}, ports: [{ports}, icmp]}}" for a, b in ring]
    if not ring:
        policy[-1] = "allow: []"
    (lab / "policy.yaml").write_text("\n".join(policy) + "\n")

    dports = ", ".join(str(p) for p in PORTS)
    forward = "".join(f'\t\tiifname "s{a}" oifname "s{b}" tcp dport {{ {dports} }} accept\n'
                      f'\t\tiifname "s{a}" oifname "s{b}" icmp type echo-request accept\n' for a, b in ring)
    (lab / "router" / "nftables.conf").write_text(f"""\
#!/usr/sbin/nft -f
# Generated by benchmarks/scale.py: zone zI reaches zone zI+1 (a ring), nothing else.
flush ruleset
table inet filter {{
\tchain input {{
\t\ttype filter hook input priority filter; policy drop;
\t\tct state established,related accept
\t\tiifname "lo" accept
\t}}
\tchain forward {{
\t\ttype filter hook forward priority filter; policy drop;
\t\tct state established,related accept
\t\tct state invalid drop
{forward}\t}}
}}
""")
    return lab


class AgentCalls:
    """Every agent call's cost, as the agent reports it (its `rusage`), and its request's size."""

    def __init__(self):
        self.calls: list[dict] = []
        self._call = labwarden.probe._call_agent

    def __enter__(self):
        def counted(transport, request):
            answer = self._call(transport, request)
            self.calls.append({**answer.get("rusage", {}), "elapsed_s": answer.get("elapsed_s", 0.0),
                               "request_bytes": len(labwarden.probe.encode(request))})
            return answer
        labwarden.probe._call_agent = counted
        return self

    def __exit__(self, *exc):
        labwarden.probe._call_agent = self._call


def measure(folder: Path, n: int, base: str, log) -> dict:
    segments, _ = plan(n)
    topology, policy = load_lab(generate(folder, n, base), resolve=compose_config.resolver())
    figures = {"nodes": n, "segments": segments}
    lab = ComposeLab(topology, policy, log=log)
    try:
        started = time.monotonic()
        lab.up()
        figures["up_s"] = round(time.monotonic() - started, 3)
        figures["compose_s"] = round(lab.timings.get("compose_s", 0.0), 3)
        with AgentCalls() as calls:
            started, cpu = time.monotonic(), time.process_time()
            run = asyncio.run(run_matrix(lab, policy))
            figures["matrix_s"] = round(time.monotonic() - started, 3)
            figures["engine_cpu_s"] = round(time.process_time() - cpu, 3)
        figures["verdicts"] = len(run.cells)
        figures["verdicts_per_s"] = round(len(run.cells) / figures["matrix_s"], 1)
        figures["mismatches"] = sum(not c.ok for c in run.cells.values())
        figures["resent"] = len(run.reprobes.sent)  # misses of the first burst, sent again
        wrong = Counter(f"{'|'.join(sorted(c.expected.verdicts))}->{c.observed.verdict}"
                        for c in run.cells.values() if not c.ok)
        figures["mismatch_kinds"] = dict(wrong.most_common(4))  # expected->observed: what went wrong
        details = Counter(c.observed.detail.split(" (")[0][:60] for c in run.cells.values() if not c.ok)
        figures["mismatch_details"] = dict(details.most_common(3))
        figures["agent_calls"] = len(calls.calls)
        figures["agent_maxrss_mb"] = round(max(c.get("maxrss_kb", 0) for c in calls.calls) / 1024, 1)
        figures["agent_elapsed_s"] = round(sum(c.get("elapsed_s", 0) for c in calls.calls), 3)
        figures["agent_cpu_s"] = round(sum(c.get("cpu_s", 0) for c in calls.calls), 3)
        figures["agent_children_cpu_s"] = round(sum(c.get("children_cpu_s", 0) for c in calls.calls), 3)
        figures["request_kib"] = round(max(c["request_bytes"] for c in calls.calls) / 1024, 1)
    finally:
        started = time.monotonic()
        try:
            lab.down()
        except LabError as err:  # the figures stand; what was left behind is said, and fails the run
            figures["down_error"] = str(err)
        figures["down_s"] = round(time.monotonic() - started, 3)
    return figures


def interrupted(signum, frame):
    """SIGTERM as Ctrl-C: the lab's `finally` removes it."""
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10,20,40,80", help="comma-separated node counts")
    parser.add_argument("--base", default="10.100", help="first two octets of the labs' /24s (default 10.100)")
    parser.add_argument("--json", action="store_true", help="one JSON line per size")
    parser.add_argument("--verbose", action="store_true", help="show the lab's own messages")
    args = parser.parse_args()
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes: comma-separated integers, not {args.sizes!r}")
    signal.signal(signal.SIGTERM, interrupted)
    ensure_image()
    log = print if args.verbose else (lambda m: None)
    failed = False
    with tempfile.TemporaryDirectory(prefix="labwarden-scale-") as tmp:
        for n in sizes:
            figures = measure(Path(tmp), n, args.base, log)
            failed |= "down_error" in figures
            if args.json:
                print(json.dumps(figures), flush=True)
            else:
                print(" ".join(f"{k}={v}" for k, v in figures.items()), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
