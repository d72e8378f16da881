"""suites/fuzz: hypothesis profiles, and the fuzzers the tests share.

Profiles (`--lw-fuzz-profile`, default ci):

- ci: a fixed seed (derandomized, so a CI run is reproducible), few examples;
- nightly: many examples, a random seed; rule fuzzing keeps its failures in
  the hypothesis database under reports/hypothesis (the next run tries them
  first). Flow fuzzing records its failures and goes on drawing (labwarden.fuzz.flows.hunt):
  each failure prints the command that replays it.

Each hypothesis example is a batch of flows (or one ruleset with its flows):
the counts below are batches, not flows.
"""

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.database import DirectoryBasedExampleDatabase

from labwarden.fuzz.flows.aims import config_aims
from labwarden.fuzz.flows.fuzzer import FlowFuzzer
from labwarden.fuzz.rules import RuleChecker
from labwarden.checks.matrix import LOSS_RETRIES
from labwarden.routers.nftables.verdicts import World

EXAMPLES = {  # per test kind: hypothesis examples under each profile
    "ci": {"probes": 12, "odd": 8, "rules": 30},   # rules: 4 distinct rulesets an example; >= 100 in all
    "nightly": {"probes": 300, "odd": 200, "rules": 400},
}
FUZZ_TIMEOUT = 0.2     # seconds a fuzz batch waits for answers (a mismatch is re-checked with --lw-probe-timeout)
RULES_TIMEOUT = 0.1    # the same per ruleset: in-lab answers take about a millisecond
_STATS = pytest.StashKey[list]()


def _base(profile: str, rootpath) -> settings:
    common = dict(deadline=None, print_blob=profile == "nightly", report_multiple_bugs=False,
                  suppress_health_check=list(HealthCheck))
    if profile == "ci":
        return settings(derandomize=True, database=None,
                        phases=[Phase.explicit, Phase.generate, Phase.shrink], **common)
    return settings(derandomize=False, database=DirectoryBasedExampleDatabase(rootpath / "reports" / "hypothesis"),
                    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink], **common)


def pytest_configure(config):
    config.stash[_STATS] = []


def pytest_collection_modifyitems(config, items):
    if config.getoption("--lw-fuzz-replay", None):
        return
    skip = pytest.mark.skip(reason="replays one flow: give --lw-fuzz-replay 'SRC DST PROTO[/PORT] [KIND=VALUE]'")
    for item in items:
        if item.path.name == "test_replay.py":
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter, config):
    for line in config.stash.get(_STATS, []):
        terminalreporter.write_line(f"labwarden fuzz: {line}")


@pytest.fixture(scope="session")
def fuzz_profile(pytestconfig) -> str:
    return pytestconfig.getoption("--lw-fuzz-profile", "ci")


@pytest.fixture(scope="session")
def fuzz_settings(pytestconfig, fuzz_profile):
    """fuzz_settings(kind): hypothesis settings for a test of that kind under the profile."""
    base = _base(fuzz_profile, pytestconfig.rootpath)
    return lambda kind: settings(base, max_examples=EXAMPLES[fuzz_profile][kind])


@pytest.fixture
def fuzz_stats(pytestconfig, request):
    """Call with a line of figures: printed in the run's summary."""
    return lambda line: pytestconfig.stash[_STATS].append(f"{request.node.name}: {line}")


@pytest.fixture(scope="session")
def router_config_text(lab):
    """The router's nftables config when the lab is ours, else None."""
    path = lab.router_firewall()
    return path.read_text() if path else None


@pytest.fixture(scope="session")
def aims(labwarden_policy, router_config_text):
    return config_aims(labwarden_policy, router_config_text) if router_config_text else []


def link_allowance(lab) -> tuple[float, int]:
    """Seconds the lab's impaired links may add to a round trip (every link crossed, jitter
    both ways: a bound), and how often a silence is re-sent when a link loses packets."""
    impairment = lab.impairment
    return impairment.round_trip_allowance_s(), LOSS_RETRIES if impairment.lossy else 0


@pytest.fixture
def flow_fuzzer(lab, labwarden_policy, probe_timeout):
    extra, retries = link_allowance(lab)
    return FlowFuzzer(lab, labwarden_policy, timeout=min(FUZZ_TIMEOUT, probe_timeout) + extra,
                      confirm_timeout=probe_timeout + extra, loss_retries=retries)


@pytest.fixture
def rule_checker(lab, labwarden_policy, probe_timeout):
    extra, retries = link_allowance(lab)
    return RuleChecker(lab, labwarden_policy, World.of(labwarden_policy),
                       timeout=min(RULES_TIMEOUT, probe_timeout) + extra, confirm_timeout=probe_timeout + extra,
                       loss_retries=retries)
