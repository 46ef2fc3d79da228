"""The package's shape (issue: one method, one readable file): no module reaches into another module's private
names, and the modules' top-level imports form no cycle."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ftlab"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def top_level_imports(path: Path):
    """(module imported from, names) for every import at module level (not inside functions), resolved."""
    tree = ast.parse(path.read_text())
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            yield base, [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


def test_no_module_imports_a_private_name_from_another_module():
    offenders = [f"{name}: from {source} import {imported}"
                 for name, path in MODULES.items() for source, names in top_level_imports(path)
                 for imported in names if source.startswith("ftlab") and imported.startswith("_")
                 and not imported.startswith("__")]
    assert not offenders, offenders


def test_the_modules_top_level_imports_form_no_cycle():
    graph = {}
    for name, path in MODULES.items():
        edges = set()
        for source, names in top_level_imports(path):
            if not source.startswith("ftlab"):
                continue
            targets = [f"{source}.{n}" for n in names if f"{source}.{n}" in MODULES] or [source]
            edges |= {t for t in targets if t in MODULES and t != name and MODULES[t].name != "__init__.py"}
        graph[name] = edges
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in graph.get(node, ()):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles
