"""The package reads as a map: dependencies point one way. Every import is counted, those
inside functions too (they hide circles, not remove them)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import trainfleet

ROOT = Path(trainfleet.__file__).resolve().parent
KERNEL = {"trainfleet", "errors", "results", "shellwords"}
"""The shared kernel at the top level: it imports only itself."""
ALLOWED = {
    "agent": set(),
    "fleet": {"agent"},
    "job": {"agent", "fleet"},
    "launchers": {"agent", "fleet", "job"},
    "export": {"fleet", "job", "launchers"},
    "plans": {"agent", "fleet", "job"},
    "netbench": set(),
    "doctor": {"agent", "fleet", "plans"},
    "transport": {"agent", "fleet"},
    "supervise": {"agent", "job", "transport"},
    "sandbox": {"agent", "fleet"},
    "ops": {"agent", "doctor", "fleet", "job", "launchers", "plans", "sandbox", "supervise", "transport"},
    "ui": {"agent", "fleet", "job", "ops", "supervise", "transport"},
}
"""What each package may import besides the kernel (`cli/` may import anything; nothing imports it)."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Module -> the trainfleet modules it imports (a name imported from a package counts
    as its submodule where there is one)."""
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    found: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            found[name] |= {t for t in targets if t in modules and t != name}
    return found


def top(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = imports()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in list(graph):
        if module not in index:
            visit(module)
    # A package's __init__ that imports its own modules is not a circle of design.
    circles = [c for c in circles if not any(m == c2.rsplit(".", 1)[0] for m in c for c2 in c if m != c2)]
    assert circles == []


def test_every_arrow_points_down() -> None:
    wrong = []
    for module, targets in imports().items():
        source = top(module)
        for target in targets:
            dest = top(target)
            if dest == source or dest in KERNEL or source in ("cli", "__main__"):
                continue
            if dest == "cli" or source in KERNEL or dest not in ALLOWED.get(source, {dest}):
                wrong.append(f"{module} -> {target}")
    assert wrong == []
