"""analysis/ sits on its floor: it never imports slurm, and its modules form no circle.

Read with ``ast`` (imports inside functions count), so nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FLOORS = ("data_pipelines", "train", "analysis", "slurm")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module named by an import anywhere in the file, functions included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from analysis.scaling import report` names a module, not a symbol
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in (ROOT / "analysis").rglob("*.py")}
    return {
        name: {m for m in _imports(path) if m in modules and m != name}
        for name, path in modules.items()
    }


def test_analysis_imports_only_lower_floors():
    bad = []
    for path in sorted((ROOT / "analysis").rglob("*.py")):
        for module in sorted(_imports(path)):
            top = module.split(".")[0]
            if top in FLOORS and FLOORS.index(top) > FLOORS.index("analysis"):
                bad.append(f"{path.relative_to(ROOT)} imports {module}")
            if module == "importlib":
                bad.append(f"{path.relative_to(ROOT)} uses importlib")
    assert not bad, "\n".join(bad)


def test_analysis_has_no_import_circles():
    graph = _graph()
    # a module importing its own package's __init__ is not a circle
    graph = {n: {m for m in deps if not n.startswith(m + ".")} for n, deps in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles: list[str] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                circles.append(" -> ".join([*path[path.index(dep) :], dep]))
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not circles, "import circles:\n" + "\n".join(circles)
