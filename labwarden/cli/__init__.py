"""`labwarden up|down|status|matrix|diff|init|learn`: the lab outside pytest.

    labwarden up [--topology homelab] [--router-config FILE]   start a lab and leave it running
                                          (up, matrix, diff: --allow-unsafe-compose runs a compose
                                          file that reaches the host; refused by default)
    labwarden down [--topology homelab | --all]                remove it (or every labwarden lab)
    labwarden down --topology homelab --stale  remove only the labs killed runs of it left (not
                                          its kept lab, nor one a live run is using: CI's clean-up)
    labwarden status                                           list the running labs
    labwarden matrix [--topology homelab] [--router-config FILE]
                     probe the segmentation matrix (on the running lab, else a temporary
                     one) and print the grid; exit 1 on any mismatch
    labwarden diff --topology homelab --before REF_OR_FILE [--after FILE]
                     probe the matrix under both router configs (one lab), print the flows
                     whose verdict changed; exit 1 when the after config violates the policy
    labwarden init NAME --openwrt BACKUP [--ruleset FILE]
                     draft topologies/NAME (compose, policy, ruleset) from an OpenWrt backup
    labwarden learn [--topology homelab] [--router-config FILE | --lab live --inventory FILE]
                     probe the matrix, write policy.learned.yaml; exit 1 when the lab lets
                     through what policy.yaml denies

Exit status: 0 ok, 1 the policy is violated (matrix, diff), 2 could not run (a bad
option or input, Docker unreachable, a lab that cannot start, a probe that failed or
outlived its bound), 130 interrupted (Ctrl-C or SIGTERM). An interrupted or killed
(SIGTERM) command removes the lab it started before it exits (not a kept lab that
`up` had finished starting, nor one it only used).
"""

import argparse
import asyncio
import subprocess
import sys
from pathlib import Path
import traceback

import docker

from labwarden import __version__
from labwarden.cli import diff, helptext, init, learn
from labwarden.errors import ConfigError, LabwardenError
from labwarden.realise.cleanup import (docker_client, down_all, down_stale, kept_project, labwarden_projects,
                                       remove_project, sigterm_interrupts)
from labwarden.realise import compose_config
from labwarden.realise.compose import ComposeLab
from labwarden.checks.matrix import render_grid, run_matrix
from labwarden.checks.tunnel import start
from labwarden.declared import fields
from labwarden.declared.compose_safety import ALLOW_HELP, ALLOW_OPTION
from labwarden.declared.lab import load_lab
from labwarden.declared.topology import load_topology


def _load(args):
    if getattr(args, "router_config", None) is not None:  # checked before anything starts
        if not Path(args.router_config).is_file():
            raise ConfigError(args.router_config, "--router-config", "no such file")
        fields.read_text(args.router_config, args.router_config, "--router-config")
    return load_lab(args.topology, allow_unsafe_compose=args.allow_unsafe_compose, resolve=compose_config.resolver())


def cmd_up(args):
    topology, policy = _load(args)
    lab = start(ComposeLab(topology, policy, router_config=args.router_config, keep=True,
                           log=lambda m: print(m, file=sys.stderr)))
    print(f"lab {lab.project} is up ({lab.timings['up_s']:.1f} s): {', '.join(topology.nodes)}")
    return 0


def cmd_down(args):
    if args.all:
        removed = down_all()
        print("removed: " + (", ".join(removed) if removed else "nothing"))
    else:
        topology = load_topology(args.topology, allow_unsafe_compose=True,  # removes, starts nothing
                                 resolve=compose_config.resolver())
        if args.stale:
            stale = down_stale(topology)
            print(f"a run of {topology.name} is live: its lab is left alone" if stale is None
                  else "removed: " + (", ".join(stale) if stale else "nothing"))
        else:
            remove_project(docker_client(), kept_project(topology))
            print(f"removed {kept_project(topology)}")
    return 0


def cmd_status(args):
    client = docker_client()
    projects = sorted(labwarden_projects(client))
    if not projects:
        print("no labwarden lab is running")
    for project in projects:
        containers = client.containers.list(
            all=True, filters={"label": f"com.docker.compose.project={project}"})
        states = ", ".join(f"{c.labels['com.docker.compose.service']}={c.status}" for c in containers)
        print(f"{project}: {states}")
    return 0


def cmd_matrix(args):
    topology, policy = _load(args)
    keep = kept_project(topology) in labwarden_projects(docker_client())
    lab = ComposeLab(topology, policy, router_config=args.router_config, keep=keep,
                     log=lambda m: print(m, file=sys.stderr))
    try:
        run = asyncio.run(run_matrix(start(lab), policy, timeout=args.probe_timeout))
    finally:
        if not keep:
            lab.down()
    print(render_grid(run))
    for cell in run.cells.values():
        if not cell.ok:
            print("  " + cell.message(policy))
    for src, cells in run.failed_controls.items():
        print(f"  positive controls of {policy.label(src)} failed: "
              + "; ".join(c.message(policy) for c in cells))
    return 1 if run.failed_controls or any(not c.ok for c in run.cells.values()) else 0


def main(argv=None) -> int:
    sigterm_interrupts()  # every lab this command started is removed on the way out
    parser = argparse.ArgumentParser(prog="labwarden", description=__doc__.split("\n")[0],
                                     epilog=helptext.EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"labwarden {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, func in (("up", cmd_up), ("down", cmd_down), ("status", cmd_status), ("matrix", cmd_matrix)):
        p = sub.add_parser(name, **helptext.command_help(name))
        p.set_defaults(func=func)
        if name != "status":
            p.add_argument("--topology", default="homelab", metavar="NAME|PATH",
                           help="topology name or folder (default: homelab)")
        if name in ("up", "matrix"):
            p.add_argument("--router-config", default=None, metavar="FILE",
                           help="load this router config instead of the topology's own")
            p.add_argument(ALLOW_OPTION, action="store_true", help=ALLOW_HELP)
        if name == "matrix":
            p.add_argument("--probe-timeout", type=fields.probe_timeout, default=1.0, metavar="S",
                           help="seconds a probe waits for an answer (default 1.0)")
        if name == "down":
            p.add_argument("--all", action="store_true", help="remove every labwarden lab")
            p.add_argument("--stale", action="store_true",
                           help="remove only the topology's labs that no live run holds (left by a killed run), "
                                "not its kept lab")
    diff.add_parser(sub)
    init.add_parser(sub)
    learn.add_parser(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (LabwardenError, docker.errors.DockerException, OSError,
            subprocess.SubprocessError) as err:  # one line, no traceback
        print("labwarden: " + " ".join(str(err).split()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("labwarden: interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug: its traceback, but never the exit status of a violated policy
        traceback.print_exc()
        return 2

