"""The production gateway loads no device, emulator or simulation code.

`dermtwin run` and everything it imports must work on a Pi that carries only the gateway:
checked in a fresh interpreter, from `sys.modules` after importing what `run` imports.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

FORBIDDEN_PREFIXES = ("firmware", "sensor_drivers", "simulation", "aioble", "machine",
                      "psycopg")   # `dermtwin sink` only (the `sink` extra)

PROBE = """
import json, sys
import gateway.cli
from gateway.cli import build_parser
from gateway import service  # what `run` builds
from gateway.ble import radio, bumble_backend  # the BLE adapters `run` may use
print(json.dumps(sorted(sys.modules)))
"""


def test_run_imports_no_device_or_simulation_module() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    loaded = json.loads(out.splitlines()[-1])
    offending = [
        name
        for name in loaded
        if any(name == p or name.startswith(p + ".") for p in FORBIDDEN_PREFIXES)
    ]
    assert offending == [], f"`dermtwin run` would load {offending}"


# -- the static import graph of gateway/ and simulation/ (docs/architecture.md) -----------------
# Every import counts: module level, inside functions and under `if TYPE_CHECKING:`, because
# each is a dependency a reader must follow and a cycle waiting for the next refactor.

ROOT = Path(__file__).resolve().parents[1]
SHIMS = ROOT / "simulation" / "device_shims"   # on sys.path as top-level `aioble`, `machine`…

# The sans-I/O cores: values in, values out. Neither they nor anything they import reaches
# an adapter (a radio, a database, a broker, a model runtime, a serial port).
SANS_IO_CORES = (
    "gateway.values", "gateway.retry_policy", "gateway.protocol", "gateway.protocol.constants",
    "gateway.protocol.control", "gateway.protocol.frames", "gateway.session", "gateway.twin",
    "gateway.samples_message", "gateway.model_contracts", "gateway.progress",
    "gateway.mqtt.inbound", "gateway.temp_baseline", "gateway.uv_forecast",
    "gateway.model_registry", "gateway.sink.rows", "gateway.twin_message",
    "gateway.payload_encoding", "gateway.twin_columns", "gateway.uv_exposure",
)
# Cores being introduced in parallel (issue 9: the delivery policy, the topic table, the model
# registry): held to the same rule from the moment they exist.
PARALLEL_CORES = ("gateway.mqtt.delivery", "gateway.outbox_message", "gateway.mqtt.topics")
ADAPTER_PACKAGES = ("sqlite3", "paho", "aiomqtt", "bleak", "bumble", "onnxruntime", "serial",
                    "rich", "psycopg")
# Outside the project a core may import numpy and the standard library, less sqlite3.
CORE_MAY_IMPORT = frozenset(sys.stdlib_module_names) | {"numpy", "gateway"}
# `pkg.*`: the package's modules (a sans-I/O one among them is exempt), not its __init__.
ADAPTER_MODULES = ("gateway.store", "gateway.outbox", "gateway.inference", "gateway.mqtt.*",
                   "gateway.ble.*", "gateway.patch_link", "gateway.serial_repl",
                   "gateway.service", "gateway.sink.*")
# The composition layer wires cores and adapters together; nothing below it imports it.
COMPOSITION = ("gateway.service", "gateway.ingest", "gateway.remote_requests", "gateway.cli")
# Upstream aioble's core and device modules import each other (deferred, inside functions
# and under TYPE_CHECKING); the shim keeps upstream's shape so firmware sees the same API.
ALLOWED_CYCLES = [{"aioble.core", "aioble.device"}]
# The only gateway modules that may reach device or simulation code, and only inside a
# function (so `dermtwin run` never loads it): the CLI's `demo`/`simulate` commands, and
# provision's use of the firmware's flash-log format.
DEVICE_SIDE = ("simulation", "firmware", "sensor_drivers", "aioble", "machine", "bluetooth",
               "micropython")
ALLOWED_DEVICE_SIDE_IMPORTS = {"gateway.cli": ("simulation",),
                               "gateway.provision": ("firmware",)}


@dataclass(frozen=True)
class Import:
    target: str          # absolute dotted name as written (resolved if relative)
    deferred: bool       # inside a function or `if TYPE_CHECKING:`


def _module_name(path: Path) -> str:
    if path.is_relative_to(SHIMS):
        rel = path.relative_to(SHIMS)
    else:
        rel = path.relative_to(ROOT)
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> list[Import]:
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, deferred: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = deferred or isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) or (
                isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test))
            if isinstance(child, ast.Import):
                found.extend(Import(alias.name, deferred) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                found.append(Import(base, deferred))
                found.extend(Import(f"{base}.{alias.name}", deferred) for alias in child.names)
            visit(child, inner)

    visit(tree, False)
    return found


def _project_graph() -> tuple[dict[str, set[str]], dict[str, list[Import]]]:
    """Edges between project modules, and every import (project or not) per module."""
    files = sorted((ROOT / "gateway").rglob("*.py")) + sorted((ROOT / "simulation").rglob("*.py"))
    modules = {_module_name(f): f for f in files}
    raw = {name: _imports(path, name) for name, path in modules.items()}
    graph: dict[str, set[str]] = {}
    for name, imports in raw.items():
        # `from a.b import c`: an edge to a.b.c if it is a module, else to a.b.
        targets = {imp.target for imp in imports if imp.target in modules}
        graph[name] = {t for t in targets if t != name}
    return graph, raw


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    """`name` is one of `prefixes` or inside one; a prefix `pkg.*` matches inside only."""
    return any(name.startswith(p[:-1]) if p.endswith(".*")
               else name == p or name.startswith(p + ".") for p in prefixes)


def _closure(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every project module loaded by importing `start`: its imports, theirs, and the
    packages above each (importing a.b.c runs a/__init__.py and a/b/__init__.py first)."""
    def loads(name: str) -> set[str]:
        parts = name.split(".")
        parents = {".".join(parts[:i]) for i in range(1, len(parts))}
        return graph[name] | {p for p in parents if p in graph}

    seen, todo = {start}, [start]
    while todo:
        for nxt in loads(todo.pop()) - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_graph_walker_sees_deferred_and_relative_imports() -> None:
    graph, raw = _project_graph()
    # function-level (gateway.cli's `run`), TYPE_CHECKING (remote_requests), relative (aioble)
    assert "gateway.service" in graph["gateway.cli"]
    assert "gateway.patch_link" in graph["gateway.remote_requests"]
    assert {"aioble.core", "aioble.device"} <= graph["aioble"]
    assert any(imp.target == "sqlite3" and not imp.deferred for imp in raw["gateway.store"])


def test_no_import_cycles_in_gateway_or_simulation() -> None:
    graph, _ = _project_graph()
    cycles = [sorted(c) for c in _cycles(graph) if c not in ALLOWED_CYCLES]
    assert cycles == [], f"import cycles: {cycles}"


def test_sans_io_cores_reach_no_adapter() -> None:
    graph, raw = _project_graph()
    missing = [core for core in SANS_IO_CORES if core not in graph]
    assert missing == [], f"listed as cores but not found: {missing}"
    cores = SANS_IO_CORES + tuple(core for core in PARALLEL_CORES if core in graph)
    packages = {_module_name(p.parent) for p in (ROOT / "gateway").rglob("__init__.py")}
    problems = []
    for core in cores:
        for module in sorted(_closure(graph, core)):
            if _within(module, ADAPTER_MODULES) and module not in cores:
                problems.append(f"{core} -> … -> {module} (an adapter)")
            elif module not in cores and module not in packages:
                problems.append(f"{core} -> … -> {module} (not a sans-I/O core)")
            for imp in raw[module]:
                top = imp.target.split(".")[0]
                if _within(imp.target, ADAPTER_PACKAGES) or top not in CORE_MAY_IMPORT:
                    problems.append(f"{core} -> … -> {module} imports {imp.target}")
    assert problems == []


def test_only_composition_imports_composition() -> None:
    graph, _ = _project_graph()
    wrong = [(src, dst) for src, dsts in graph.items() for dst in dsts
             if _within(dst, COMPOSITION) and src.startswith("gateway.")
             and not _within(src, COMPOSITION)]
    assert wrong == []


def test_gateway_reaches_device_code_only_where_allowed_and_deferred() -> None:
    _, raw = _project_graph()
    wrong = []
    for module, imports in raw.items():
        if not module.startswith("gateway."):
            continue
        allowed = ALLOWED_DEVICE_SIDE_IMPORTS.get(module, ())
        for imp in imports:
            if _within(imp.target, DEVICE_SIDE) and not (
                    imp.deferred and _within(imp.target, allowed)):
                wrong.append(f"{module} imports {imp.target}"
                             + ("" if imp.deferred else " at module level"))
    assert wrong == []


def _owned_names(path: Path) -> set[str]:
    """Names a module defines itself (classes, functions, assignments), not ones it imports."""
    owned: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            owned.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            owned.update(t.id for t in targets if isinstance(t, ast.Name))
    return owned


def test_the_store_is_imported_only_for_what_it_owns() -> None:
    # Value types live in gateway/values.py; the SQLite adapter is no second address for them.
    owned = _owned_names(ROOT / "gateway" / "store.py")
    wrong = []
    for folder in ("gateway", "simulation", "tests", "bench", "hil_tests", "tools"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            aliases = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module == "gateway.store":
                    wrong += [f"{path.relative_to(ROOT)}: {a.name}" for a in node.names
                              if a.name not in owned]
                elif isinstance(node, ast.ImportFrom) and node.module == "gateway":
                    aliases |= {a.asname or a.name for a in node.names if a.name == "store"}
                elif isinstance(node, ast.Import):
                    aliases |= {a.asname for a in node.names
                                if a.name == "gateway.store" and a.asname}
            wrong += [f"{path.relative_to(ROOT)}: {node.value.id}.{node.attr}"
                      for node in ast.walk(tree)
                      if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                      and node.value.id in aliases and node.attr not in owned]
    assert wrong == [], "import these from gateway.values (or their own module), not the store"
