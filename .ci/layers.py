"""
The layering checks CI runs beside ruff (issue 13): no import cycle between streamd's
modules (imports inside functions count: a lazy import is still a dependency; those under
C{if TYPE_CHECKING:} do not), and no module of streamd/ or bench/ over MAX_LINES lines
(a sign it holds two concepts). Issue 21 adds: HTTP stays in streamd/web/ (no HTTPError,
status code or HTTP header in the domain modules, L{DOMAIN}), and reading settings
imports no source kind (L{config_imports}, in a fresh interpreter).

    python3 .ci/layers.py        # prints what is wrong; exits 1 if anything is
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap

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


#: The modules that raise streamd's own errors and must not know HTTP (paths under
#: streamd/; a directory means every module in it). streamd/web/ maps their errors.
DOMAIN = ("service.py", "sources", "filters.py", "channels.py", "store", "errors.py",
          "auth.py", "interfaces.py", "json_input.py", "message.py")
HTTP_MODULES = ("streamd.web", "twisted.web", "http", "klein", "werkzeug")
HTTP_HEADERS = ("retry-after", "www-authenticate")


def _status_code(node: ast.AST) -> bool:
    return (isinstance(node, ast.Constant) and type(node.value) is int
            and 100 <= node.value <= 599)


def http_in(source: str) -> list[str]:
    """
    What in C{source} (a module's text) speaks HTTP: the name C{HTTPError}, an import of
    an HTTP module, a status code in a C{raise} or as C{status=}/C{code=} (an argument,
    or a class attribute), an HTTP header's name outside a docstring. One line per
    finding.
    """
    found = []
    tree = ast.parse(source)
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                    ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr)}
    for node in ast.walk(tree):
        where = f"line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Name) and node.id == "HTTPError" or (
                isinstance(node, ast.Attribute) and node.attr == "HTTPError") or (
                isinstance(node, ast.alias) and node.name.rpartition(".")[2] == "HTTPError"):
            found.append(f"{where}: HTTPError")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) \
                else [node.module or ""]
            found += [f"{where}: imports {n}" for n in names
                      if any(n == m or n.startswith(m + ".") for m in HTTP_MODULES)]
        elif isinstance(node, ast.Raise) and node.exc is not None:
            found += [f"line {c.lineno}: status code {c.value} raised"
                      for c in ast.walk(node.exc) if _status_code(c)]
        elif isinstance(node, ast.keyword) and node.arg in ("status", "code") and \
                _status_code(node.value):
            found.append(f"{where}: {node.arg}={node.value.value}")
        elif isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if isinstance(stmt, ast.Assign) and _status_code(stmt.value) and any(
                        isinstance(t, ast.Name) and t.id in ("status", "code")
                        for t in stmt.targets):
                    found.append(f"line {stmt.lineno}: class {node.name} has a status code")
        elif isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)) \
                and id(node) not in docstrings:
            text = node.value.lower() if isinstance(node.value, str) else \
                node.value.decode("latin-1").lower()
            found += [f"{where}: the {h} header" for h in HTTP_HEADERS if h in text]
    return found


def domain_paths(root: str) -> list[str]:
    """The files of L{DOMAIN} under C{root} (streamd/)."""
    out = []
    for entry in DOMAIN:
        path = os.path.join(root, entry)
        out += sorted(modules(path).values()) if os.path.isdir(path) else [path]
    return out


#: What reading settings must not import: a source kind, or what kinds are built on.
NOT_FOR_SETTINGS = ("streamd.sources", "twisted.internet.reactor", "treq", "pika",
                    "txredisapi", "botocore")

_IMPORT_PROBE = textwrap.dedent("""
    import importlib, json, sys
    from importlib.metadata import entry_points
    module = importlib.import_module(sys.argv[1])
    # A stream of every installed kind (by name: reading the entry points imports none).
    kinds = sorted({ep.name for ep in entry_points(group="streamd.sources")})
    module.load_settings({"streams": {f"s{i}": {"source": kind, "some_key": 1}
                                      for i, kind in enumerate(kinds)}}, {})
    print(json.dumps({"kinds": kinds, "modules": sorted(sys.modules)}))
""")


def python() -> str:
    """The project's virtualenv's interpreter if there is one (it has the dependencies)."""
    venv = os.path.join(HERE, ".venv", "bin", "python")
    return venv if os.path.exists(venv) else sys.executable


def config_imports(module: str = "streamd.config") -> tuple[list[str], list[str]]:
    """
    In a fresh interpreter: import C{module}, read settings that declare a stream of
    every installed source kind with its C{load_settings}, and return the kinds and,
    for each of L{NOT_FOR_SETTINGS} that got imported, a line naming its modules.
    """
    import json

    out = subprocess.run([python(), "-c", _IMPORT_PROBE, module], cwd=HERE,
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        return [], [f"cannot run the probe: {out.stderr.strip().splitlines()[-1:]}"]
    seen = json.loads(out.stdout)
    bad = []
    for n in NOT_FOR_SETTINGS:
        found = [m for m in seen["modules"] if m == n or m.startswith(n + ".")]
        if found:
            bad.append(", ".join(found[:4]) + (", ..." if len(found) > 4 else ""))
    return seen["kinds"], bad


#: Lines one class may span (issue 21: a class that grows past it holds several parts),
#: and a tighter bound for the one that grew before: L{streamd.stream.Stream}.
MAX_CLASS_LINES = 300
CLASS_LIMITS = {("streamd/stream.py", "Stream"): 250}


def class_sizes(tops: tuple[str, ...] = ("streamd", "bench")) -> int:
    """
    Print each class under C{tops} longer than its bound (from its first decorator to
    its last line; L{CLASS_LIMITS}, else L{MAX_CLASS_LINES}); return how many.
    """
    problems = 0
    for top in tops:
        for path in sorted(modules(os.path.join(HERE, top)).values()):
            rel = os.path.relpath(path, HERE).replace(os.sep, "/")
            with open(path) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if not isinstance(node, ast.ClassDef):
                    continue
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                n = node.end_lineno - first + 1
                limit = CLASS_LIMITS.get((rel, node.name), MAX_CLASS_LINES)
                if n > limit:
                    problems += 1
                    print(f"{rel}: class {node.name} is {n} lines (more than {limit})")
    return problems


#: The one module that may name Twisted's private names (issue 21).
TWISTED_ADAPTER = "streamd/twisted_internals.py"
#: Private names of Twisted's classes that streamd has used, flagged wherever they are
#: read, set or defined (an override), on any object.
TWISTED_PRIVATE = frozenset({
    "_tempDataLen", "_tempDataBuffer", "dataBuffer", "_aborting", "_appSendBuffer",
    "_aggregator", "_producerPaused", "_lostTLSConnection", "_ProducerMembrane",
    "_GenericHTTPChannelProtocol", "_genericHTTPChannelProtocolFactory",
    "_respondToBadRequestAndDisconnect", "_receivedHeaderSize", "_receivedHeaderCount",
    "_networkProducer", "_negotiatedProtocol", "_requestDone", "_sendPrioritisedData",
    "_handleWindowUpdate", "_outboundStreamQueues", "_consumerBlocked", "_stillProducing",
    "_bufferedControlFrames", "_tryToWriteControlData", "_END_STREAM_SENTINEL",
    "_sslContextFactory", "_wantPID", "_exitSignal", "_realPortNumber",
})
#: Names too common to flag on C{self}, flagged on any other object (a parsed
#: endpoint's fields, the TLS layer's producer).
TWISTED_PRIVATE_FIELDS = frozenset({
    "_backlog", "_interface", "_port", "_reactor", "_address", "_mode", "_producer",
})


def twisted_privates() -> int:
    """
    Twisted's private names outside L{TWISTED_ADAPTER}: an import of a C{twisted} module
    path with a part that starts with C{_} (C{twisted.web._http2}), or a name of
    L{TWISTED_PRIVATE} read, set or defined, or one of L{TWISTED_PRIVATE_FIELDS} on an
    object other than C{self}. Prints each; returns how many.
    """
    found = 0
    for path in sorted(modules(os.path.join(HERE, "streamd")).values()):
        where = os.path.relpath(path, HERE)
        if where == TWISTED_ADAPTER:
            continue
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [f"{node.module}.{a.name}" for a in node.names]
            bad = [n for n in names if n.split(".")[0] == "twisted"
                   and any(p.startswith("_") and p != "__future__" for p in n.split("."))]
            if isinstance(node, ast.Attribute) and (
                    node.attr in TWISTED_PRIVATE or node.attr in TWISTED_PRIVATE_FIELDS
                    and not (isinstance(node.value, ast.Name) and node.value.id == "self")):
                bad.append(f".{node.attr}")
            elif isinstance(node, (ast.FunctionDef, ast.Name)) and \
                    getattr(node, "name", getattr(node, "id", "")) in TWISTED_PRIVATE:
                bad.append(getattr(node, "name", getattr(node, "id", "")))
            for name in bad:
                found += 1
                print(f"{where}: line {node.lineno}: Twisted's private {name} (only in "
                      f"{TWISTED_ADAPTER})")
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
    streamd_dir = os.path.join(HERE, "streamd")
    for path in domain_paths(streamd_dir):
        with open(path) as f:
            for finding in http_in(f.read()):
                problems += 1
                print(f"{os.path.relpath(path, HERE)}: {finding} (HTTP belongs in "
                      "streamd/web/)")
    kinds, imported = config_imports()
    if not kinds and not imported:
        imported = ["no source kind is installed: pip install -e . first"]
    for name in imported:
        problems += 1
        print(f"reading settings (streamd.config) imports {name}")
    problems += class_sizes()
    problems += twisted_privates()
    print(f"layers: {len(mods)} streamd modules, {problems} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
