"""The house's rules, read from the imports: nothing runs back up, transport stays at the edge.

Floors from the bottom: the shared basics, the A/B store, long-running
operations (in the same shared store), the inference backends, the
forecasting core, backtests (on the core's stages), the gRPC edge, the
process entry. A module
imports only from its own floor or below; only the edge and the Triton
backend import grpc, only the edge the generated protos; the rest of the
gateway uses the A/B store through `forecast_gateway.ab` alone.
"""

from __future__ import annotations

import ast
from fnmatch import fnmatch
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "server" / "forecast_gateway"
FLOORS = {
    "ab": 1,
    "operations": 2,
    "backends": 3,
    "core": 4,
    "backtest": 5,
    "api": 6,
    "__main__": 7,
    "workers": 7,
}
"""Floor of each sub-package or top module; every other module is the bottom floor (0)."""
TRANSPORT = ("grpc", "grpc_health", "grpc_reflection", "grpc_status", "tritonclient")
MAY_USE_TRANSPORT = ("api/*", "backends/triton*.py", "__main__.py", "workers.py")
"""Where grpc and Triton's client may be imported: the edge, the Triton backend's modules."""


def floor(module: str) -> int:
    """The floor of a dotted module name inside the package."""
    parts = module.split(".")
    return FLOORS.get(parts[1], 0) if len(parts) > 1 else 0


def imports(path: Path) -> list[str]:
    """Every module `path` imports (absolute names)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def module_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(part for part in relative.parts if part != "__init__")


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_runs_back_up(path: Path) -> None:
    own = floor(module_of(path))
    up = [
        name for name in imports(path) if name.startswith("forecast_gateway.") and floor(name) > own
    ]
    assert not up, f"{module_of(path)} (floor {own}) imports from above: {up}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_transport_stays_at_the_edge(path: Path) -> None:
    relative = path.relative_to(PACKAGE).as_posix()
    allowed = any(fnmatch(relative, pattern) for pattern in MAY_USE_TRANSPORT)
    found = [n for n in imports(path) if n.split(".")[0] in TRANSPORT]
    protos = [n for n in imports(path) if n.split(".")[0] == "forecast"]
    assert allowed or not found, f"{relative} imports transport: {found}"
    assert relative.startswith("api/") or not protos, f"{relative} imports protos: {protos}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_store_is_used_through_its_package(path: Path) -> None:
    if path.relative_to(PACKAGE).parts[0] == "ab":
        return
    reached = [
        n
        for n in imports(path)
        if n.startswith("forecast_gateway.ab.") and n.split(".")[2] in _AB_MODULES
    ]
    assert not reached, f"{module_of(path)} reaches inside the A/B store: {reached}"


_AB_MODULES = {p.stem for p in (PACKAGE / "ab").glob("*.py") if p.stem != "__init__"}


def test_the_rules_can_fail() -> None:
    """The floor map sees an upward import where there is one; the transport patterns bite."""
    assert floor("forecast_gateway.api.server") > floor("forecast_gateway.core.forecaster")
    assert floor("forecast_gateway.errors") == 0 < floor("forecast_gateway.ab.store")
    may = [
        p
        for p in ("backends/triton_tensors.py", "backends/fake.py", "core/execute.py")
        if any(fnmatch(p, pattern) for pattern in MAY_USE_TRANSPORT)
    ]
    assert may == ["backends/triton_tensors.py"]


MAX_MODULE_LINES = 450
"""Most lines in one module of the package: one concern per module, small files."""
TOO_LONG_FOR_NOW: frozenset[str] = frozenset()
"""Temporary exceptions, each being split (relative paths); remove each when its split lands."""


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_too_long(path: Path) -> None:
    relative = path.relative_to(PACKAGE).as_posix()
    lines = len(path.read_text().splitlines())
    if relative in TOO_LONG_FOR_NOW:
        return
    assert lines <= MAX_MODULE_LINES, f"{relative} has {lines} lines (at most {MAX_MODULE_LINES})"


def test_the_size_exceptions_are_still_needed() -> None:
    """An exception that no longer applies (the module was split) is removed, not kept."""
    for relative in TOO_LONG_FOR_NOW:
        path = PACKAGE / relative
        assert path.exists() and len(path.read_text().splitlines()) > MAX_MODULE_LINES, relative
