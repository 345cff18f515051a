"""
The layering checks CI runs beside ruff (issue 13): no import cycle between streamd's
modules (imports inside functions count: a lazy import is still a dependency; those under
C{if TYPE_CHECKING:} do not), and no module of streamd/ or bench/ over MAX_LINES lines
(a sign it holds two concepts).

    python3 .ci/layers.py        # prints what is wrong; exits 1 if anything is
"""

from __future__ import annotations

import ast
import os
import sys

MAX_LINES = 500
HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def modules(root: str) -> dict[str, str]:
    """Dotted module name -> path, for every .py file below C{root}."""
    found = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                name = os.path.relpath(path[:-3], HERE).replace(os.sep, ".")
                found[name.removesuffix(".__init__")] = path
    return found


class Imports(ast.NodeVisitor):
    """The streamd modules one module imports."""

    def __init__(self, mods: dict[str, str], name: str, path: str) -> None:
        self.mods = mods
        self.package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
        self.found: set[str] = set()

    def resolve(self, dotted: str) -> None:
        while dotted and dotted not in self.mods:
            dotted = dotted.rpartition(".")[0]
        if dotted:
            self.found.add(dotted)

    def visit_If(self, node: ast.If) -> None:
        if "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.resolve(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            package = self.package
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        for alias in node.names:
            self.resolve(f"{base}.{alias.name}" if f"{base}.{alias.name}" in self.mods
                         else base)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return found


def main() -> int:
    mods = modules(os.path.join(HERE, "streamd"))
    graph = {}
    for name, path in mods.items():
        with open(path) as f:
            tree = ast.parse(f.read())
        visitor = Imports(mods, name, path)
        visitor.visit(tree)
        graph[name] = visitor.found - {name}
    problems = 0
    for component in cycles(graph):
        problems += 1
        print("import cycle:", ", ".join(component))
        for name in component:
            print("   ", name, "imports", ", ".join(sorted(graph[name] & set(component))))
    for top in ("streamd", "bench"):
        for path in sorted(modules(os.path.join(HERE, top)).values()):
            with open(path) as f:
                n = sum(1 for _ in f)
            if n > MAX_LINES:
                problems += 1
                print(f"{os.path.relpath(path, HERE)}: {n} lines (more than {MAX_LINES})")
    print(f"layers: {len(mods)} streamd modules, {problems} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
