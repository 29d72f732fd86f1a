"""The two distributions: forecast-client on its own, and the gateway's declared dependencies.

The client wheel is built from a copy of clients/python and gen/python (the
shared tree is not written to) and installed into a fresh venv that has no
path to server/; its dependencies come from this venv's site-packages
through a .pth line, so nothing is downloaded. About 10 s.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.conftest import ROOT

CLIENT = ROOT / "clients" / "python"
GENERATED = ROOT / "gen" / "python" / "forecast" / "v1"


def requirements(pyproject: Path) -> dict[str, Requirement]:
    project = tomllib.loads(pyproject.read_text())["project"]
    return {canonical(r.name): r for r in map(Requirement, project.get("dependencies", []))}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    shutil.copytree(CLIENT, source / "clients" / "python", ignore=ignore)
    shutil.copytree(GENERATED.parent.parent, source / "gen" / "python", ignore=ignore)
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--wheel-dir", str(dist), str(source / "clients" / "python")],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    (built,) = dist.glob("forecast_client-*.whl")
    return built


def test_the_wheel_carries_the_client_and_the_generated_code_only(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    packages = {name.split("/")[0] for name in names if not name.endswith(".dist-info/RECORD")}
    assert {p for p in packages if not p.endswith(".dist-info")} == {"forecast", "forecast_client"}
    for generated in GENERATED.glob("*.py*"):
        assert f"forecast/v1/{generated.name}" in names
    assert "forecast_client/py.typed" in names and "forecast_client/cli.py" in names
    info = next(n for n in names if n.endswith(".dist-info/METADATA"))
    metadata = zipfile.ZipFile(wheel).read(info).decode()
    assert "Requires-Python: >=3.11\n" in metadata  # no upper cap
    assert "Provides-Extra: plot" in metadata
    assert re.search(r"Requires-Dist: matplotlib.*; extra == \"plot\"", metadata)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert (
        "forecast = forecast_client.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    )


def test_the_client_installs_and_runs_without_the_gateway(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
         "--no-index", str(wheel)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    # The dependencies (grpcio, protobuf...) from this venv, without its .pth files: the
    # editable installs of this checkout are not seen there.
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    check = (
        "import importlib.util, forecast_client, forecast.v1.forecast_service_pb2_grpc as g; "
        "from forecast_client import ForecastClient; "
        "print(forecast_client.__file__); print(g.__file__); "
        "print(importlib.util.find_spec('forecast_gateway'))"
    )
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    imported = subprocess.run(
        [str(python), "-c", check], cwd=tmp_path, env=environment, capture_output=True, text=True
    )
    assert imported.returncode == 0, imported.stderr
    client_file, generated_file, gateway = imported.stdout.split()
    assert client_file.startswith(str(site)) and generated_file.startswith(str(site))
    assert gateway == "None"
    unreachable = subprocess.run(
        [str(venv / "bin" / "forecast"), "--target", "127.0.0.1:1", "--timeout", "5", "models"],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("error: UNAVAILABLE: "), unreachable.stderr


def test_the_gateway_wheel_carries_every_gateway_package_and_nothing_else(tmp_path: Path) -> None:
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    shutil.copytree(ROOT / "server", source / "server", ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copy(ROOT / "README.md", source)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--wheel-dir", str(tmp_path), str(source)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    (built,) = tmp_path.glob("forecast_gateway-*.whl")
    names = set(zipfile.ZipFile(built).namelist())
    server = ROOT / "server"
    modules = {str(p.relative_to(server)) for p in (server / "forecast_gateway").rglob("*.py")}
    assert modules <= names
    assert {n.split("/")[0] for n in names} - {"forecast_gateway"} == {
        next(n.split("/")[0] for n in names if ".dist-info/" in n)
    }


def test_the_client_requires_what_the_generated_code_checks_at_import() -> None:
    grpc_stub = (GENERATED / "forecast_service_pb2_grpc.py").read_text()
    messages = (GENERATED / "forecast_service_pb2.py").read_text()
    grpc_version = re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", grpc_stub)
    protobuf_version = re.search(r"# Protobuf Python Version: ([\d.]+)", messages)
    assert grpc_version and protobuf_version
    for pyproject in (CLIENT / "pyproject.toml", ROOT / "pyproject.toml"):
        declared = requirements(pyproject)
        assert f">={grpc_version[1]}" in str(declared["grpcio"].specifier), pyproject
        assert f">={protobuf_version[1]}" in str(declared["protobuf"].specifier), pyproject


def third_party_imports(folder: Path) -> set[str]:
    """Top-level modules imported by the .py files under `folder`, stdlib excluded."""
    modules: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"__future__"}


@pytest.mark.parametrize(
    ("folder", "pyproject", "first_party"),
    [
        (ROOT / "server" / "forecast_gateway", ROOT / "pyproject.toml", {"forecast_gateway"}),
        (CLIENT / "forecast_client", CLIENT / "pyproject.toml", {"forecast_client", "forecast"}),
    ],
    ids=["gateway", "client"],
)
def test_every_import_is_a_declared_dependency(
    folder: Path, pyproject: Path, first_party: set[str]
) -> None:
    # "forecast" is first party for the client (it ships the generated code).
    project = tomllib.loads(pyproject.read_text())["project"]
    declared = set(requirements(pyproject))
    for extra in project.get("optional-dependencies", {}).values():
        declared |= {canonical(Requirement(r).name) for r in extra}
    if "forecast-client" in declared:  # the gateway gets the generated code from the client
        declared |= set(requirements(CLIENT / "pyproject.toml"))
    distributions = {**importlib.metadata.packages_distributions(), "forecast": ["forecast-client"]}
    missing = {}
    for module in sorted(third_party_imports(folder) - first_party):
        provided_by = {canonical(d) for d in distributions.get(module, [module])}
        if not provided_by & declared:
            missing[module] = sorted(provided_by)
    assert missing == {}, f"imported but not in {pyproject.relative_to(ROOT)}: {missing}"
