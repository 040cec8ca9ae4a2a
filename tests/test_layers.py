"""The package's layering: no import cycles between files or packages, the library never imports the CLI, and
`import greenlm.cli` (what `greenlm --help` pays for) loads neither torch nor llama_cpp nor ray.

The graph is built from the source with `ast`: module-level imports, imports inside functions, and the lazy
export maps of package `__init__` files (`greenlm._lazy.lazy(...)`), so a cycle hidden in a function still
counts.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import greenlm

ROOT = Path(greenlm.__file__).parent
LIBRARY_IMPORTING_CLI_IS_A_BUG = "greenlm.cli"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(name: str, modules: set[str]) -> str | None:
    """The greenlm module `name` refers to: itself, or the module that defines the imported attribute."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _lazy_targets(tree: ast.Module) -> list[str]:
    """Module names in a `lazy(__name__, {...})` export map."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "lazy" and len(node.args) == 2:
            mapping = node.args[1]
            if isinstance(mapping, ast.Dict):
                found += [v.value.partition(":")[0] for v in mapping.values if isinstance(v, ast.Constant)]
    return found


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    modules = set(files)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: list[str] = _lazy_targets(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base])
                    base = base.rstrip(".")
                # `from pkg import sub` names the submodule; `from mod import name`, the module itself
                targets += [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for target in targets:
            if not target.startswith("greenlm"):
                continue
            resolved = _resolve(target, modules)
            if resolved and resolved != name:
                graph[name].add(resolved)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _package(module: str) -> str:
    """`greenlm.X` for modules inside a subpackage; top-level modules are their own node."""
    parts = module.split(".")
    return ".".join(parts[:2])


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    packages: dict[str, set[str]] = {}
    for source, targets in graph.items():
        if source == "greenlm":  # the package face imports every verb lazily by design
            continue
        edges = packages.setdefault(_package(source), set())
        edges.update(_package(t) for t in targets if _package(t) not in (_package(source), "greenlm"))
    return packages


def test_no_cycle_between_files():
    assert _cycles(import_graph()) == []


def test_no_cycle_between_packages():
    assert _cycles(package_graph(import_graph())) == []


def test_library_never_imports_the_cli():
    offenders = sorted(
        f"{m} -> {t}"
        for m, targets in import_graph().items()
        if not m.startswith(LIBRARY_IMPORTING_CLI_IS_A_BUG) and m != "greenlm.__main__"  # the entry point
        for t in targets
        if t.startswith(LIBRARY_IMPORTING_CLI_IS_A_BUG)
    )
    assert offenders == []


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_serve_does_not_import_optimize_and_grid_sits_low():
    """serve (and the gateway and deferral that build on it) needs no optimizer: a ladder is read from the
    store's rows, Ray is joined through greenlm.cluster. The grid signals know nothing of serving or models."""
    packages = package_graph(import_graph())
    assert "greenlm.optimize" not in _reachable(packages, "greenlm.serve")
    assert _reachable(packages, "greenlm.grid") <= {"greenlm._lazy", "greenlm.energy", "greenlm.errors"}


def test_the_cli_starts_without_heavy_libraries():
    probe = (
        "import sys, greenlm.cli; "
        "print(sorted(m for m in ('torch', 'llama_cpp', 'ray', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"


def test_import_greenlm_is_light_and_exposes_the_verbs():
    probe = (
        "import sys, greenlm; heavy = [m for m in ('torch', 'llama_cpp', 'ray') if m in sys.modules]; "
        "verbs = [v for v in greenlm.__all__ if not callable(getattr(greenlm, v))]; print(heavy, verbs)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[] []"


def test_the_package_face_names_every_verb():
    import greenlm

    verbs = {"measure", "evaluate", "compress", "export", "optimize", "report", "distill", "track", "Server"}
    assert verbs <= set(greenlm.__all__)


if __name__ == "__main__":  # `python tests/test_layers.py` prints the package graph and any cycle
    g = import_graph()
    for package, targets in sorted(package_graph(g).items()):
        print(f"{package:22s} -> {', '.join(sorted(targets)) or '-'}")
    print("file cycles:", _cycles(g) or "none")
    print("package cycles:", _cycles(package_graph(g)) or "none")
