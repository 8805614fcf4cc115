"""The package's import structure: no circles, floors respected, no hidden imports of its own modules.

Floors, lowest first: utils <- data <- model <- config/ensemble <- trainer <- quick_start <- recommend,
tuning, reporting <- analysis <- cli (the console command) <- study (starts cli runs as processes). A module may import its own floor or lower ones, never a higher one, and
a function-level import of the package's own modules is allowed only to defer a heavy optional
dependency, marked ``# deferred: <reason>`` on its line or the line above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "recbole_llm"
FLOORS = {
    "recbole_llm.utils": 0,
    "recbole_llm.data": 1,
    "recbole_llm.model": 2,
    "recbole_llm.config": 3,
    "recbole_llm.ensemble": 3,
    "recbole_llm.trainer": 4,
    "recbole_llm.quick_start": 5,
    "recbole_llm.recommend": 6,
    "recbole_llm.tuning": 6,
    "recbole_llm.reporting": 6,
    "recbole_llm.analysis": 7,
    "recbole_llm.cli": 8,
    "recbole_llm.study": 9,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def floor(module: str) -> int | None:
    for prefix, level in sorted(FLOORS.items(), key=lambda kv: -len(kv[0])):
        if module == prefix or module.startswith(prefix + "."):
            return level
    return None


def _resolve(importer: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The package's own modules an import statement loads."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = importer.split(".")
            if MODULES[importer].name != "__init__.py":
                package = package[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join(package + ([base] if base else []))
        names = [
            f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names
        ]
    return [n for n in names if n.split(".")[0] == "recbole_llm" and n in MODULES]


def _imports(module: str) -> tuple[list[tuple[str, int]], list[tuple[str, int, bool]]]:
    """``(module-level edges, function-level edges with their 'deferred' mark)``."""
    source = MODULES[module].read_text(encoding="utf-8")
    lines = source.splitlines()
    tree = ast.parse(source)
    top, inner = [], []

    def visit(node: ast.AST, in_function: bool, type_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                if type_only:
                    continue
                for target in _resolve(module, child):
                    if in_function:
                        marks = lines[child.lineno - 1] + (
                            lines[child.lineno - 2] if child.lineno > 1 else ""
                        )
                        inner.append((target, child.lineno, "# deferred:" in marks))
                    else:
                        top.append((target, child.lineno))
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                visit(child, in_function, True)
            else:
                fn = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
                visit(child, in_function or fn, type_only)

    visit(tree, False, False)
    return top, inner


GRAPH = {m: _imports(m) for m in MODULES}


def test_every_module_has_a_floor():
    assert [m for m in MODULES if m != "recbole_llm" and floor(m) is None] == []


def test_no_import_circle():
    edges = {m: {t for t, _ in top} | {t for t, _, _ in inner} for m, (top, inner) in GRAPH.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                circles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            walk(node)
    assert circles == []


def test_no_import_from_a_higher_floor():
    upward = [
        f"{m}:{line} imports {t}"
        for m, (top, inner) in GRAPH.items()
        for t, line, *_ in top + inner
        if floor(m) is not None and floor(t) is not None and floor(t) > floor(m)
    ]
    assert upward == []


def test_function_level_imports_of_own_modules_say_why():
    hidden = [f"{m}:{line} imports {t}" for m, (_, inner) in GRAPH.items() for t, line, ok in inner if not ok]
    assert hidden == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import recbole_llm.utils.io\n", "top"),
        ("def f():\n    from recbole_llm.utils import io\n", "hidden"),
        ("def f():\n    # deferred: heavy\n    from recbole_llm.utils import io\n", "marked"),
    ],
)
def test_the_import_walker_sees_each_kind_of_import(tmp_path, monkeypatch, source, expected):
    """The checks above can fail: the walker finds top-level, hidden and marked imports."""
    fake = PACKAGE / "utils" / "io.py"
    monkeypatch.setitem(MODULES, "recbole_llm.probe", tmp_path / "probe.py")
    (tmp_path / "probe.py").write_text(source)
    top, inner = _imports("recbole_llm.probe")
    found = "top" if top else ("marked" if inner and inner[0][2] else "hidden")
    assert found == expected and (top or inner)[0][0] == "recbole_llm.utils.io" and fake.is_file()
