"""Prometheus metrics of the gateway, served on their own HTTP port.

Labelled by rpc, model, version and routing decision so that versions can be
compared on a dashboard. Triton's own metrics (batch sizes, queue time) are
scraped from Triton directly.

With several workers (workers.py) each worker process writes these to files
(prometheus_client's multiprocess mode, chosen when it is imported) and the
supervisor serves their sum; each gauge says how its workers' values combine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = structlog.get_logger(__name__)

REQUESTS = Counter(
    "forecast_gateway_requests",
    "Requests answered by the gateway, by outcome.",
    ["rpc", "model", "version", "routing", "code"],
)
REQUEST_DURATION = Histogram(
    "forecast_gateway_request_duration_seconds",
    "Time from receiving a request to answering it.",
    ["rpc", "model", "version"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
TRITON_UP = Gauge(
    "forecast_gateway_triton_up",
    "1 if Triton answered the last catalog refresh.",
    multiprocess_mode="livemin",  # 0 while any worker cannot reach Triton
)
SHADOWS = Counter(
    "forecast_gateway_shadow_requests",
    "Shadow forecasts by outcome (ok, failed, skipped, dropped).",
    ["model", "version", "outcome"],
)
MISSING_VALUES_REJECTED = Counter(
    "forecast_gateway_missing_values_rejected",
    "Forecasts rejected because the window a version reads had missing points and no fill.",
    ["model"],
)
ROUTING_RESTRICTED = Counter(
    "forecast_gateway_routing_restricted",
    "Unpinned forecasts routed among fewer versions: the others could not serve the request.",
    ["model", "version"],
)
FALLBACKS = Counter(
    "forecast_gateway_fallbacks",
    "Requests answered by the fallback after the chosen version failed.",
    ["model", "failed_version", "reason"],
)
ACTUALS = Counter(
    "forecast_gateway_actuals_received",
    "ReportActuals calls that scored a forecast.",
    ["model"],
)
FORECAST_ERROR = Histogram(
    "forecast_gateway_forecast_mase",
    "MASE of scored forecasts (latest score of each reported forecast).",
    ["model", "version", "role"],
    buckets=(0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
)
SERIES = Counter(
    "forecast_gateway_series",
    "Series forecast, counting each series of a batch or stream.",
    ["rpc", "model", "version", "routing"],
)
IN_FLIGHT = Gauge(
    "forecast_gateway_in_flight_requests",
    "ForecastService calls in progress.",
    multiprocess_mode="livesum",
)
SHED = Counter(
    "forecast_gateway_shed_requests",
    "Calls refused with RESOURCE_EXHAUSTED at the in-flight limit.",
)
EXPERIMENT_RECORDS_DROPPED = Counter(
    "forecast_gateway_experiment_records_dropped",
    "A/B records not stored: the writer's queue was full (a stalled disk) or the store closed.",
)
READY_VERSIONS = Gauge(
    "forecast_gateway_model_ready_versions",
    "Ready versions per served model.",
    ["model"],
    multiprocess_mode="livemin",
)
CALIBRATION_SCORES = Gauge(
    "forecast_gateway_calibration_scores",
    "Fewest calibration scores of any horizon step of a version: an 80% interval needs 9, "
    "a 95% one 39 (below them requests get NOT_CALIBRATED).",
    ["model", "version"],
    multiprocess_mode="livemin",
)
INTERVAL_UNDERCOVERING = Gauge(
    "forecast_gateway_interval_undercovering",
    "1 while a version's intervals at a nominal coverage cover significantly less than "
    "nominal in its model's current experiment (GetExperiment's undercovering), else 0.",
    ["model", "version", "coverage"],
    multiprocess_mode="livemax",  # 1 as soon as any worker has seen it undercover
)
WORKER_REQUESTS = Counter(
    "forecast_gateway_worker_requests",
    "Requests answered, by worker process: how connections spread over the workers.",
    ["worker"],
)
_worker = WORKER_REQUESTS.labels("0")


def set_worker(index: int) -> None:
    """Name this process's worker (0 in a single-process gateway)."""
    global _worker
    _worker = WORKER_REQUESTS.labels(str(index))


_REQUEST_CHILDREN: dict[tuple[str, str, str, str, str], tuple[Any, Any]] = {}
"""The labelled children of REQUESTS and REQUEST_DURATION, bound once per label set.

`labels()` takes a lock and validates its values on every call; the label
sets are few (served models and versions only: unknown names are refused
before they are bound to a request), so they are looked up once.
"""


def observe_request(
    rpc: str, model: str, version: str, routing: str, code: str, seconds: float
) -> None:
    """Record one answered request."""
    key = (rpc, model, version, routing, code)
    children = _REQUEST_CHILDREN.get(key)
    if children is None:
        children = (REQUESTS.labels(*key), REQUEST_DURATION.labels(rpc, model, version))
        _REQUEST_CHILDREN[key] = children
    children[0].inc()
    children[1].observe(seconds)
    _worker.inc()


_UNDERCOVERING: dict[str, dict[tuple[str, str], bool]] = {}
"""model -> (version, coverage label) -> the flag last published for its current experiment."""


@dataclass(frozen=True)
class IntervalFlag:
    """One version's coverage at one tracked interval, as the experiment report measured it."""

    version: str
    nominal: float
    undercovering: bool
    coverage: float
    coverage_high: float
    steps: int


def observe_intervals(model: str, experiment: str, flags: Sequence[IntervalFlag]) -> None:
    """Publish the undercovering flags of `model`'s current experiment.

    Labels of versions or coverages no longer reported (another experiment
    became current) drop to 0; a version that turns undercovering in this
    process is logged once, until it recovers.
    """
    previous = _UNDERCOVERING.get(model, {})
    current: dict[tuple[str, str], bool] = dict.fromkeys(previous, False)
    for flag in flags:
        key = (flag.version, f"{flag.nominal:g}")
        current[key] = flag.undercovering
        if flag.undercovering and not previous.get(key, False):
            log.warning(
                "interval_undercoverage",
                model=model,
                version=flag.version,
                experiment=experiment,
                nominal=flag.nominal,
                coverage=flag.coverage,
                coverage_high=flag.coverage_high,
                steps=flag.steps,
            )
        elif previous.get(key, False) and not flag.undercovering:
            log.info(
                "interval_coverage_recovered",
                model=model,
                version=flag.version,
                nominal=flag.nominal,
                coverage=flag.coverage,
                steps=flag.steps,
            )
    for (version, coverage), undercovering in current.items():
        INTERVAL_UNDERCOVERING.labels(model, version, coverage).set(1 if undercovering else 0)
    _UNDERCOVERING[model] = current


def serve_metrics(host: str, port: int) -> int:
    """Start the /metrics HTTP endpoint in a background thread; return its port."""
    server, _thread = start_http_server(port, addr=host)
    return int(server.server_port)
