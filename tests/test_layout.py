"""The package's shape: no import cycles between its modules, and the
model side importable without the server stack."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import bridge

ROOT = Path(bridge.__file__).parent


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Each module of the package, and the modules of the package it imports."""
    modules = {_module(p): p for p in ROOT.rglob("*.py") if "_proto" not in p.parts}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                # from a package import a module: that module, not the package
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = _imports()
    cycles = []

    def visit(name: str, path: list[str]) -> None:
        for target in graph[name]:
            if target in path:
                cycles.append([*path[path.index(target) :], target])
            elif len(path) < 12:
                visit(target, [*path, target])

    for name in graph:
        if name != "bridge":  # the package re-exports; it is imported by no module
            visit(name, [name])
    assert not cycles, cycles[:5]


def test_the_model_side_does_not_import_the_server_stack() -> None:
    """A model's environment needs grpc and protobuf, not the web server."""
    code = (
        "import sys, bridge.sdk; "
        "print(sorted(m for m in ('quart', 'quart_trio', 'hypercorn', 'httpx', 'h2') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


#: What only bridge/sse.py writes: an SSE field name, or a comment, where
#: a line starts.
_SSE_FIELD = re.compile(r"(?:^|\n)(?:event: |id: |data: |: ping)")


def test_only_sse_py_writes_the_bytes_of_an_sse_field() -> None:
    """Every frame is built from bridge/sse.py's parts: no other module
    holds a string with a field name (docstrings may speak of them)."""
    found = []
    for path in ROOT.rglob("*.py"):
        if path.name == "sse.py" or "_proto" in path.parts:
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and id(node) not in docstrings:
                value = node.value
                text = value.decode("latin-1") if isinstance(value, bytes) else value
                if isinstance(text, str) and _SSE_FIELD.search(text):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {text!r}")
    assert not found, found


def test_no_package_imports_one_that_imports_it_back() -> None:
    """Packages and top-level modules (bridge.core, bridge.http,
    bridge.webhooks...) form no cycle either: bridge.core imported
    bridge.webhooks, which imported bridge.core."""
    graph: dict[str, set[str]] = {}
    for name, targets in _imports().items():
        if name == "bridge":
            continue
        top = ".".join(name.split(".")[:2])
        graph.setdefault(top, set()).update(
            ".".join(t.split(".")[:2]) for t in targets if t != "bridge"
        )
    cycles = []
    for start in graph:
        stack = [(start, [start])]
        while stack:
            name, path = stack.pop()
            for target in graph.get(name, ()):
                if target == start and len(path) > 1:
                    cycles.append([*path, target])
                elif target not in path:
                    stack.append((target, [*path, target]))
    assert not cycles, sorted(cycles)[:5]


#: What Redis raises when it cannot be reached or answer, by the names the
#: store's modules could catch it under.
_REDIS_FAILURES = {"REDIS_ERRORS", "RedisError", "OSError", "ConnectionError", "TimeoutError"}


def test_redis_errors_become_the_bridges_in_one_module() -> None:
    """Only bridge/store_redis/errors.py catches Redis being away (its
    ``unavailable`` and ``attempt``); the other modules of the store use
    those, and read their scripts' answers (ResponseError) as answers."""
    found = []
    for path in (ROOT / "store_redis").glob("*.py"):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            caught: ast.expr | None = None
            if isinstance(node, ast.ExceptHandler):
                caught = node.type
            elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith("suppress"):
                caught = ast.Tuple(node.args)
            names = {
                n.id if isinstance(n, ast.Name) else n.attr
                for n in ast.walk(caught) if isinstance(n, ast.Name | ast.Attribute)
            } if caught is not None else set()  # fmt: skip
            if names & _REDIS_FAILURES:
                found.append(f"{path.name}:{node.lineno}: {sorted(names & _REDIS_FAILURES)}")
    assert not found, found


def test_no_class_is_longer_than_a_reader_holds() -> None:
    """About 300 lines at most: a class past that does several jobs (the
    Redis store was one class of 37 methods doing five)."""
    long = []
    for path in ROOT.rglob("*.py"):
        if "_proto" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                lines = node.end_lineno - node.lineno + 1
                if lines > 300:
                    long.append(f"{path.relative_to(ROOT)}: {node.name}, {lines} lines")
    assert not long, long


def _drawing() -> tuple[dict[str, str], set[tuple[str, str]]]:
    """docs/architecture.md's drawing of what imports what: each node's
    module (or package) and the arrows between nodes."""
    text = (ROOT.parent / "docs" / "architecture.md").read_text()
    section = text.split("## The packages, and what imports what", 1)[1]
    chart = section.split("```mermaid", 1)[1].split("```", 1)[0]
    nodes: dict[str, str] = {}
    arrows = set()
    for line in chart.splitlines()[2:]:
        ends = []
        for part in line.split("-->"):
            node = re.fullmatch(r'\s*(\w+)(?:\["([^" ]+)[^"]*"\])?\s*', part)
            assert node, line
            if node[2]:
                nodes[node[1]] = node[2].removesuffix(".py").replace("/", ".")
            ends.append(node[1])
        arrows.add((ends[0], ends[1]))
    return nodes, arrows


def test_the_architecture_drawing_shows_every_import_between_its_parts() -> None:
    """Every arrow of the drawing is an import, every import between two
    parts is an arrow, and what it does not draw imports nothing drawn."""
    nodes, drawn = _drawing()

    def part(module: str) -> str | None:
        for node, prefix in nodes.items():
            if module == prefix or module.startswith(prefix + "."):
                return node
        return None

    real, leaks = set(), []
    for name, targets in _imports().items():
        if name in ("bridge", "bridge.__main__"):  # the entry points
            continue
        for target in targets:
            source, dest = part(name), part(target)
            if source is None and dest is not None:
                leaks.append(f"{name} (not drawn) imports {target}")
            elif source is not None and dest is not None and source != dest:
                real.add((source, dest))
    assert not leaks, leaks
    assert sorted(real - drawn) == [], "imports the drawing misses"
    assert sorted(drawn - real) == [], "arrows that are no import"
