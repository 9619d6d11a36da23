"""The layering, checked on the source: no import cycles (lazy ones included), nothing imports the CLI,
the targets never import each other, rendering is pure and only the cluster code (and, lazily, the router's
EndpointSlice discovery) may import a Kubernetes client."""

from __future__ import annotations

import ast
from pathlib import Path

from tests import ROOT

SRC = ROOT / "src"
PACKAGE = "vllm_fleet"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function, TYPE_CHECKING blocks included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in MODULES else node.module)
    return found


GRAPH = {name: {m for m in _imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _importers(prefix: str, *, outside: str) -> list[str]:
    """Modules not under ``outside`` that import ``prefix`` or anything under it."""
    return sorted(
        f"{name} -> {target}"
        for name, path in MODULES.items()
        if not _under(name, outside)
        for target in _imports(path)
        if _under(target, prefix)
    )


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_the_walk_sees_the_package() -> None:
    assert {"vllm_fleet.cli", "vllm_fleet.ops.lifecycle", "vllm_fleet.targets.local"} <= set(MODULES)
    assert "vllm_fleet.plan.resolve" in GRAPH["vllm_fleet.plan"]  # a package's re-export is an edge
    assert "vllm_fleet.weights.sources.base" in GRAPH["vllm_fleet.weights.sources.http"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    assert _cycles(GRAPH) == []


def test_nothing_imports_the_cli() -> None:
    assert _importers("vllm_fleet.cli", outside="vllm_fleet.cli") == []


def test_targets_never_import_each_other() -> None:
    local, kubernetes = "vllm_fleet.targets.local", "vllm_fleet.targets.kubernetes"
    assert [line for line in _importers(kubernetes, outside=kubernetes) if line.startswith(local)] == []
    assert [line for line in _importers(local, outside=local) if line.startswith(kubernetes)] == []


def test_rendering_is_pure() -> None:
    manifests = "vllm_fleet.targets.kubernetes.manifests"
    io = ("httpx", "aiohttp", "socket", "subprocess", "lightkube", "kubernetes")
    impure = [
        f"{name} -> {m}"
        for name, path in MODULES.items()
        if _under(name, manifests)
        for m in _imports(path)
        if m.split(".")[0] in io
    ]
    assert impure == []


# The router follows the engine Service's EndpointSlices itself (router issue), importing lightkube
# inside the function that does: importing the router loads no Kubernetes client.
DISCOVERY = "vllm_fleet.router.discovery"


def _top_level_imports(path: Path) -> set[str]:
    """What importing ``path`` imports at once: its module-level import statements."""
    found: set[str] = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_only_the_cluster_code_and_the_routers_discovery_import_a_kubernetes_client() -> None:
    cluster = "vllm_fleet.targets.kubernetes.cluster"
    for client in ("lightkube", "kubernetes"):
        others = [line for line in _importers(client, outside=cluster) if not line.startswith(f"{DISCOVERY} -> ")]
        assert others == []
    assert "lightkube" in {m.split(".")[0] for m in _imports(MODULES[DISCOVERY])}  # the walk sees the lazy import
    assert not {m.split(".")[0] for m in _top_level_imports(MODULES[DISCOVERY])} & {"lightkube", "kubernetes"}
