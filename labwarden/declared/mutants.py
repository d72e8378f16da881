"""Mutants: a lab with one mistake, the tests that must catch it, and the judging of
a run's JUnit XML against them. No Docker here: tests/integration/test_mutants.py runs
the suites; tests/unit/test_mutant_headers.py tests this.

A mutant is a router config (topologies/<lab>/mutants/<name>.nft, or <name>.v4 for an
iptables router, its IPv6 in <name>.v6 beside it) or a lab folder
(topologies/<lab>/mutants/<name>/, the header in its compose.yaml). Its header names
each test that must fail, by its node id (as `pytest --collect-only -q` prints it), and
under it the text that test's own failure message must contain:

    # labwarden-test: suites/isolation/test_matrix.py::test_cell[servers/web -> personal/laptop tcp/22]
    # labwarden-expect-fail: servers/web -> personal/laptop tcp/22: expected filtered

A test may have several texts, a header several tests; the tests named (`named_tests()`, by
node id, not their whole suite files) run together, on one lab. Their fixtures still probe
what judging them needs: a matrix cell's session-wide matrix and every node's positive
controls, a sweep's captures.

The test must FAIL. An error does not count: it means the check could not judge (a
fixture raised, a positive control failed, the lab broke), which proves nothing about
the check itself. Text found elsewhere in the output (another test's failure, a
traceback's source line) does not count either.
"""

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from labwarden.errors import ConfigError

_LINE = re.compile(r"^# labwarden-(suite|test|expect-fail): (.+?)\s*$")


@dataclass(frozen=True)
class Expected:
    """One test that must fail, and what its failure message must contain."""
    test: str                 # node id: suites/isolation/test_matrix.py::test_cell[...]
    texts: tuple[str, ...]


def named_tests(expected: tuple[Expected, ...]) -> list[str]:
    """The node ids of the tests, once each, in the header's order: a mutant's run is given
    these, not their whole suite files. pytest reads a node id's parameters whole, an
    IPv6 address's `::` included (it splits at `::` only before the `[`)."""
    return list(dict.fromkeys(e.test for e in expected))


def suites(expected: tuple[Expected, ...]) -> list[str]:
    """The suite files of the tests, in order: the files a mutant's run is given."""
    return list(dict.fromkeys(e.test.partition("[")[0].split("::")[0] for e in expected))


def read_header(path: Path) -> tuple[Expected, ...]:
    """The tests that must fail, in the header's order; a malformed header is a
    ConfigError naming the line."""
    tests: list[tuple[str, list[str]]] = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        match = _LINE.match(line)
        if match is None:
            continue
        key, value = match.groups()
        if key == "suite":
            raise ConfigError(path, f"line {number}", "labwarden-suite is no more: name each test that "
                              "must fail, `# labwarden-test: SUITE.py::TEST[ID]`, above its texts")
        if key == "test":
            if "::" not in value:
                raise ConfigError(path, f"line {number}", f"'{value}' is not a test id (SUITE.py::TEST[ID], "
                                  "as `pytest --collect-only -q SUITE.py` prints it)")
            tests.append((value, []))
        elif not tests:
            raise ConfigError(path, f"line {number}", "labwarden-expect-fail before any labwarden-test "
                              "(which test must fail with this text?)")
        else:
            tests[-1][1].append(value)
    if not tests:
        raise ConfigError(path, "header", "no labwarden-test: which test must catch this mutant?")
    empty = [t for t, texts in tests if not texts]
    if empty:
        raise ConfigError(path, f"labwarden-test: {empty[0]}",
                          "no labwarden-expect-fail under it: what must its failure say?")
    return tuple(Expected(t, tuple(texts)) for t, texts in tests)


def junit_key(nodeid: str) -> tuple[str, str]:
    """(classname, name) of a node id in pytest's JUnit XML (as _pytest.junitxml mangles it)."""
    path, bracket, params = nodeid.partition("[")
    names = path.split("::")
    names[0] = re.sub(r"\.py$", "", names[0].replace("/", "."))
    names[-1] += bracket + params
    return ".".join(names[:-1]), names[-1]


@dataclass(frozen=True)
class Outcome:
    state: str                # passed, failed, error or skipped
    message: str              # the failure's (or error's) own report; '' when passed


STATES = {"failure": "failed", "error": "error", "skipped": "skipped"}
# How a mutant's suites run: with --tb=line a failure's element text in the JUnit XML is its
# exception alone (no source lines, which would name the texts of every branch), and whole:
# pytest shortens the message attribute of a long failure (a list of wrong cells).
TRACEBACK = "--tb=line"
RANK = ["passed", "skipped", "error", "failed"]


def outcomes(junit_xml: Path) -> dict[tuple[str, str], Outcome]:
    """Every test case of a JUnit XML file by (classname, name). A failure outranks an
    error of the same test (e.g. in its teardown): the check itself judged."""
    found: dict[tuple[str, str], Outcome] = {}
    for case in ET.parse(junit_xml).iter("testcase"):
        key = (case.get("classname", ""), case.get("name", ""))
        element = next((e for e in (case.find(t) for t in ("failure", "error", "skipped")) if e is not None), None)
        now = Outcome("passed", "") if element is None else \
            Outcome(STATES[element.tag], element.text or element.get("message", ""))
        if key not in found or RANK.index(now.state) > RANK.index(found[key].state):
            found[key] = now
    return found


def unmet(expected: tuple[Expected, ...], seen: dict[tuple[str, str], Outcome]) -> list[str]:
    """What the run did not show, one line per test, in words: [] when every named test
    failed with every text in its own message."""
    problems = []
    for e in expected:
        outcome = seen.get(junit_key(e.test))
        if outcome is None:
            problems.append(f"{e.test} did not run (is the id still right? `pytest --collect-only -q` "
                            "lists the ids)")
        elif outcome.state != "failed":
            said = f": {outcome.message}" if outcome.message else ""
            problems.append(f"{e.test} {outcome.state}, it must fail{said}")
        else:
            missing = [t for t in e.texts if t not in outcome.message]
            if missing:
                problems.append(f"{e.test} failed, but its message does not say {missing}; it says:\n"
                                f"{outcome.message}")
    return problems
