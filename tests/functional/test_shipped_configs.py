"""The shipped image, compose and Kubernetes configurations start a gateway that serves.

No Docker engine runs here, so the test rebuilds what the container sees from
the shipped files: the Dockerfile's COPYs and ENV, its VOLUMEs, then either
compose's environment and volumes or the pod's ConfigMaps and emptyDirs. The
layout is read-only except the volumes (as root, the gateway runs without
the capabilities that bypass file modes: `setpriv`), and `python -m
forecast_gateway` runs from / (not the image's WORKDIR: nothing may depend
on it) against the session's real Triton. Only the Triton address and the
ports change; the layout's root is prepended to the absolute paths of the
FORECAST_* variables.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.services import free_port, stop, wait_serving
from tests.unit.test_deploy_files import (
    COMPOSE,
    GATEWAY_DOCKERFILE,
    K8S,
    dockerfile_instructions,
    image_env,
    kustomization,
    load_yaml,
    load_yaml_text_all,
    read_env_file,
)
from tools.embedded_triton import TritonProcess

pytestmark = pytest.mark.functional

ROOT = Path(__file__).resolve().parents[2]
CALIBRATION_FILES = sorted((ROOT / "model_repository").glob("*/*/calibration.json"))
SERVICE = "forecast.v1.ForecastService"
SETPRIV = shutil.which("setpriv")
# Root ignores file modes; without these capabilities it obeys them like any user.
READ_ONLY = (
    [SETPRIV, "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"]
    if SETPRIV and os.geteuid() == 0
    else []
)


class Container:
    """A container's filesystem under `root`: read-only files, writable volumes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env: dict[str, str] = {}
        self.volumes: set[str] = set()

    def at(self, path: str) -> Path:
        """Where the container's absolute `path` lies on this machine."""
        return self.root / path.lstrip("/")

    def build_image(self) -> None:
        """The gateway image's own files (not its Python packages), variables and volumes."""
        instructions = dockerfile_instructions(GATEWAY_DOCKERFILE)
        last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
        for op, args in instructions[last_from:]:
            words = shlex.split(args)
            if op == "COPY" and "--from=" not in args and not words[-1].startswith("/tmp/"):
                *sources, target = words
                for source in sources:
                    destination = self.at(target)
                    if target.endswith("/"):
                        destination /= Path(source).name
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(ROOT / source, destination)
            elif op == "VOLUME":  # Docker makes a volume of it; Kubernetes ignores it
                self.volumes.update(words)
        self.env = image_env(GATEWAY_DOCKERFILE)

    def mount_config_map(self, path: str, files: dict[str, str]) -> None:
        """A ConfigMap volume: it hides what the image has at `path`."""
        shutil.rmtree(self.at(path), ignore_errors=True)
        self.at(path).mkdir(parents=True)
        for name, text in files.items():
            (self.at(path) / name).write_text(text)

    def seal(self) -> None:
        """Everything read-only but the volumes."""
        for volume in self.volumes:
            self.at(volume).mkdir(parents=True, exist_ok=True)
        for path in [self.root, *self.root.rglob("*")]:
            mode = stat.S_IMODE(path.stat().st_mode) & ~0o222
            path.chmod(mode | (0o111 if path.is_dir() else 0) | 0o444)
        for volume in self.volumes:
            self.at(volume).chmod(0o700)

    def files(self) -> set[Path]:
        """Every file outside the volumes."""
        volumes = [self.at(v) for v in self.volumes]
        return {p for p in self.root.rglob("*") if not any(p.is_relative_to(v) for v in volumes)}


@pytest.fixture
def container() -> Iterator[Container]:
    root = Path(tempfile.mkdtemp(prefix="gateway-image-"))
    try:
        yield Container(root)
    finally:
        for path in [root, *root.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)
        shutil.rmtree(root)


def kubernetes(container: Container) -> None:
    """The pod of deploy/kubernetes: image + gateway-env, ConfigMap and emptyDir mounts."""
    texts = [(K8S / name).read_text() for name in kustomization()["resources"]]
    docs = [doc for text in texts for doc in load_yaml_text_all(text)]
    (deployment,) = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "forecast-gateway"
    ]
    pod = deployment["spec"]["template"]["spec"]
    (spec,) = pod["containers"]
    maps = {name: data for name, data in generated(kustomization())}
    volumes = {v["name"]: v for v in pod["volumes"]}
    container.volumes = set()  # only what the pod mounts is writable
    for mount in spec["volumeMounts"]:
        volume = volumes[mount["name"]]
        source = volume.get("configMap", {}).get("name") or volume.get("secret", {}).get(
            "secretName"
        )
        if source:
            data = maps[source]
            items = volume.get("configMap", volume.get("secret", {})).get("items")
            files = {i["path"]: data[i["key"]] for i in items} if items else data
            container.mount_config_map(mount["mountPath"], files)
        else:
            assert "emptyDir" in volume, f"{mount['name']}: expected an emptyDir"
            container.volumes.add(mount["mountPath"])
    for source in spec.get("envFrom", []):
        container.env.update(maps[source["configMapRef"]["name"]])
    for variable in spec.get("env", []):
        ref = variable.get("valueFrom", {})
        ref = ref.get("configMapKeyRef") or ref.get("secretKeyRef")
        container.env[variable["name"]] = (
            maps[ref["name"]][ref["key"]] if ref else variable["value"]
        )


def generated(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, str]]]:
    """The data of each ConfigMap and Secret kustomize generates."""
    for generator in spec.get("configMapGenerator", []) + spec.get("secretGenerator", []):
        data = {Path(name).name: (K8S / name).read_text() for name in generator.get("files", [])}
        data |= dict(line.split("=", 1) for line in generator.get("literals", []))
        for name in generator.get("envs", []):
            data |= read_env_file(K8S / name)
        yield generator["name"], data


def compose(container: Container) -> None:
    """The compose service: image + its environment, named volumes and secrets (/run/secrets)."""
    document = load_yaml(COMPOSE)
    service = document["services"]["gateway"]
    container.env.update(service["environment"])
    container.volumes.update(v.split(":")[1] for v in service.get("volumes", []))
    secrets = document.get("secrets", {})
    files = {
        name: (ROOT / secrets[name]["file"]).read_text() for name in service.get("secrets", [])
    }
    if files:
        container.mount_config_map("/run/secrets", files)


@pytest.mark.parametrize("deployment", [kubernetes, compose], ids=["kubernetes", "compose"])
def test_the_shipped_configuration_reaches_serving(
    deployment: Callable[[Container], None],
    container: Container,
    triton: TritonProcess,
    request: pytest.FixtureRequest,
) -> None:
    container.build_image()
    deployment(container)
    if container.env.get("FORECAST_STORE_URL", "").startswith("postgres"):
        # A shared PostgreSQL store: the test's server, its password in the mounted file.
        server = request.getfixturevalue("postgres")
        container.env["FORECAST_STORE_URL"] = server.create_database(f"shipped_{id(container)}")
        password_file = container.env.get("FORECAST_STORE_PASSWORD_FILE", "")
        assert password_file.startswith("/"), "expected the password file's path in the env"
        container.at(password_file).write_text(server.password + "\n")
    container.seal()
    before = container.files()

    port, metrics_port = free_port(), free_port()
    env = {
        name: str(container.root) + value if value.startswith("/") else value
        for name, value in container.env.items()
    }
    env |= {
        "PATH": os.environ.get("PATH", ""),
        "FORECAST_TRITON_URL": triton.grpc_url,
        "FORECAST_PORT": str(port),
        "FORECAST_METRICS_PORT": str(metrics_port),
    }
    log_path = Path(tempfile.mkstemp(prefix="gateway-", suffix=".log")[1])
    top_level = set(os.listdir("/"))
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*READ_ONLY, sys.executable, "-m", "forecast_gateway"],
            cwd="/",
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                wait_serving(f"127.0.0.1:{port}", timeout_s=1, service=SERVICE)
                break
            except TimeoutError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"not SERVING ({process.poll()}):\n{log_path.read_text()[-3000:]}")
        assert stop(process) == 0, log_path.read_text()[-3000:]
        events = [json.loads(line) for line in log_path.read_text().splitlines() if line[:1] == "{"]
    finally:
        stop(process)
        log_path.unlink()

    config_dir = Path(env["FORECAST_CONFIG_FILE"]).parent
    (calibration,) = [e for e in events if e.get("event") == "calibration_loaded"]
    shipped = {f"{p.parent.parent.name}/{p.parent.name}" for p in CALIBRATION_FILES}
    assert set(calibration["versions"]) == shipped, "every version's calibration is in the image"
    (routing,) = [e for e in events if e.get("event") == "routing_loaded"]
    assert routing["path"] == str(config_dir / "routing.toml")
    assert "lstm_timeseries" in routing["policies"], "the shipped routing policies are in force"
    if not env.get("FORECAST_STORE_URL"):
        store = Path(env["FORECAST_STORE_PATH"])
        assert store.is_file() and any(store.parent == container.at(v) for v in container.volumes)
    assert container.files() == before, "the gateway wrote outside its volumes"
    assert set(os.listdir("/")) == top_level, "the gateway wrote into its working directory"
