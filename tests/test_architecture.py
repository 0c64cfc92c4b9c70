"""The house rules, read from the source with ``ast`` (nothing is imported):

- floors: data_pipelines < train < analysis < slurm; a module imports only
  from its own floor or the ones below;
- no import circles (two modules importing each other, directly or in a loop),
  imports inside functions included;
- no project module loaded through ``importlib`` or ``__import__``;
- no module over 500 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLOORS = ("data_pipelines", "train", "analysis", "slurm")
MAX_LINES = 500


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the four packages."""
    out = {}
    for package in FLOORS:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules ``name`` imports anywhere in its file (functions included).

    ``from a.b import c`` counts as an import of ``a.b.c`` when that is a
    module, else of ``a.b``; relative imports are resolved against the package.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                child = f"{source}.{alias.name}"
                found.add(child if child in known else source)
    return {m for m in found if m.split(".")[0] in FLOORS and m != name}


# The one function allowed to import a module named at run time: a user's ASE
# calculator given as `module:factory`; it refuses project modules itself.
USER_MODULE_LOADERS = {("analysis/workflows/foreign.py", "load_user_factory")}


def dynamic_imports(path: Path) -> list[str]:
    """``importlib.import_module(...)`` / ``__import__(...)`` calls naming project code
    (or any module not named by a constant), outside USER_MODULE_LOADERS."""
    hits = []
    tree = ast.parse(path.read_text(), filename=str(path))
    allowed: set[int] = set()
    try:
        rel = str(path.relative_to(REPO))
    except ValueError:
        rel = str(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and (rel, node.name) in USER_MODULE_LOADERS:
            allowed.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or id(node) in allowed:
            continue
        func = node.func
        called = (
            func.attr
            if isinstance(func, ast.Attribute)
            else func.id
            if isinstance(func, ast.Name)
            else ""
        )
        if called not in ("import_module", "__import__"):
            continue
        arg = node.args[0] if node.args else None
        target = arg.value if isinstance(arg, ast.Constant) else None
        # a non-constant target could be anything, project code included
        if target is None or str(target).split(".")[0] in FLOORS:
            hits.append(f"{path}:{node.lineno} {called}({target!r})")
    return hits


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {name: imported_modules(name, path, known) & known for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def floor(module: str) -> int:
    return FLOORS.index(module.split(".")[0])


def test_no_module_imports_from_a_higher_floor():
    upward = [
        f"{name} imports {dep}"
        for name, deps in import_graph().items()
        for dep in sorted(deps)
        if floor(dep) > floor(name)
    ]
    assert not upward, "imports from a higher floor:\n" + "\n".join(upward)


def test_no_import_circles():
    found = cycles(import_graph())
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_project_module_is_imported_dynamically():
    hits = [hit for path in module_files().values() for hit in dynamic_imports(path)]
    assert not hits, "importlib/__import__ of project modules:\n" + "\n".join(hits)


def test_modules_stay_small():
    long = [
        f"{path.relative_to(REPO)}: {n} lines"
        for path in module_files().values()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    ]
    assert not long, f"modules over {MAX_LINES} lines:\n" + "\n".join(long)


def test_the_checks_can_fail(tmp_path):
    """The detectors find what they look for, on a made-up package."""
    graph = {
        "train.a": {"train.b"},
        "train.b": {"train.c"},
        "train.c": {"train.a"},
        "train.d": set(),
    }
    assert cycles(graph) == [["train.a", "train.b", "train.c"]]
    bad = tmp_path / "mod.py"
    bad.write_text(
        "import importlib\nimportlib.import_module('analysis.relax')\n__import__(name)\n"
    )
    old = REPO
    try:
        globals()["REPO"] = tmp_path
        assert len(dynamic_imports(bad)) == 2
    finally:
        globals()["REPO"] = old
    assert (
        floor("slurm.sweep")
        > floor("analysis.load")
        > floor("train.run")
        > floor("data_pipelines.loader")
    )
    src = tmp_path / "pkg.py"
    src.write_text("def f():\n    from slurm.sweep import sweep\n")
    assert imported_modules("analysis.pkg", src, {"slurm.sweep"}) == {"slurm.sweep"}
