"""The engine's layers, read from its source with `ast`: imports point one way.

    errors → declared → probe (+ agent) → routers → realise → checks, fuzz → report → plugin, cli

A module may import its own layer and the ones before it, never a later one; no
module-level cycle, even inside a layer; no import of a labwarden module inside a
function (it hides an arrow that points the wrong way); the agent, shipped into the
nodes, imports the standard library and its own modules only. docs/architecture.md
says what each layer holds.
"""

import ast
import re
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "labwarden"
AGENT = PACKAGE / "agent"
LAYERS = [("errors",), ("declared",), ("probe", "agent"), ("routers",), ("realise",),
          ("checks", "fuzz"), ("report",), ("plugin", "cli")]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}
MAX_LINES = 450
EXEMPT_FROM_SIZE = {"agent/agent.py"}  # the agent is one program shipped into nodes


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = ["labwarden", *rel.parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def layer(module: str) -> int | None:
    parts = module.split(".")
    return RANK[parts[1]] if len(parts) > 1 else None  # `labwarden` itself: the version only


def imports(module: str, path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported labwarden module, line, at module level) for each import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            names = list(dict.fromkeys(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                                       for a in node.names))
        else:
            continue
        for name in names:
            if name == "labwarden" or name.startswith("labwarden."):
                while name not in known and "." in name:
                    name = name.rsplit(".", 1)[0]
                found.append((name, node.lineno, id(node) in top_level))
    return found


def graph() -> dict[str, list[tuple[str, int, bool]]]:
    mods = {m: p for m, p in modules().items() if not p.is_relative_to(AGENT)}
    return {m: imports(m, p, set(mods)) for m, p in mods.items()}


def test_imports_point_down_the_layers():
    upward = [f"{m} (line {line}) imports {target}" for m, edges in graph().items()
              for target, line, _ in edges
              if layer(target) is not None and layer(m) is not None and layer(target) > layer(m)]
    assert not upward, "imports that point up a layer:\n  " + "\n  ".join(upward)


def test_no_labwarden_import_inside_a_function():
    hidden = [f"{m} (line {line}) imports {target} inside a function or block"
              for m, edges in graph().items() for target, line, top in edges if not top]
    assert not hidden, "\n  ".join(hidden)


def test_no_import_cycle():
    edges = {m: {t for t, _, _ in e if t != m} for m, e in graph().items()}
    cycles, state = [], {}

    def visit(m, stack):
        state[m] = "open"
        for t in sorted(edges.get(m, ())):
            if state.get(t) == "open":
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n  " + "\n  ".join(cycles)


def test_the_agent_needs_only_the_standard_library():
    own = {p.stem for p in AGENT.glob("*.py")}
    foreign = []
    for path in sorted(AGENT.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            foreign += [f"{path.name}:{node.lineno} imports {n}" for n in names
                        if n.split(".")[0] not in sys.stdlib_module_names | own]
    assert not foreign, "\n  ".join(foreign)


def test_modules_stay_small():
    big = [f"{p.relative_to(PACKAGE)}: {n} lines" for p in sorted(PACKAGE.rglob("*.py"))
           if str(p.relative_to(PACKAGE)) not in EXEMPT_FROM_SIZE
           and (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not big, f"modules over {MAX_LINES} lines (split them by meaning):\n  " + "\n  ".join(big)


def test_callers_use_the_lab_protocol_and_router_kinds():
    """Callers ask the lab, they do not guess at it; only the nftables kind speaks nft."""
    root = PACKAGE.parent
    found = []
    for path in sorted([*PACKAGE.rglob("*.py"), *(root / "suites").rglob("*.py")]):
        text = path.read_text()
        rel = path.relative_to(root)
        found += [f"{rel}: {m.group(0)}" for m in re.finditer(r"(?:hasattr|getattr)\(lab\b", text)]
        if not path.is_relative_to(PACKAGE / "routers" / "nftables"):
            found += [f"{rel}: {m.group(0)}" for m in re.finditer(r"setup=\{\"nft", text)]
    assert not found, "\n  ".join(found)
