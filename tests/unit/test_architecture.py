"""The house as drawn from its imports: no circles between the product's modules, a
Django-free vision core, and a search path that does not climb into other domains."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _modules() -> dict[str, Path]:
    found = {}
    for path in (ROOT / "gallery").rglob("*.py"):
        if "migrations" in path.parts:
            continue
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Every product module `path` imports, at the top or inside a function."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base) if node.level else (node.module or "")
            for alias in node.names:
                candidate = f"{module}.{alias.name}"
                out.add(candidate if candidate in modules else module)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {m for m in out if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_no_import_circles_between_the_products_modules() -> None:
    graph = _graph()
    circles = sorted(
        {
            " → ".join(sorted({m, *[n for n in _reachable(graph, m) if m in _reachable(graph, n)]}))
            for m in graph
            if m in _reachable(graph, m)
        }
    )
    assert circles == []


def test_the_vision_core_knows_nothing_of_django() -> None:
    for path in (ROOT / "gallery" / "vision").rglob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not any(m == "django" or m.startswith(("django.", "gallery.", "rest_framework")) for m in imported), path


def test_the_search_path_stays_out_of_the_other_domains() -> None:
    reached = _reachable(_graph(), "gallery.search.selectors")
    climbed = {
        m
        for m in reached
        if m.startswith(("gallery.curation", "gallery.copyright", "gallery.web", "gallery.api")) or m.endswith(".tasks")
    }
    assert climbed == set()


def test_tooling_is_not_in_the_shipped_package() -> None:
    shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / "gallery").rglob("*.py")}
    tooling = {"livestack", "loadtest", "hostile", "copyeval", "attacks", "benchmark", "evaluate"}
    assert not [p for p in shipped if any(t in Path(p).stem for t in tooling)]
