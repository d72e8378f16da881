"""labwarden's pytest plugin: options, and the session's topology, policy and lab.

Registered through the `pytest11` entry point, so any repository with
labwarden installed can use these fixtures. Every setting is an overridable
fixture (`labwarden_topology`, `labwarden_policy`, `labwarden_router_config`)
or an option:

    --lw-topology NAME|PATH     the lab to run (default: homelab)
    --lw-router-config PATH     load this config into the router instead (its kind, nftables or
                                iptables, detected from its content)
    --lw-keep-lab               leave the lab up afterwards, and reuse it next run
    --lw-attach PROJECT         run on the running lab PROJECT of this topology, which another
                                process brought up and takes down: made as fresh as a new lab
                                first (the router's config loaded, conntrack emptied, tunnel clients
                                and impairments restarted) and left running (test_mutants.py)
    --lw-probe-timeout S        how long a probe waits before calling it filtered
    --lw-fuzz-profile NAME      hypothesis profile of suites/fuzz: ci (default) or nightly
    --lw-fuzz-replay FLOW       the one flow suites/fuzz/test_replay.py sends
    --lw-report-dir DIR         where junit.xml, labwarden.json and labwarden.html go (default: reports/)
    --lw-impair METHOD          impaired links: auto (netem, else the delay line), netem, delayline, none
    --lw-lab live --lw-inventory PATH   run against the real hosts of an inventory, read-only
    --lw-allow-unsafe-compose   run a compose file that reaches the host (refused by default:
                                labwarden.declared.compose_safety)

Every option has the `--lw-` prefix (dest `lw_...`), so none can clash with another
plugin's (pytest-ansible's --inventory, say); the `labwarden` CLI keeps its short names.

Configuration is loaded and checked at configure time, before collection and before anything starts:
a mistake ends the run with the file, field and problem.
"""

from pathlib import Path

import docker
import pytest
import pytest_asyncio

from labwarden.errors import ConfigError, LabwardenError
from labwarden.realise.cleanup import sigterm_interrupts
from labwarden.realise import compose_config
from labwarden.realise.compose import ComposeLab
from labwarden.realise.joined import JoinedLab
from labwarden.checks.matrix import check_controls, matrix_flows, run_matrix
from labwarden.checks.tunnel import start
from labwarden.declared import fields
from labwarden.declared.compose_safety import ALLOW_HELP, PYTEST_ALLOW_OPTION
from labwarden.declared.lab import load_lab
from labwarden.fuzz.flows.flow import FuzzFlow

from labwarden.plugin import livemode, passive, reporting, workers

_CONFIG = pytest.StashKey[tuple]()
_REPLAY = pytest.StashKey[object]()


_DEFAULTS: dict[str, object] = {}  # dest -> default of every option: a different value makes the run use labwarden


class _Recording:
    """The option group, noting each option's default."""

    def __init__(self, group):
        self.group = group

    def addoption(self, *names, **kwargs):
        self.group.addoption(*names, **kwargs)
        dest = kwargs.get("dest") or names[0].lstrip("-").replace("-", "_")
        _DEFAULTS[dest] = kwargs.get("default", False if kwargs.get("action") == "store_true" else None)


def pytest_addoption(parser):
    group = _Recording(parser.getgroup("labwarden"))
    group.addoption("--lw-topology", default="homelab", metavar="NAME|PATH",
                    help="topology name or folder (default: homelab)")
    group.addoption("--lw-router-config", default=None, type=Path, metavar="FILE",
                    help="router config (nftables, or an iptables-restore file) to load into the lab router "
                         "instead of the topology's own")
    group.addoption("--lw-keep-lab", action="store_true",
                    help="leave the lab running after the run and reuse it next time")
    group.addoption("--lw-attach", default=None, metavar="PROJECT",
                    help="run on this running lab of the topology (another run's: it holds the lab's "
                         "ranges and takes it down), made as fresh as a new lab first and left running")
    group.addoption("--lw-probe-timeout", default=1.0, type=fields.probe_timeout, metavar="S",
                    help="seconds a probe waits for an answer (default 1.0)")
    group.addoption("--lw-fuzz-profile", default="ci", choices=("ci", "nightly"),
                    help="hypothesis profile of suites/fuzz: ci (fixed seed) or nightly (default ci)")
    group.addoption("--lw-fuzz-replay", default=None, metavar="FLOW",
                    help="suites/fuzz/test_replay.py sends this one flow ('SRC DST PROTO[/PORT] [KIND=V]')")
    group.addoption("--lw-impair", default="auto", choices=("auto", "netem", "delayline", "none"),
                    help="how the lab's impaired links are emulated: tc netem where the kernel has it, "
                         "else the userspace delay line (auto, the default), or not at all (none)")
    group.addoption(PYTEST_ALLOW_OPTION, action="store_true", help=ALLOW_HELP)
    reporting.addoption(group)
    livemode.addoption(group)


@pytest.hookimpl(tryfirst=True)  # before junitxml's: the report folder's junit.xml is the default
def pytest_configure(config):
    reporting.configure(config)
    workers.configure(config, _activate)  # pytest-xdist: one lab for the workers, one report
    livemode.configure(config)
    config.addinivalue_line("markers", "lab: the test brings up (or uses) a Docker lab")
    # passive unless the run uses labwarden (labwarden.plugin.passive); a --lw- option says so now
    given = any(a.startswith("--lw-") for a in config.invocation_params.args)
    if given or passive.explicit(config, _DEFAULTS):
        _activate(config)


def pytest_collection_finish(session):
    """Without a --lw- option, the collected tests tell whether labwarden takes part."""
    config = session.config
    if passive.is_active(config):
        return  # (an xdist worker decides for itself and tells the controller: plugin.workers)
    if any(passive.uses_labwarden(item) for item in session.items):
        _activate(config)
    else:
        passive.withdraw_junit(config)  # no reports, no junit.xml of ours


def _activate(config) -> None:
    try:
        # the lab (the default one too) is checked before any test runs: a mistake ends
        # the run at once with one line naming file, field and problem (exit 4), not with
        # one collection error per suite file
        lab_config(config)
    except pytest.UsageError:
        passive.withdraw_junit(config)
        raise
    # Ctrl-C and SIGTERM both unwind through fixture teardown: nothing is left running.
    sigterm_interrupts()
    passive.mark_active(config)


def lab_config(config) -> tuple:
    """(topology, policy) of this run, loaded once; a config mistake ends the run."""
    if _CONFIG not in config.stash:
        try:
            topology, policy = load_lab(config.getoption("--lw-topology"), resolve=compose_config.resolver(),
                                        allow_unsafe_compose=config.getoption(PYTEST_ALLOW_OPTION))
            router_config = config.getoption("--lw-router-config")
            if router_config is not None and not router_config.is_file():
                raise ConfigError(router_config, "--lw-router-config", "no such file")
            if router_config is not None:
                fields.read_text(router_config, str(router_config), "--lw-router-config")
            if config.getoption("--lw-attach") is not None and (config.getoption("--lw-keep-lab")
                                                               or livemode.is_live(config)):
                raise ConfigError("--lw-attach", config.getoption("--lw-attach"), "a lab attached to is another "
                                  "run's: it cannot be kept (--lw-keep-lab), nor be a live lab")
            topology, policy = livemode.apply(config, topology, policy)  # live: the real addresses
        except ConfigError as err:
            raise pytest.UsageError(f"labwarden: {err}") from None
        config.stash[_CONFIG] = (topology, policy)
        config.stash[_REPLAY] = _replayed(config, policy)
        reporting.configured(config, topology, policy)
    return config.stash[_CONFIG]


def _replayed(config, policy) -> FuzzFlow | None:
    """The flow of --lw-fuzz-replay, checked with the lab's config: a malformed one ends the run."""
    spec = config.getoption("--lw-fuzz-replay")
    if spec is None:
        return None
    try:
        return FuzzFlow.parse(spec, policy)
    except ValueError as err:
        raise pytest.UsageError(f"labwarden: --lw-fuzz-replay: {err}") from None


def pytest_generate_tests(metafunc):
    if "matrix_flow" in metafunc.fixturenames:
        try:
            _, policy = lab_config(metafunc.config)
        except pytest.UsageError:
            return  # said once, as the collection ends (_activate), not once per suite file
        flows = matrix_flows(policy)
        metafunc.parametrize("matrix_flow", flows, ids=[f.label(policy) for f in flows])


@pytest.fixture(scope="session")
def labwarden_topology(pytestconfig):
    return lab_config(pytestconfig)[0]


@pytest.fixture(scope="session")
def labwarden_policy(pytestconfig):
    return lab_config(pytestconfig)[1]


@pytest.fixture(scope="session")
def labwarden_router_config(pytestconfig):
    return pytestconfig.getoption("--lw-router-config")


@pytest.fixture(scope="session")
def probe_timeout(pytestconfig) -> float:
    return pytestconfig.getoption("--lw-probe-timeout")


@pytest.fixture(scope="session")
def fuzz_replay_flow(pytestconfig) -> FuzzFlow | None:
    """The flow --lw-fuzz-replay names (parsed and checked at start), or None."""
    lab_config(pytestconfig)
    return pytestconfig.stash[_REPLAY]


@pytest.fixture(scope="session")
def labwarden_report(pytestconfig):
    """The run's report (labwarden.report.model.Report): suites add observations and sections to it."""
    return reporting.report_of(pytestconfig)


@pytest.fixture(scope="session")
def lab(request, pytestconfig, labwarden_topology, labwarden_policy, labwarden_router_config):
    """The running lab of this session (a labwarden.realise.lab.Lab): up once, its tunnels
    waited for, torn down at the end (also on failure and Ctrl-C).

    A lab that cannot start fails the first test that needs it, with the reason, and stops
    the run there: every other test would only repeat the same error."""
    keep = pytestconfig.getoption("--lw-keep-lab")
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")

    def log(message):
        if reporter is not None:
            reporter.write_line(message)

    shared = None  # pytest-xdist: the workers of the run share one lab (labwarden.plugin.workers)
    options = dict(router_config=labwarden_router_config, log=log, impair=pytestconfig.getoption("--lw-impair"))
    try:
        if livemode.is_live(pytestconfig):
            instance, keep = livemode.live_lab(pytestconfig, labwarden_topology, labwarden_policy, log), False
            running = start(instance)
        elif workers.is_worker(pytestconfig):
            shared = workers.shared_lab(pytestconfig, log)
            running = instance = shared.in_turns(shared.enter(
                lambda: start(ComposeLab(labwarden_topology, labwarden_policy, keep=keep,
                                         attach=pytestconfig.getoption("--lw-attach"), **options)),
                lambda state: JoinedLab(labwarden_topology, labwarden_policy, state, **options).up()))
        else:
            instance = ComposeLab(labwarden_topology, labwarden_policy, keep=keep,
                                  attach=pytestconfig.getoption("--lw-attach"), **options)
            running = start(instance)  # it tears down what it started when it fails
        failure = None
    except (LabwardenError, docker.errors.DockerException) as err:
        failure = f"labwarden: the lab could not start: {err}"
    if failure:  # outside the except: the message alone, not a chain of two
        request.session.shouldstop = "the lab could not start (the error above says why); no test ran on it"
        pytest.fail(failure, pytrace=False)
    try:
        yield running
    finally:
        if shared is not None:
            shared.leave(instance)
        elif not keep:
            instance.down()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def matrix(lab, labwarden_policy, probe_timeout):
    """The whole segmentation matrix, probed once per session."""
    return await run_matrix(lab, labwarden_policy, timeout=probe_timeout)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def positive_controls(lab, labwarden_policy, probe_timeout):
    """Every node's positive controls (labwarden.checks.matrix.Controls), probed on their own: a
    check that judges a node's silence calls `positive_controls.require(node)` from a
    fixture, so that it errors (never passes) when they failed."""
    return await check_controls(lab, labwarden_policy, timeout=probe_timeout)


@pytest.fixture
def matrix_cell(matrix, matrix_flow):
    """The cell of one flow; an error (never a pass) when nobody answered it and the controls
    of its source or of the node it is sent to failed (a dead node is silent whatever the
    router does, and a probe its node could not send proves nothing either way). Only a
    cell with an answer from the network, or with none where one was due, is judged
    whatever the controls say: a wrong answer, or a missing one, is no pass to withhold."""
    cell = matrix.cells[matrix_flow]
    missed_answer = not cell.ok and cell.observed.verdict == "filtered"
    if cell.observed.by is None and not missed_answer:
        matrix.controls.require(*filter(None, (matrix_flow.src, matrix_flow.dst_node)))
    return cell
