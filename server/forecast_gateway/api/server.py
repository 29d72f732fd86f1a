"""Assembles the gateway: gRPC server, health, reflection, catalog refresh, metrics.

`create_gateway(config)` builds everything and binds the port (port 0 picks a
free one, for tests); `Gateway.start()` / `Gateway.stop()` run it; `serve()`
runs it until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from forecast.v1 import forecast_service_pb2, forecast_service_pb2_grpc
from forecast_gateway import metrics
from forecast_gateway.ab import Bounds, ExperimentStore, StoreOpenError, interval_flags
from forecast_gateway.api import auth
from forecast_gateway.api.interceptors import RequestInterceptor
from forecast_gateway.api.operations import serve_operations
from forecast_gateway.api.overload import LoadShedder
from forecast_gateway.api.ports import BindError, bind, connection_options
from forecast_gateway.api.service import ForecastServicer
from forecast_gateway.backends.base import InferenceBackend
from forecast_gateway.backends.triton import TritonProxy
from forecast_gateway.backtest.runner import Backtester
from forecast_gateway.config import GatewayConfig
from forecast_gateway.core.calibration import Calibration
from forecast_gateway.core.catalog import ModelCatalog
from forecast_gateway.core.forecaster import Forecaster
from forecast_gateway.core.routing_config import RoutingConfigError, RoutingTable
from forecast_gateway.errors import ConfigError
from forecast_gateway.operations import OperationRunner

log = structlog.get_logger(__name__)

SERVICE_NAME = forecast_service_pb2.DESCRIPTOR.services_by_name["ForecastService"].full_name
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
OPERATIONS_SERVICE = "google.longrunning.Operations"
QUIET_S = 0.1
"""At shutdown, new calls are held until none has arrived or finished for this long."""
MAX_HOLD_S = 1.0
"""...or for at most this long (callers that never wait for an answer never go quiet)."""
STOP_SETTLE_S = 1.0
"""How long gRPC's stop may wait for streams that never end by themselves (health Watch)."""
INTERVAL_CHECK_S = 30.0
"""How often each served model's current experiment is read for the undercovering gauge."""
PEERS_WAIT_S = 2.0
"""How long a stopping worker waits for the others to begin stopping too (MAX_HOLD_S and margin)."""


class Peers(Protocol):
    """The other gateway processes on this port (worker processes), which stop together."""

    async def all_stopping(self, timeout_s: float) -> bool:
        """Return once every peer has begun gRPC's stop; False after `timeout_s` (one died)."""
        ...


@dataclass
class Gateway:
    """A built gateway: call start(), then stop() (or use serve())."""

    config: GatewayConfig
    server: grpc.aio.Server
    port: int
    catalog: ModelCatalog
    backend: InferenceBackend
    health: health.aio.HealthServicer
    routing: RoutingTable
    store: ExperimentStore
    forecaster: Forecaster
    shedder: LoadShedder
    operations: OperationRunner
    metrics_port: int | None = None
    peers: Peers | None = None
    _refresher: asyncio.Task[None] | None = field(default=None, repr=False)
    _interval_checker: asyncio.Task[None] | None = field(default=None, repr=False)

    async def start(self) -> None:
        """Read the catalog and routing policies, open the store, start serving.

        Raises RoutingConfigError if the routing file is invalid: the gateway
        does not start with a policy it cannot apply.
        """
        await self.refresh()
        self.routing.load()
        await self.store.start()
        self.operations.start()
        if self.forecaster.calibration is not None:
            await self.forecaster.calibration.start()
        await self.server.start()
        if self.config.metrics_port >= 0:
            self.metrics_port = metrics.serve_metrics(self.config.host, self.config.metrics_port)
        self._refresher = asyncio.create_task(self._refresh_forever(), name="catalog-refresh")
        self._interval_checker = asyncio.create_task(
            self._check_intervals_forever(), name="interval-coverage"
        )
        log.info(
            "gateway_started",
            port=self.port,
            metrics_port=self.metrics_port,
            triton_url=self.config.triton_url,
            models=self.catalog.served(),
            ready=self.catalog.all_ready(),
        )

    async def refresh(self) -> None:
        """Refresh the catalog and publish the result as health and metrics."""
        await self.catalog.refresh(self.backend)
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self.catalog.all_ready()
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)
        metrics.TRITON_UP.set(1 if self.catalog.triton_up else 0)
        for name, spec in self.catalog.specs.items():
            metrics.READY_VERSIONS.labels(name).set(len(spec.ready_versions()))

    async def stop(self) -> None:
        """Drain without losing a call, then persist and close.

        Order: health NOT_SERVING (for good: the catalog refresh stops), and
        WaitOperation callers answered; calls served as usual for
        shutdown_drain_s while load balancers take the replica out; gRPC's
        stop (GOAWAY: new calls go elsewhere, or get UNAVAILABLE), entered
        so that it cancels nothing (_stop_serving);
        every call received finishes within shutdown_grace_s. Then the
        long-running operations this replica runs are handed back (queued for
        another replica, or this one once restarted), shadow
        forecasts finish, the experiment store flushes (forecasts awaiting
        actuals are on disk) and the Triton channel closes.
        """
        log.info(
            "gateway_draining",
            drain_s=self.config.shutdown_drain_s,
            grace_s=self.config.shutdown_grace_s,
        )
        await self.health.enter_graceful_shutdown()
        self.operations.stopping.set()  # callers waiting on an operation are answered now
        for task in (self._refresher, self._interval_checker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await asyncio.sleep(self.config.shutdown_drain_s)
        await self._stop_serving(self.config.shutdown_grace_s)
        await self.operations.stop()  # their leases handed back: another replica resumes them
        try:
            await asyncio.wait_for(self.forecaster.drain_shadows(), self.config.shutdown_grace_s)
        except TimeoutError:
            log.warning("shadows_abandoned_at_shutdown")
        if self.forecaster.calibration is not None:
            await self.forecaster.calibration.close()
        await self.store.close()
        await self.backend.close()
        log.info("gateway_stopped")

    async def _stop_serving(self, grace_s: float) -> None:
        """Stop gRPC without it cancelling a call it has received.

        gRPC's stop cancels the calls no handler has picked up yet, and those
        that reach the server before the client reads its GOAWAY. So new calls
        are held until callers go quiet, gRPC's stop begins (GOAWAY: callers
        send elsewhere), and only then are the held calls served.

        With worker processes, the held calls are served only once every
        worker has begun its stop (and closed its listener): a caller
        answered by one worker reconnects, and were another worker still
        listening, its next call could reach that one just as its stop
        begins, and be cancelled.
        """
        deadline = time.monotonic() + grace_s
        quiet = await self.shedder.hold_until_quiet(QUIET_S, min(MAX_HOLD_S, grace_s))
        log.info("gateway_stopping", quiet=quiet, held=self.shedder.held)
        stopping = asyncio.ensure_future(self.server.stop(max(0.0, deadline - time.monotonic())))
        # One loop turn: grpc.aio's stop calls core's shutdown (GOAWAY) before
        # its first await, so the held calls are let in only after it.
        await asyncio.sleep(0)
        if self.peers is not None and not await self.peers.all_stopping(
            min(PEERS_WAIT_S, max(0.0, deadline - time.monotonic()))
        ):
            log.warning("workers_not_stopping_together")
        self.shedder.release()
        if not await self.shedder.wait_idle(max(0.0, deadline - time.monotonic())):
            log.warning("calls_still_running_at_grace_end", in_flight=self.shedder.in_flight)
        # What can hold gRPC's stop longer is a health Watch or reflection
        # stream (they never end by themselves): cancel those after a short settle.
        settle_s = min(STOP_SETTLE_S, max(0.0, deadline - time.monotonic()))
        done, _ = await asyncio.wait({stopping}, timeout=settle_s)
        if not done:
            await self.server.stop(0)
        await stopping

    def reload_routing(self) -> None:
        """Re-read the routing file (SIGHUP); an invalid file keeps the current policies."""
        self.routing.reload()

    async def _refresh_forever(self) -> None:
        """Catalog every catalog_refresh_s; the routing file when it changes."""
        next_routing_check = 0.0
        while True:
            await asyncio.sleep(self.config.catalog_refresh_s)
            try:
                await self.refresh()
                if time.monotonic() >= next_routing_check:
                    self.routing.reload_if_changed()
                    next_routing_check = time.monotonic() + self.config.routing_poll_s
            except Exception:
                log.exception("background_refresh_failed")

    async def check_intervals(self) -> None:
        """Publish each served model's current experiment's undercovering flags (the gauge).

        A model whose report cannot be read (the store unreachable) is
        logged and skipped; the others are still checked.
        """
        for model in self.catalog.served():
            try:
                experiment = self.routing.experiment(model)
                report = await self.store.experiment(model, experiment)
                metrics.observe_intervals(model, experiment, interval_flags(report))
            except Exception as error:
                log.warning("interval_check_failed", model=model, error=type(error).__name__)

    async def _check_intervals_forever(self) -> None:
        """`check_intervals` at start, then every INTERVAL_CHECK_S."""
        while True:
            try:
                await self.check_intervals()
            except Exception:  # never ends the task
                log.exception("interval_check_failed")
            await asyncio.sleep(INTERVAL_CHECK_S)


def create_gateway(config: GatewayConfig, backend: InferenceBackend | None = None) -> Gateway:
    """Build the server and bind its port (config.port 0 picks a free port).

    `backend` defaults to a `TritonProxy` for `config.triton_url`; tests of
    the edge pass `backends.fake.FakeBackend` and run the whole gateway in
    process.

    The port is TLS (mTLS with a client CA) when certificates are configured;
    tokens are read here, once. Raises ConfigError for a missing or invalid
    certificate, key or token file: the gateway does not start half-secured.
    """
    credentials = auth.server_credentials(config)
    authorizer = auth.TokenAuthorizer.from_config(config)
    if authorizer is not None and credentials is None:
        log.warning("tokens_sent_in_clear", hint="set tls_cert_file and tls_key_file")
    shedder = LoadShedder(config.max_in_flight)
    server = grpc.aio.server(
        interceptors=[RequestInterceptor(authorizer, shedder)],
        # max_message_bytes bounds requests only. Responses are bounded by
        # construction (max_batch_series x max_horizon, clipped error texts): a
        # full batch of 4,096 series x 64 steps is ~2.4 MB and must not be refused.
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            *connection_options(config),
            # Worker processes share the port, the kernel spreading connections;
            # a single gateway does not (gRPC's default would share it silently
            # with whatever process holds it).
            ("grpc.so_reuseport", 0 if config.workers == 1 else 1),
        ],
        # No maximum_concurrent_rpcs: the LoadShedder bounds the calls in
        # progress (with details), and gRPC's limiter made server.stop()
        # cancel calls it had already received (see docs/reliability.md).
    )
    port = bind(server, config.address, credentials)  # first: nothing else opened if it fails
    if backend is None:
        backend = TritonProxy(config.triton_url, config.triton_retries, config.retry_budget_ratio)
    catalog = ModelCatalog(
        models=config.models, discover=config.discover_models, allowed=config.allowed
    )
    routing = RoutingTable(
        Path(config.routing_file) if config.routing_file else None,
        lambda: catalog.specs,
        catalog.routable
        if config.discover_models
        else {m.name for m in config.models}.__contains__,
    )
    store = ExperimentStore.open(
        config.store_url,
        Bounds(config.store_max_forecasts, config.store_max_age_s, config.calibration_window),
        default_path=config.store_path,
        password_file=config.store_password_file,
    )
    forecaster = Forecaster(
        catalog,
        backend,
        routing,
        store,
        config.max_history_length,
        shadow_timeout_s=config.shadow_timeout_s,
        calibration=Calibration(
            store,
            config.calibration_dir,
            config.calibration_window,
            config.calibration_refresh_s,
            config.calibration_cache_entries,
        ),
    )
    backtester = Backtester.of(forecaster, config.max_batch_series)
    operations = serve_operations(
        server, store.storage, forecaster, backtester, config, authorizer is not None
    )
    servicer = ForecastServicer(
        forecaster,
        catalog,
        store,
        config.default_timeout_s,
        config.max_batch_series,
        config.max_operation_series,
        config.stream_max_pending,
        backtester,
        config.backtest_timeout_s,
        operations,
    )
    forecast_service_pb2_grpc.add_ForecastServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    _add_reflection(server)
    return Gateway(
        config,
        server,
        port,
        catalog,
        backend,
        health_servicer,
        routing,
        store,
        forecaster,
        shedder,
        operations.runner,
    )


def _add_reflection(server: grpc.aio.Server) -> None:
    """Server reflection under v1alpha (grpcurl 1.8.6) and v1 (newer tools).

    grpcio-reflection only ships v1alpha; v1 is the same wire format under a
    new package name, so the v1alpha servicer also serves the v1 name.
    """
    names = (
        SERVICE_NAME,
        OPERATIONS_SERVICE,
        health.SERVICE_NAME,
        reflection.SERVICE_NAME,
        REFLECTION_V1,
    )
    reflection.enable_server_reflection(names, server)
    servicer = reflection.aio.ReflectionServicer(names)
    handler = grpc.method_handlers_generic_handler(
        REFLECTION_V1,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))


def run(config: GatewayConfig, peers: Peers | None = None) -> None:
    """Serve until SIGTERM/SIGINT; a configuration problem found at start exits 2 with a message."""
    try:
        asyncio.run(serve(config, peers=peers))
    except (ConfigError, RoutingConfigError) as error:
        kind = "routing file" if isinstance(error, RoutingConfigError) else "configuration"
        sys.stderr.write(f"forecast-gateway: invalid {kind}: {error}\n")
        raise SystemExit(2) from error
    except (StoreOpenError, BindError) as error:  # the database is down, the port taken
        sys.stderr.write(f"forecast-gateway: {error}\n")
        raise SystemExit(1) from error


async def serve(
    config: GatewayConfig,
    stop_event: asyncio.Event | None = None,
    backend: InferenceBackend | None = None,
    peers: Peers | None = None,
) -> None:
    """Run the gateway until SIGTERM/SIGINT (or `stop_event`), then stop gracefully.

    The signal handlers are installed before the gateway starts (store,
    catalog, calibration can take seconds) and stay until it has stopped:
    a SIGTERM while starting stops it once started, a SIGHUP while starting
    is dropped (start reads the routing file anyway), and neither kills a
    worker the supervisor would count as crashed. After the stop SIGHUP is
    ignored: a reload forwarded to a process that is exiting cleanly.
    """
    stop = stop_event or asyncio.Event()
    loop = asyncio.get_running_loop()
    gateway: Gateway | None = None

    def reload() -> None:
        if gateway is not None:
            gateway.reload_routing()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        gateway = create_gateway(config, backend)
        gateway.peers = peers
        await gateway.start()
        try:
            await stop.wait()
        finally:
            # The handlers stay during the drain: a second SIGTERM (a supervisor
            # dying, an impatient operator) must not kill a draining gateway.
            await gateway.stop()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload forwarded as the process ends
