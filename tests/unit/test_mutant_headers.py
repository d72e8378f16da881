"""Mutant headers and the JUnit XML they are judged against (labwarden/mutants.py), no lab:
a header names tests; only those tests failing, each with its text in its own
message, count as caught."""

import difflib
import functools
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from labwarden.errors import ConfigError
from labwarden.declared.mutants import TRACEBACK, Expected, junit_key, outcomes, read_header, suites, named_tests, unmet

ROOT = Path(__file__).resolve().parents[2]
MUTANTS = sorted((ROOT / "topologies").glob("*/mutants/*.nft")) + \
    sorted((ROOT / "topologies").glob("*/mutants/*.v4")) + \
    sorted((ROOT / "topologies").glob("*/mutants/*/compose.yaml"))
CELL = "suites/isolation/test_matrix.py::test_cell[servers/web -> personal/laptop tcp/22]"


def header(tmp_path, text):
    path = tmp_path / "mutant.nft"
    path.write_text(textwrap.dedent(text))
    return path


def test_a_header_names_tests_and_their_suites_in_its_order(tmp_path):
    path = header(tmp_path, f"""\
        #!/usr/sbin/nft -f
        # MUTANT: two suites, the first with two tests
        # labwarden-test: {CELL}
        # labwarden-expect-fail: servers/web -> personal/laptop tcp/22: expected filtered
        # labwarden-expect-fail: observed open
        # labwarden-test: suites/fuzz/test_flows.py::test_probes_follow_the_policy
        # labwarden-expect-fail: was ACCEPTED by forward rule 'iifname "servers" accept' (mutant.nft:9)
        # labwarden-test: suites/isolation/test_matrix.py::test_cell[ai/gpu -> servers/web tcp/80]
        # labwarden-expect-fail: ai/gpu -> servers/web tcp/80: expected filtered
        flush ruleset
        """)
    expected = read_header(path)
    assert expected == (
        Expected(CELL, ("servers/web -> personal/laptop tcp/22: expected filtered", "observed open")),
        Expected("suites/fuzz/test_flows.py::test_probes_follow_the_policy",
                 ("was ACCEPTED by forward rule 'iifname \"servers\" accept' (mutant.nft:9)",)),
        Expected("suites/isolation/test_matrix.py::test_cell[ai/gpu -> servers/web tcp/80]",
                 ("ai/gpu -> servers/web tcp/80: expected filtered",)))
    assert suites(expected) == ["suites/isolation/test_matrix.py", "suites/fuzz/test_flows.py"]
    assert named_tests(expected) == [e.test for e in expected]


def test_a_test_named_twice_runs_once(tmp_path):
    path = header(tmp_path, f"""\
        # labwarden-test: {CELL}
        # labwarden-expect-fail: expected filtered
        # labwarden-test: {CELL}
        # labwarden-expect-fail: observed open
        """)
    assert named_tests(read_header(path)) == [CELL]


@pytest.mark.parametrize("text,problem", [
    ("# labwarden-suite: suites/isolation/test_matrix.py\n# labwarden-expect-fail: x\n",
     "labwarden-suite is no more"),
    ("# labwarden-expect-fail: expected filtered\n", "before any labwarden-test"),
    ("# labwarden-test: test_cell[a -> b tcp/22]\n# labwarden-expect-fail: x\n", "is not a test id"),
    (f"# labwarden-test: {CELL}\n", "no labwarden-expect-fail under it"),
    ("flush ruleset\n", "no labwarden-test"),
], ids=["old-suite-key", "text-before-test", "no-suite-file", "test-without-text", "no-header"])
def test_a_malformed_header_is_refused_with_the_reason(tmp_path, text, problem):
    with pytest.raises(ConfigError, match=problem):
        read_header(header(tmp_path, text))


def test_node_ids_map_to_junit_names_as_pytest_writes_them():
    assert junit_key(CELL) == ("suites.isolation.test_matrix", "test_cell[servers/web -> personal/laptop tcp/22]")
    assert junit_key("suites/nat/test_forwards.py::test_forward[public web: wan/visitor -> tcp/80]") == \
        ("suites.nat.test_forwards", "test_forward[public web: wan/visitor -> tcp/80]")
    assert junit_key("a/test_k.py::TestK::test_m[x::y.py]") == ("a.test_k.TestK", "test_m[x::y.py]")


RUN = textwrap.dedent("""
    import pytest

    @pytest.fixture
    def control():
        raise RuntimeError("control failed: servers/web -> personal/laptop tcp/22 proves nothing")

    @pytest.mark.parametrize("cell", ["servers/web -> personal/laptop tcp/22", "ai/gpu -> servers/web tcp/80"])
    def test_cell(cell):
        # the source line names the text too: only the message may count
        assert cell != "servers/web -> personal/laptop tcp/22", f"{cell}: expected filtered, observed open"

    def test_errors(control):
        pass

    def test_other():
        assert False, "ai/gpu -> servers/web tcp/80: expected filtered"

    def test_many_cells():
        cells = [f"wan/visitor -> cabin/laptop tcp/{p}: expected filtered, observed open" for p in range(1, 60)]
        assert not cells, "reachable other than through the tunnel:\\n  " + "\\n  ".join(cells)

    class TestK:
        def test_m(self):
            assert False, "in a class"
""")


@pytest.fixture(scope="module")
def junit(tmp_path_factory):
    """A real run's JUnit XML, run as a mutant's suites are: a failing cell, a passing one,
    an error, another failure, a long one."""
    folder = tmp_path_factory.mktemp("run")
    (folder / "suites").mkdir()
    (folder / "suites" / "test_matrix.py").write_text(RUN)
    subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:labwarden", TRACEBACK,
                    "-o", "junit_family=xunit2", "--junitxml", str(folder / "junit.xml"), "suites/test_matrix.py"],
                   cwd=folder, capture_output=True, text=True, timeout=120)
    return outcomes(folder / "junit.xml")


def expect(test, *texts):
    return (Expected(f"suites/test_matrix.py::{test}", texts),)


def test_the_named_test_failing_with_its_text_is_caught(junit):
    assert unmet(expect("test_cell[servers/web -> personal/laptop tcp/22]",
                        "servers/web -> personal/laptop tcp/22: expected filtered", "observed open"), junit) == []
    assert unmet(expect("TestK::test_m", "in a class"), junit) == []


def test_a_long_failure_is_read_whole(junit):
    """pytest shortens the message attribute of a long failure; its last cell still counts."""
    assert unmet(expect("test_many_cells", "wan/visitor -> cabin/laptop tcp/59: expected filtered"), junit) == []


def test_a_text_in_another_tests_failure_does_not_count(junit):
    problems = unmet(expect("test_cell[ai/gpu -> servers/web tcp/80]", "ai/gpu -> servers/web tcp/80: expected"),
                     junit)
    assert problems == ["suites/test_matrix.py::test_cell[ai/gpu -> servers/web tcp/80] passed, it must fail"]


def test_a_text_only_in_the_traceback_does_not_count(junit):
    [problem] = unmet(expect("test_cell[servers/web -> personal/laptop tcp/22]", "only the message may count"),
                      junit)
    assert "failed, but its message does not say ['only the message may count']" in problem


def test_an_error_is_not_a_failure(junit):
    [problem] = unmet(expect("test_errors", "control failed"), junit)
    assert problem.startswith("suites/test_matrix.py::test_errors error, it must fail: ")
    assert "RuntimeError: control failed" in problem


def test_a_test_that_did_not_run_is_named(junit):
    [problem] = unmet(expect("test_cell[servers/web -> personal/laptop tcp/2222]", "expected filtered"), junit)
    assert "did not run" in problem


@functools.cache
def collected(lab: Path) -> frozenset[str]:
    """The ids of every suite's tests on a lab (one collection per lab: ~1.5 s)."""
    with tempfile.TemporaryDirectory() as reports:
        proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                               "--lw-report-dir", reports, "--lw-topology", str(lab), "suites"],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return frozenset(proc.stdout.splitlines())


@pytest.mark.parametrize("mutant", MUTANTS, ids=[str(m.relative_to(ROOT / "topologies")) for m in MUTANTS])
def test_every_mutant_names_tests_that_exist(mutant):
    """Ids drift when a suite or the policy changes: every named test is collected on the mutant's lab."""
    lab = mutant.parent if mutant.name == "compose.yaml" else mutant.parents[1]
    missing = [e.test for e in read_header(mutant) if e.test not in collected(lab)]
    assert not missing, f"{mutant.name} names tests that are not collected on {lab.name}: {missing}"


def lab_of(mutant: Path) -> Path:
    return mutant.parent if mutant.name == "compose.yaml" else mutant.parents[1]


@pytest.mark.parametrize("lab", sorted({lab_of(m) for m in MUTANTS}), ids=lambda lab: str(lab.relative_to(ROOT)))
def test_the_named_ids_select_exactly_those_tests(lab):
    """A mutant's run is given its tests' node ids (tests/integration/test_mutants.py): given
    to pytest, they select those tests and no others, an IPv6 address's `::` in the id included."""
    named = sorted({t for m in MUTANTS if lab_of(m) == lab for t in named_tests(read_header(m))})
    with tempfile.TemporaryDirectory() as reports:
        proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                               "--lw-report-dir", reports, "--lw-topology", str(lab), *named],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert sorted(line for line in proc.stdout.splitlines() if "::" in line) == named


LAB_FOLDERS = [m.parent for m in MUTANTS if m.name == "compose.yaml"]


@pytest.mark.parametrize("folder", LAB_FOLDERS, ids=[f"{f.parents[1].name}/{f.name}" for f in LAB_FOLDERS])
def test_a_lab_folder_mutant_is_its_lab_but_for_its_marked_lines(folder):
    """Past its header, its compose.yaml is its lab's, line for line, but for lines marked
    `# MUTANT` (changed or added, never removed); everything else in the folder is linked
    to the lab's own files."""
    lab = folder.parents[1]
    base = (lab / "compose.yaml").read_text().splitlines()
    lines = (folder / "compose.yaml").read_text().splitlines()
    lines = lines[lines.index(base[0]):]
    ops = [op for op in difflib.SequenceMatcher(None, base, lines, autojunk=False).get_opcodes() if op[0] != "equal"]
    assert ops, "nothing differs from the lab's compose.yaml"
    for tag, i1, i2, j1, j2 in ops:
        assert tag != "delete" and all("# MUTANT" in line for line in lines[j1:j2]), (base[i1:i2], lines[j1:j2])
    for entry in folder.iterdir():
        if entry.name != "compose.yaml":
            assert entry.is_symlink() and entry.resolve() == (lab / entry.name).resolve(), entry
