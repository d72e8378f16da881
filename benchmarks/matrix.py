"""How fast is the segmentation matrix? Prints figures; asserts nothing.

    python benchmarks/matrix.py [--topology homelab] [--sample 40] [--json]

Brings the lab up (the image must exist or is built first, not timed), probes
the full matrix through the batched agent (both address families in one batch, as
the suite does: `matrix_s`), then each family's cells on their own
(`matrix_v4_s`/`matrix_v4_cells`, `matrix_v6_s`/...; every node's controls ride
along each time, as in the suite), then times a sample of the same
probes done the naive way (one `docker exec` per probe, bash's /dev/tcp with a
1 s timeout) and extrapolates. With --json the last line is one JSON object.
"""

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labwarden.realise.image import ensure_image  # noqa: E402
from labwarden.realise.compose import ComposeLab  # noqa: E402
from labwarden.checks.matrix import matrix_flows, run_matrix  # noqa: E402
from labwarden.declared.lab import load_lab  # noqa: E402
from labwarden.realise import compose_config  # noqa: E402


def naive_probe(lab, flow) -> None:
    container = lab.containers[flow.src].name
    subprocess.run(["docker", "exec", container, "timeout", "1", "bash", "-c",
                    f"exec 3<>/dev/tcp/{flow.dst}/{flow.port}"], capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--topology", default="homelab")
    parser.add_argument("--sample", type=int, default=40, help="naive probes to time")
    parser.add_argument("--timeout", type=float, default=1.0,
                        help="the probes' wait for an answer, s (the suite's --lw-probe-timeout)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    topology, policy = load_lab(args.topology, resolve=compose_config.resolver())
    ensure_image()
    figures = {"topology": topology.name}
    started = time.monotonic()
    lab = ComposeLab(topology, policy, log=lambda m: None)
    try:
        lab.up()
        figures["up_s"] = round(time.monotonic() - started, 3)
        figures.update({f"up_{k}": round(v, 3) for k, v in lab.timings.items() if k != "up_s"})
        started = time.monotonic()
        run = asyncio.run(run_matrix(lab, policy, timeout=args.timeout))
        figures["matrix_s"] = round(time.monotonic() - started, 3)
        figures["verdicts"] = len(run.cells)
        figures["mismatches"] = sum(not c.ok for c in run.cells.values())
        figures["resent"] = len(run.reprobes.sent)
        rtts = sorted(c.observed.rtt_ms for c in run.cells.values() if c.observed.rtt_ms is not None)
        if rtts:  # how late the answers came: what a shorter --timeout would have to wait for
            figures["answered"] = len(rtts)
            figures["rtt_p50_ms"] = rtts[len(rtts) // 2]
            figures["rtt_p99_ms"] = rtts[int(len(rtts) * 0.99)]
            figures["rtt_max_ms"] = rtts[-1]
        figures["verdicts_per_s"] = round(len(run.cells) / figures["matrix_s"], 1)

        flows = matrix_flows(policy)
        for family in sorted({f.dst.version for f in flows}):
            mine = [f for f in flows if f.dst.version == family]
            started = time.monotonic()
            alone = asyncio.run(run_matrix(lab, policy, mine, timeout=args.timeout))
            figures[f"matrix_v{family}_s"] = round(time.monotonic() - started, 3)
            figures[f"matrix_v{family}_cells"] = len(alone.cells)
            figures[f"matrix_v{family}_mismatches"] = sum(not c.ok for c in alone.cells.values())

        tcp = [f for f in flows if f.proto == "tcp"]
        sample = random.Random(1).sample(tcp, min(args.sample, len(tcp)))
        started = time.monotonic()
        for flow in sample:
            naive_probe(lab, flow)
        naive_s = time.monotonic() - started
        figures["naive_sample"] = len(sample)
        figures["naive_verdicts_per_s"] = round(len(sample) / naive_s, 2)
        figures["naive_matrix_s_estimate"] = round(len(run.cells) / figures["naive_verdicts_per_s"], 1)
        figures["speedup"] = round(figures["verdicts_per_s"] / figures["naive_verdicts_per_s"], 1)
    finally:
        started = time.monotonic()
        lab.down()
        figures["down_s"] = round(time.monotonic() - started, 3)

    for key, value in figures.items():
        print(f"{key:>24}: {value}")
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
