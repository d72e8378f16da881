"""`labwarden learn`: probe a lab's full matrix and write policy.learned.yaml, the smallest
policy that allows exactly what was observed (labwarden.checks.learn), with a summary."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from labwarden.errors import ConfigError
from labwarden.checks.learn import learned, learned_text, probe_lab, summary
from labwarden.checks.tunnel import start
from labwarden.declared import fields
from labwarden.declared.compose_safety import ALLOW_HELP, ALLOW_OPTION
from labwarden.declared.inventory import apply_inventory, load_inventory
from labwarden.declared.lab import load_lab
from labwarden.declared.policy_file import load_policy
from labwarden.realise.cleanup import docker_client, kept_project, labwarden_projects
from labwarden.realise.compose import ComposeLab
from labwarden.realise.live import LiveLab

HELP = """\
examples:
  labwarden learn --topology homelab              probe the emulated lab, write topologies/homelab/policy.learned.yaml
  labwarden learn --topology homelab --router-config topologies/homelab/mutants/servers-to-personal.nft
  labwarden learn --topology homelab --lab live --inventory inventory.yaml    (read-only, paced)

The learned policy copies from the lab's policy.yaml what the matrix cannot observe (zones,
the public address, masquerade, hairpin, anti-spoofing, the SYN limit) and learns the rest:
services, allows by zone pair, port-forwards. Its summary names every flow the lab's own
policy.yaml denies and the lab let through. Exit status 1 when there is such a flow.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("learn", help="probe a lab and write the smallest policy that allows what it saw",
                       epilog=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--topology", default="homelab")
    p.add_argument("--router-config", default=None, help="load this router config instead of the lab's (docker)")
    p.add_argument("--lab", choices=("docker", "live"), default="docker")
    p.add_argument("--inventory", type=Path, default=None, help="a live lab's inventory (with --lab live)")
    p.add_argument("--out", type=Path, default=None,
                   help="where to write (default: policy.learned.yaml in the topology's folder)")
    p.add_argument("--probe-timeout", type=fields.probe_timeout, default=1.0)
    p.add_argument(ALLOW_OPTION, action="store_true", help=ALLOW_HELP)
    p.set_defaults(func=cmd_learn)


def _lab(args, log):
    topology, policy = load_lab(args.topology, allow_unsafe_compose=args.allow_unsafe_compose)
    if args.lab == "live":
        if args.inventory is None:
            raise ConfigError(args.topology, "--inventory", "--lab live needs --inventory FILE")
        if args.router_config is not None:
            raise ConfigError(args.router_config, "--router-config", "live mode never loads a router config")
        inventory = load_inventory(args.inventory, topology)
        topology, policy = apply_inventory(inventory, topology, policy)
        return topology, policy, LiveLab(topology, policy, inventory, log=log), False  # down(): its agents removed
    if args.router_config is not None:
        fields.read_text(Path(args.router_config), args.router_config, "--router-config")
    keep = kept_project(topology) in labwarden_projects(docker_client())
    return topology, policy, ComposeLab(topology, policy, router_config=args.router_config, keep=keep,
                                        log=log), keep


def cmd_learn(args) -> int:
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    topology, policy, lab, keep = _lab(args, log)
    try:
        observed, landed = asyncio.run(probe_lab(start(lab), policy, timeout=args.probe_timeout))
    finally:
        if not keep:
            lab.down()
    learn = learned(policy, observed, landed)
    origin = f"{topology.name}" + (f" with router config {args.router_config}" if args.router_config else "") + \
        (" (live)" if args.lab == "live" else "")
    out = args.out or topology.path / "policy.learned.yaml"
    out.write_text(learned_text(policy, learn, origin))
    check = load_policy(topology, out)
    wrong = [f for f, o in observed.items() if not check.expect(f).admits(o.verdict)]
    print(f"wrote {out}: {len(learn.allows)} allows, {len(learn.forwards)} forwards, from {len(observed)} flows")
    for line in summary(policy, learn):
        print("  " + line)
    print(f"judged by the learned policy, {len(observed) - len(wrong)} of {len(observed)} observations pass"
          + (f"; not: {', '.join(f.label(check) for f in wrong[:5])}" if wrong else ""))
    extra = [f for pair in learn.evidence.values() for f in pair if policy.expect(f).reached is None]
    return 1 if extra else 0
