"""The direction of dependencies (DESIGN.md §1), checked on the source itself.

The import graph of `gfnem_cli`, `grammars` and `vae` is built with `ast` from every `.py`
file, imports inside functions (deferred imports) and under `if TYPE_CHECKING:` included: a
deferred import may buy `--help` speed, never hide a circle. It must have no circle, the
engine must import no family and not the commands, and no family may import the commands.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("gfnem_cli", "grammars", "vae")
FAMILIES = ("grammars", "vae")
COMMANDS = ("gfnem_cli.commands", "gfnem_cli.app", "gfnem_cli.families", "gfnem_cli.console",
            "gfnem_cli.__main__")


def module_files(root: Path = REPO) -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module an import names (a name imported from a package may be its
    submodule: `from grammars.charts import inside`)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            if target.split(".")[0] in PACKAGES:
                resolved = _resolve(target, modules)
                if resolved is not None and resolved != name:
                    found.add(resolved)
    return found


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    modules = module_files(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}          # 1 = on the current path, 2 = done
    for start in sorted(graph):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                state[node] = 2
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph.get(child, ())))))
    return None


def _inside(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def wrong_way_arrows(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            if _inside(source, ("gfnem_cli.engine",)) and (
                    _inside(target, FAMILIES) or not _inside(target, ("gfnem_cli.engine",))):
                bad.append(f"the engine imports {target}: {source} -> {target}")
            if _inside(source, FAMILIES) and _inside(target, COMMANDS):
                bad.append(f"a family imports the commands: {source} -> {target}")
    return bad


def test_the_graph_is_built_from_every_package():
    graph = import_graph()
    assert "gfnem_cli.engine.em" in graph and "grammars.run" in graph
    assert "gfnem_cli.engine.optimizer_step" in graph["gfnem_cli.engine.em"]
    # a deferred import is an edge too: the commands import grammars inside their functions
    assert any(t.startswith("grammars") for t in graph["gfnem_cli.commands.evaluate"])


def test_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_arrows_point_down():
    bad = wrong_way_arrows(import_graph())
    assert not bad, "\n".join(bad)


def test_gfnem_cli_init_stays_empty():
    """Importing the engine must never drag in the command line."""
    assert (REPO / "gfnem_cli" / "__init__.py").read_text().strip() == ""


@pytest.mark.parametrize("source,extra", [
    ("grammars/charts/pcfg_params.py", "from grammars.charts.inside import log_partition\n"),
    ("gfnem_cli/engine/files.py", "def _late():\n    from gfnem_cli.engine.checkpoint import load\n"),
])
def test_an_added_circle_is_found(tmp_path, source, extra):
    """The checks are not vacuous: a copy of the tree with one import added (at the top of a
    file, or deferred inside a function) has a circle."""
    import shutil

    for package in PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / source
    target.write_text(target.read_text(encoding="utf-8") + "\n" + extra, encoding="utf-8")
    assert find_cycle(import_graph(tmp_path)) is not None


def test_a_wrong_way_arrow_is_found(tmp_path):
    graph = {"gfnem_cli.engine.em": {"grammars.run"}, "grammars.run": {"gfnem_cli.commands.train"},
             "gfnem_cli.commands.train": set()}
    assert len(wrong_way_arrows(graph)) == 2
