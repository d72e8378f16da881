"""Every async test and fixture of the suites says it is one (`@pytest.mark.asyncio`,
`@pytest_asyncio.fixture`), with its loop scope: a suite copied into a repository
without labwarden's ini (`asyncio_mode = "auto"`, session loop scopes) runs the same."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*(ROOT / "suites").rglob("*.py"), *(ROOT / "labwarden" / "plugin").rglob("*.py")])


def unmarked(source: str) -> list[str]:
    """The async tests and fixtures of a module whose decorators do not say so."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.AsyncFunctionDef) or node.name.startswith("_"):
            continue
        said = [ast.unparse(d) for d in node.decorator_list]
        if node.name.startswith("test_"):
            ok = any(d.startswith("pytest.mark.asyncio(") and "loop_scope=" in d for d in said)
        else:
            ok = any(d.startswith("pytest_asyncio.fixture(") and "loop_scope=" in d for d in said)
        if not ok:
            found.append(node.name)
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_async_tests_and_fixtures_are_marked(path):
    assert unmarked(path.read_text()) == []


def test_an_unmarked_async_test_is_found():
    assert unmarked("async def test_x(lab):\n    pass\n") == ["test_x"]
    assert unmarked("@pytest.mark.asyncio\nasync def test_x(lab):\n    pass\n") == ["test_x"]  # no scope
    assert unmarked("@pytest.fixture\nasync def cells(lab):\n    pass\n") == ["cells"]
    assert unmarked('@pytest.mark.asyncio(loop_scope="session")\nasync def test_x(lab):\n    pass\n') == []
