"""What a mutant's lab costs: its own (up, tunnels waited for, down) or the shared one
(`--lw-attach`: made as fresh as a new lab). Prints figures; asserts nothing.

    python benchmarks/mutant_lab.py [--topology homelab] [--rounds 3] [--json]

Brings the lab up as a mutant's run did before labs were shared (timed until its tunnels
answer, as the plugin starts one; time spent waiting for another run on its subnets is
left out and shown apart), attaches to it `--rounds` times as each mutant's run does
now (each attach timed the same way), and takes it down (timed). The image must exist or is
built first, not timed. With --json the last line is one JSON object.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labwarden.checks.tunnel import start  # noqa: E402
from labwarden.declared.lab import load_lab  # noqa: E402
from labwarden.realise import compose_config  # noqa: E402
from labwarden.realise.compose import ComposeLab  # noqa: E402
from labwarden.realise.image import ensure_image  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--topology", default="homelab")
    parser.add_argument("--rounds", type=int, default=3, help="attaches to time")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    topology, policy = load_lab(args.topology, resolve=compose_config.resolver())
    ensure_image()
    figures = {"topology": topology.name}
    lab = ComposeLab(topology, policy, log=lambda m: None)
    try:
        started = time.monotonic()
        start(lab)
        figures["lock_wait_s"] = round(lab.timings["lock_s"], 3)  # for other runs of its ranges: not counted
        figures["own_up_s"] = round(time.monotonic() - started - lab.timings["lock_s"], 3)
        attaches, fresh = [], []
        for _ in range(args.rounds):
            started = time.monotonic()
            attached = start(ComposeLab(topology, policy, attach=lab.project, log=lambda m: None))
            attaches.append(round(time.monotonic() - started, 3))
            fresh.append(round(attached.timings["fresh_s"], 3))
        figures["attach_s"], figures["attach_fresh_s"] = attaches, fresh
    finally:
        started = time.monotonic()
        lab.down()
        figures["own_down_s"] = round(time.monotonic() - started, 3)
    own = figures["own_up_s"] + figures["own_down_s"]
    shared = statistics.median(attaches) if attaches else float("nan")
    figures["saved_per_mutant_s"] = round(own - shared, 3)
    if args.json:
        print(json.dumps(figures))
    else:
        print(f"{topology.name}: own lab {figures['own_up_s']:.1f} s up + {figures['own_down_s']:.1f} s down; "
              f"attached {', '.join(f'{a:.1f}' for a in attaches)} s (of which made fresh: "
              f"{', '.join(f'{a:.1f}' for a in fresh)} s; the rest: impairments, tunnel clients, readiness); "
              f"{figures['saved_per_mutant_s']:.1f} s saved per mutant")
    return 0


if __name__ == "__main__":
    sys.exit(main())
