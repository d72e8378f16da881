"""`labwarden diff`: what a router config change does to the network, measured.

    labwarden diff --topology homelab --before REF_OR_FILE [--after FILE]

Brings the lab up once with the `before` config, probes the whole
segmentation matrix, loads the `after` config into the running router (its
router kind's `load` replaces the whole ruleset; each config's kind is detected
from its content, so the two may differ: nftables before, iptables after),
probes again, re-probes every flow whose verdict changed to confirm it, and
prints the changes::

    servers/web -> personal/laptop tcp/22: filtered -> open  VIOLATES the policy (expected filtered, default deny)

A config is a file, or a git revision of the topology's own router config
(`HEAD~1`, `main`: ``git show REF:topologies/homelab/router/nftables.conf``),
or an explicit ``REF:path``. Exit status: 0 when the after config keeps the
policy, 1 when it violates it (any mismatch), 2 when the diff could not be
made, 130 when interrupted (Ctrl-C, SIGTERM: the lab is removed first). Both
matrices and the changes also go into DIR/diff.{json,html}.

Probes use fresh source ports and ICMP ids, so connection tracking entries
left by the first matrix do not let the second one's flows in.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from labwarden.errors import LabwardenError, ProbeError
from labwarden.realise import compose_config
from labwarden.realise.compose import ComposeLab
from labwarden.realise.lab import Lab
from labwarden.checks.matrix import MatrixRun, render_grid, run_matrix
from labwarden.checks.tunnel import start
from labwarden.declared.fields import probe_timeout, read_text, shown
from labwarden.declared.compose_safety import ALLOW_HELP, ALLOW_OPTION
from labwarden.cli.helptext import command_help
from labwarden.declared.lab import load_lab
from labwarden.probe import NodeJob
from labwarden import routers
from labwarden.probe.bound import SHORT_S, run_bounded
from labwarden.routers.nftables.trace import stdin_as
from labwarden.report.header import header, tool_version
from labwarden.report.model import Report


SHOWN = 200  # changed flows printed; the report has them all


@dataclass(frozen=True)
class Config:
    """A router config to load: where it came from, and its text."""
    shown: str
    text: str
    path: Path  # a file holding the text (a temporary one for a git revision)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def resolve_config(spec: str, topology, router: str, scratch: Path) -> Config:
    """A file path, a git revision of the topology's router config, or REF:path."""
    given = Path(spec)
    if given.is_file():
        return Config(str(spec), read_text(given, str(spec), "config"), given)
    default = topology.nodes[router].firewall
    if ":" in spec:
        ref, _, rel = spec.partition(":")
        cwd = Path.cwd()
    else:
        if default is None:
            raise LabwardenError(f"{spec}: no such file, and the router of {topology.name} names no "
                                 "firewall file to look up in git")
        ref, cwd = spec, default.parent
    top = _git(cwd, "rev-parse", "--show-toplevel", what=f"{spec}: no such file, and not in a git work tree")
    if ":" not in spec:
        rel = default.resolve().relative_to(Path(top.strip()).resolve()).as_posix()
    text = _git(top.strip(), "show", f"{ref}:{rel}",
                what=f"{spec}: no such file, and git has no {ref}:{rel}")
    path = scratch / f"{ref.replace('/', '_').replace('~', '-')}.nft"
    path.write_text(text)
    return Config(f"{ref}:{rel}", text, path)


def _git(cwd, *args, what: str) -> str:
    proc = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True)
    if proc.returncode != 0:
        raise LabwardenError(f"{what} ({proc.stderr.decode(errors='replace').strip()})")
    try:
        return proc.stdout.decode()
    except UnicodeDecodeError as e:
        raise LabwardenError(f"`git {' '.join(args)}` gave bytes that are not UTF-8 text "
                             f"(offset {e.start}): not a router config") from None


@dataclass(frozen=True)
class Change:
    label: str
    before: str
    after: str
    expected: str
    reason: str
    ok_after: bool
    ok_before: bool

    def line(self) -> str:
        if not self.ok_after:
            judged = f"VIOLATES the policy (expected {self.expected}, {self.reason})"
        elif not self.ok_before:
            judged = "now as the policy says"
        else:
            judged = "both allowed by the policy"
        return f"{self.label}: {self.before} -> {self.after}  {judged}"


def changes(before: MatrixRun, after: MatrixRun) -> list[Change]:
    policy = after.policy
    found = []
    for flow, cell in after.cells.items():
        old = before.cells.get(flow)
        if old is None or old.observed.verdict == cell.observed.verdict:
            continue
        found.append(Change(flow.label(policy), old.observed.verdict, cell.observed.verdict,
                            str(cell.expected), cell.expected.reason, cell.ok, old.ok))
    return sorted(found, key=lambda c: (c.ok_after, c.label))


async def load_config(lab: Lab, config: Config) -> None:
    router = lab.policy.router
    try:
        await lab.run({router: NodeJob(setup=routers.detect(config.text).load(config.text, config.path))})
    except ProbeError as err:
        raise LabwardenError(f"loading {config.shown} into {router} failed: "
                             f"{stdin_as(str(err), config.shown)}") from None


async def measure(lab: Lab, before: Config, after: Config, timeout: float):
    """(before run, after run, confirmed after run): the router already holds `before`."""
    policy = lab.policy
    first = await run_matrix(lab, policy, timeout=timeout)
    await load_config(lab, after)
    second = await run_matrix(lab, policy, timeout=timeout)
    changed = [f for f in second.cells if f in first.cells
               and first.cells[f].observed.verdict != second.cells[f].observed.verdict]
    if changed:  # a change is reported only if a second look sees it too
        again = await run_matrix(lab, policy, flows=changed, timeout=timeout)
        for flow in changed:
            if again.cells[flow].observed.verdict != second.cells[flow].observed.verdict:
                second.cells[flow] = again.cells[flow]
    return first, second


def diff(topology, policy, before_spec: str, after_spec: str | None, *, timeout: float = 1.0,
         report_dir: Path | None = Path("reports"), out=print, log=None) -> int:
    log = log or (lambda m: print(m, file=sys.stderr))
    with tempfile.TemporaryDirectory(prefix="labwarden-diff-") as scratch:
        scratch = Path(scratch)
        before = resolve_config(before_spec, topology, policy.router, scratch)
        after = resolve_config(after_spec or shown(topology.nodes[policy.router].firewall),
                               topology, policy.router, scratch)
        lab = ComposeLab(topology, policy, router_config=before.path, log=log)
        try:
            start(lab)
            log(f"labwarden: lab {lab.project} up with {before.shown}; probing, then loading {after.shown}")
            first, second = asyncio.run(measure(lab, before, after, timeout))
            router = lab.transports[policy.router]
            kinds = {routers.detect(c.text) for c in (before, after)}
            versions = {k.tool: tool_version(k.version_command, lambda cmd: run_bounded(
                router.host, SHORT_S, "the router", cmd).stdout) for k in kinds}
        finally:
            lab.down()
    found = changes(first, second)
    violations = [c for c in second.cells.values() if not c.ok]
    out(f"before: {before.shown} ({first.summary()})")
    out(f"after:  {after.shown} ({second.summary()})")
    out(f"{len(found)} flow{'s' if len(found) != 1 else ''} changed verdict:" if found
        else "no flow changed verdict")
    for change in found[:SHOWN]:
        out("  " + change.line())
    if len(found) > SHOWN:
        out(f"  ... and {len(found) - SHOWN} more (all of them in the report)")
    old_violations = [c for f, c in second.cells.items() if not c.ok and f in first.cells
                      and not first.cells[f].ok and first.cells[f].observed.verdict == c.observed.verdict]
    if old_violations:
        out(f"{len(old_violations)} violation(s) already present before, unchanged:")
        for cell in old_violations[:20]:
            out("  " + cell.message(policy))
    for src, cells in second.failed_controls.items():
        out(f"positive controls of {policy.label(src)} failed after the change: "
            + "; ".join(c.message(policy) for c in cells))
    out(render_grid(second))
    failed = bool(violations or second.failed_controls)
    out(f"after config {'VIOLATES' if failed else 'keeps'} the policy of {topology.name}")
    if report_dir is not None:
        report = Report(header=header(topology, policy, mode="emulated (docker), diff",
                                      before=before.shown, before_sha256=before.sha256,
                                      probe_timeout_s=timeout))
        report.header.update(router_config=after.shown, router_config_sha256=after.sha256)
        report.header.update(routers.detect(after.text).header())
        report.header["versions"].update(versions)
        report.header["command"] = "labwarden " + " ".join(sys.argv[1:])
        report.add_matrix(first, f"before: {before.shown}")
        report.add_matrix(second, f"after: {after.shown}")
        report.add_section("table", f"flows whose verdict changed ({len(found)})", {
            "columns": ["flow", "before", "after", "policy expects", "why"],
            "rows": [{"cells": [c.label, c.before, c.after, c.expected, c.reason], "bad": not c.ok_after}
                     for c in found]})
        for path in report.save(Path(report_dir), "diff"):
            out(f"report: {path}")
    return 1 if failed else 0


def add_parser(sub) -> None:
    p = sub.add_parser("diff", **command_help("diff"))
    p.add_argument("--topology", default="homelab", metavar="NAME|PATH",
                   help="topology name or folder (default: homelab)")
    p.add_argument("--before", required=True, help="file, git revision of the router config, or REF:path")
    p.add_argument("--after", default=None, help="file or revision (default: the topology's own config)")
    p.add_argument("--probe-timeout", type=probe_timeout, default=1.0, metavar="S",
                   help="seconds a probe waits for an answer (default 1.0)")
    p.add_argument("--report-dir", type=Path, default=Path("reports"), metavar="DIR",
                   help="where diff.json and diff.html go (default: reports/)")
    p.add_argument(ALLOW_OPTION, action="store_true", help=ALLOW_HELP)
    p.set_defaults(func=cmd_diff)


def cmd_diff(args) -> int:
    topology, policy = load_lab(args.topology, allow_unsafe_compose=args.allow_unsafe_compose,
                                resolve=compose_config.resolver())
    return diff(topology, policy, args.before, args.after, timeout=args.probe_timeout,
                report_dir=args.report_dir)
