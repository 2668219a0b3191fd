"""The device side must not pull in torch or transformers; imports go runtime ← profiles ← exporter, with no cycles.

The import graph is read from the source (``ast``), not by importing: every ``import`` / ``from … import`` of a
commandv module, at module level, inside a function (lazy) or under ``if TYPE_CHECKING:`` (annotations only).
Cycles count module-level and lazy imports (a lazy import still runs, only later); the one-way rule counts all.
"""

import ast
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"runtime": "commandv.runtime", "profiles": "commandv.profiles", "exporter": "commandv.exporter"}
"""Source folder → package name (pyproject.toml ``package-dir``; ``adapters/`` holds data only)."""
LAYERS = ("commandv.runtime", "commandv.profiles", "commandv.exporter")
"""Lowest first: a package may import only from its own layer and the ones before it."""


def test_runtime_import_is_light():
    code = ("import sys, commandv.runtime, commandv.runtime.pack.model, commandv.runtime.pack.gguf_io, "
            "commandv.runtime.engines.llama.engine, commandv.runtime.pack.signing, commandv.runtime.models.zoo, commandv.runtime.cli.run\n"
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing commandv.runtime pulled in: {out}"


HEAVY = ("torch", "transformers", "onnxruntime", "onnx", "llama_cpp", "fastapi", "uvicorn", "ray", "pyreft")
"""Optional dependencies no package import (nor the CLI's, for ``cmdv --help``) may load."""


def test_packages_and_cli_import_light():
    """The public names of the packages are lazy (PEP 562 ``__getattr__``) and the CLI imports heavy
    dependencies inside its commands."""
    code = ("import sys, commandv.runtime, commandv.profiles, commandv.exporter, commandv.exporter.cli.main\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing the packages or the CLI pulled in: {out}"


def test_public_names_resolve():
    """Every name in a package's ``__all__`` is there (lazy ones import their module on first use)."""
    import importlib

    for package in LAYERS:
        mod = importlib.import_module(package)
        for name in mod.__all__:
            assert getattr(mod, name) is not None, f"{package}.{name}"
            assert name in dir(mod)


@dataclass(frozen=True)
class Edge:
    """``src`` imports ``dst`` (module names); ``kind``: ``module``, ``function`` (lazy) or ``typing``
    (under ``if TYPE_CHECKING:``); ``where``: ``file:line``."""

    src: str
    dst: str
    kind: str
    where: str


def package_modules() -> dict[str, tuple[Path, bool]]:
    """Every commandv module: name → (source file, is a package ``__init__``)."""
    mods = {}
    for folder, package in PACKAGE_DIRS.items():
        for f in sorted((ROOT / folder).rglob("*.py")):
            parts = list(f.relative_to(ROOT / folder).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            mods[".".join([package, *(parts[:-1] if is_pkg else parts)])] = (f, is_pkg)
    return mods


def _is_type_checking(node: ast.AST) -> bool:
    t = node.test if isinstance(node, ast.If) else None
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def import_graph() -> list[Edge]:
    """The imports between commandv modules, read from the source. ``from pkg import name`` points at the
    module ``pkg.name`` when there is one, else at ``pkg`` (an attribute of its ``__init__``)."""
    mods = package_modules()
    edges = []

    def resolve(name: str) -> str | None:
        while name not in mods and "." in name:
            name = name.rsplit(".", 1)[0]
        return name if name in mods else None

    for src, (path, is_pkg) in mods.items():
        where = path.relative_to(ROOT)

        def visit(nodes, kind: str) -> None:
            for node in nodes:
                targets = []
                if isinstance(node, ast.Import):
                    targets = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    base = node.module or ""
                    if node.level:  # relative: from the module's package, one level up per extra dot
                        parts = src.split(".") if is_pkg else src.split(".")[:-1]
                        parts = parts[:len(parts) - (node.level - 1)]
                        base = ".".join(parts + ([node.module] if node.module else []))
                    targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
                for t in targets:
                    dst = resolve(t) if t.startswith("commandv.") else None
                    if dst is not None and dst != src:
                        edges.append(Edge(src, dst, kind, f"{where}:{node.lineno}"))
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    visit(ast.iter_child_nodes(node), "typing" if kind == "typing" else "function")
                elif _is_type_checking(node):
                    visit(node.body, "typing")
                    visit(node.orelse, kind)
                else:
                    visit(ast.iter_child_nodes(node), kind)

        visit(ast.parse(path.read_text(encoding="utf-8")).body, "module")
    return edges


def find_cycles(edges: list[Edge]) -> list[list[Edge]]:
    """One shortest cycle (as its edges) per strongly connected group of modules; [] when there are none."""
    out: dict[str, dict[str, Edge]] = {}
    for e in edges:
        out.setdefault(e.src, {}).setdefault(e.dst, e)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups = []

    def connect(v: str) -> None:  # Tarjan; the graph is a few hundred edges deep at most
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in out.get(v, {}):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(out):
        if v not in index:
            connect(v)
    cycles = []
    for group in groups:
        start = min(group)
        prev: dict[str, Edge] = {}
        todo = deque([start])
        while todo:  # breadth first inside the group, back to start
            v = todo.popleft()
            for w, e in sorted(out.get(v, {}).items()):
                if w in group and w not in prev:
                    prev[w] = e
                    todo.append(w)
        path, v = [], start
        while True:
            e = prev[v]
            path.append(e)
            v = e.src
            if v == start:
                break
        cycles.append(path[::-1])
    return cycles


def _describe(cycle: list[Edge]) -> str:
    """``a → b (a.py:1) → a (b.py:7, lazy)``: each step names the import line that makes it."""
    return " → ".join([cycle[0].src] + [f"{e.dst} ({e.where}{', lazy' if e.kind == 'function' else ''})"
                                        for e in cycle])


def test_import_graph_sees_the_package():
    """The reader finds absolute, lazy and annotation-only imports (guards the tests below; the package writes
    absolute imports only)."""
    edges = import_graph()
    found = {(e.src, e.dst) for e in edges}
    assert ("commandv.runtime.pack.model", "commandv.runtime.pack.gguf_io") in found  # module level
    assert ("commandv.runtime.serve.slots", "commandv.runtime.errors") in found  # in a subpackage
    assert ("commandv.profiles.profiler", "commandv.runtime") in found  # __version__ from the package __init__
    assert ("commandv.exporter.cli.main", "commandv.runtime.cli.errors") in found  # absolute
    assert {e.kind for e in edges} == {"module", "function", "typing"}


def test_no_import_cycles():
    """No module imports itself through others, at module level or lazily (annotation-only imports aside)."""
    cycles = find_cycles([e for e in import_graph() if e.kind != "typing"])
    assert not cycles, "import cycles:\n" + "\n".join(_describe(c) for c in cycles)


def test_find_cycles_reports_the_path():
    edges = [Edge("a", "b", "module", "a.py:1"), Edge("b", "c", "function", "b.py:2"),
             Edge("c", "a", "module", "c.py:3"), Edge("c", "d", "module", "c.py:4")]
    (cycle,) = find_cycles(edges)
    assert _describe(cycle) == "a → b (a.py:1) → c (b.py:2, lazy) → a (c.py:3)"
    assert find_cycles(edges[:2]) == []


def test_imports_go_one_way():
    """runtime never imports profiles or exporter, profiles never imports exporter: lazy and annotation-only
    imports included."""
    layer = {p: i for i, p in enumerate(LAYERS)}

    def layer_of(module: str) -> int:
        return layer[".".join(module.split(".")[:2])]

    upward = [e for e in import_graph() if layer_of(e.dst) > layer_of(e.src)]
    assert not upward, "\n".join(f"{e.where}: {e.src} imports {e.dst} ({e.kind})" for e in upward)


def test_other_engines_import_nothing_from_the_llama_engine():
    """What the engines share lives in ``runtime/engines/`` itself: the ONNX Runtime and torch engines, and the
    shared modules, import nothing from ``runtime/engines/llama/`` (issue #21)."""
    shared = ("commandv.runtime.engines.onnx", "commandv.runtime.engines.reference",
              "commandv.runtime.engines.text_engine", "commandv.runtime.engines.request_checks",
              "commandv.runtime.engines.sampling", "commandv.runtime.engines.protocol")
    edges = [e for e in import_graph() if e.kind != "typing"]
    assert any(e.src.startswith(shared[0]) for e in edges)
    bad = [f"{e.src} → {e.dst} ({e.where})" for e in edges
           if e.src.startswith(shared) and e.dst.startswith("commandv.runtime.engines.llama")]
    assert not bad, "\n".join(bad)
