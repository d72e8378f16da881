"""pytest-xdist (`pytest -n auto`, `-n 2`): the workers of a run share one lab and the
controller writes one report.

- The lab: the first worker that needs it brings it up, the others join it, the last one out
  takes it down (labwarden.realise.joined; the folder every worker of the run shares is
  `tmp_path_factory.getbasetemp().parent`, xdist's own pattern for fixtures run once).
- The checks: xdist spreads the tests, the matrix's cells too (they are parametrised tests);
  each worker probes the whole matrix once (the session's `matrix` fixture: one batched
  round, as a serial run's) and judges the cells it was given.
- The reports: a worker writes nothing. What its fixtures observed (the lab's header, every
  matrix, the suites' own sections and probes) travels to the controller in its
  `workeroutput` when it ends; outcomes and failures already do (xdist forwards every test's
  report). The controller merges them into one labwarden.json/.html, and pytest's junitxml
  on the controller writes one junit.xml. A matrix's cell is recorded as the worker that
  judged it saw it, so each record agrees with its test's outcome.
- Whether labwarden takes part (labwarden.plugin.passive) is decided on the workers, which
  collect; the controller is told when they end.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from labwarden.checks.matrix import render_grid
from labwarden.plugin import passive
from labwarden.plugin.reporting import PLUGIN_NAME, ReportPlugin
from labwarden.realise.joined import Shared

KEY = "labwarden"  # in a worker's workeroutput
FOLDER = "labwarden-lab"


def is_worker(config) -> bool:
    return hasattr(config, "workerinput")


def is_controller(config) -> bool:
    return (not is_worker(config) and config.pluginmanager.hasplugin("xdist")
            and getattr(config.option, "dist", "no") != "no")


def shared_lab(config, log) -> Shared:
    """The lab every worker of this run shares."""
    return Shared(config._tmp_path_factory.getbasetemp().parent / FOLDER, log)  # as xdist's own workers' basetemp


def configure(config, activate) -> None:
    """A worker collects what its fixtures observe; the controller merges it."""
    if is_worker(config) and not config.pluginmanager.has_plugin(PLUGIN_NAME):
        config.pluginmanager.register(WorkerReport(config), PLUGIN_NAME)
    elif is_controller(config):
        config.pluginmanager.register(Controller(config, activate), "labwarden-xdist-controller")


class WorkerReport(ReportPlugin):
    """What one worker's fixtures observed, for the controller (nothing written here)."""

    def __init__(self, config):
        super().__init__(config, Path("."))
        self.judged: set = set()  # the flows this worker's tests were parametrised with

    def pytest_runtest_setup(self, item):
        params = getattr(getattr(item, "callspec", None), "params", {})
        self.judged.update(v for v in params.values() if _hashable(v))

    def pytest_runtest_logreport(self, report):
        pass  # the controller counts outcomes and records failures: xdist sends it every report

    def pytest_sessionfinish(self, session, exitstatus):
        judged = {title: [[f.label(run.policy), str(f.dst), str(f.service)] for f in run.cells if f in self.judged]
                  for title, run in self.runs}
        self.config.workeroutput[KEY] = {
            "active": passive.is_active(self.config), "report": self.report.to_dict(),
            "judged": judged, "grids": [(title, render_grid(run)) for title, run in self.runs]}

    def pytest_terminal_summary(self, terminalreporter):
        pass


def _hashable(value) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


class Controller:
    """The controller's half: workers' observations merged into the run's one report."""

    def __init__(self, config, activate):
        self.config = config
        self.activate = activate
        self.outputs: dict[str, dict] = {}

    def pytest_testnodedown(self, node, error):
        output = getattr(node, "workeroutput", {}).get(KEY)
        if output is not None:
            self.outputs[node.gateway.id] = output

    @pytest.hookimpl(wrapper=True)
    def pytest_runtestloop(self, session):
        try:
            return (yield)
        finally:  # every worker is down: before sessionfinish writes the reports (ours, junit's)
            outputs = [self.outputs[w] for w in sorted(self.outputs, key=_worker_order)]
            if any(o["active"] for o in outputs) and not passive.is_active(self.config):
                self.activate(self.config)
            plugin = self.config.pluginmanager.get_plugin(PLUGIN_NAME)
            if not passive.is_active(self.config):
                passive.withdraw_junit(self.config)
            elif plugin is not None:
                merge(plugin.report, outputs)
                self.grids = [g for o in outputs[:1] for g in o["grids"]]

    def pytest_terminal_summary(self, terminalreporter):
        for title, grid in getattr(self, "grids", []):
            terminalreporter.write_sep("-", f"labwarden {title}")
            terminalreporter.write_line(grid)


def _worker_order(worker_id: str):
    digits = worker_id.lstrip("gw")
    return (int(digits) if digits.isdigit() else 0, worker_id)


def _key(probe: dict) -> tuple:
    """A probe as the matrix knows its flow (a label alone can name two: a node's two addresses)."""
    return probe["group"], probe["flow"], probe["dst_address"], probe["service"]


def merge(report, outputs: list[dict]) -> None:
    """The workers' reports into `report` (the controller's): the first lab header; every
    probe once (a matrix cell as the worker that judged it saw it, in the matrix's order);
    every matrix once, its reprobes and failed controls as any worker saw them; every
    section once."""
    docs = [o["report"] for o in outputs]
    head = next((d["header"] for d in docs if "topology" in d["header"]), None)
    if head is not None:
        report.header.update({**head, **report.header, "xdist_workers": len(outputs)})
    report.lab = report.lab or next((d["lab"] for d in docs if d.get("lab")), None)
    judge = {(group, *flow): i for i, o in enumerate(outputs) for group, flows in o["judged"].items()
             for flow in flows}
    by_worker = [{_key(p): p for p in d["probes"]} for d in docs]
    seen: set = set()
    for i, doc in enumerate(docs):
        fresh = set()
        for probe in doc["probes"]:
            key = _key(probe)
            if key in seen:
                continue  # an earlier worker's report has it
            fresh.add(key)
            report.probes.append(by_worker[judge.get(key, i)].get(key, probe))
        seen |= fresh
    matrices: dict[str, dict] = {}
    for doc in docs:
        for m in doc["matrices"]:
            if m["title"] not in matrices:
                matrices[m["title"]] = m = dict(m, failed_controls=dict(m["failed_controls"]),
                                                reprobed=list(m["reprobed"]), rate_limited=list(m["rate_limited"]))
                report.matrices.append(m)
                continue
            into = matrices[m["title"]]
            into["failed_controls"].update(m["failed_controls"])
            for name in ("reprobed", "rate_limited"):
                into[name] += [f for f in m[name] if f not in into[name]]
    for section in (s for d in docs for s in d["sections"]):
        if section not in report.sections:
            report.sections.append(section)
