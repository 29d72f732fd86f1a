"""Worker processes: several gateways on one port, kept running by a supervisor.

With `workers` > 1, `python -m forecast_gateway` becomes a supervisor. It
never imports grpc: each worker is a fresh interpreter (multiprocessing's
spawn method), so no gRPC object, thread or poller ever crosses a fork (gRPC
core does not support forking once it is in use). Every worker binds the
same port with SO_REUSEPORT and runs the ordinary gateway (`server.run`)
with its own event loop, Triton channels and store connection; the kernel
hands each new connection to one of them.

The supervisor holds the port (bound, not listening) for its whole life, so
port 0 is resolved once to a port every worker shares and nobody else takes
between restarts. It forwards SIGTERM, SIGINT and SIGHUP to every worker,
restarts one that exits unexpectedly (with a growing delay; after repeated
crashes it stops the others and exits 1), and serves /metrics for all of
them: prometheus_client's multiprocess mode, one file per worker process.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import structlog
from prometheus_client import CollectorRegistry, make_wsgi_app, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from structlog.typing import EventDict

from forecast_gateway.config import GatewayConfig

log = structlog.get_logger(__name__)

SPAWN = multiprocessing.get_context("spawn")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STOPPING = (signal.SIGTERM, signal.SIGINT)
CONFIG_EXIT = 2
"""A worker's exit code for a configuration it cannot serve: restarting cannot fix it."""
FIRST_RESTART_DELAY_S = 0.5
MAX_RESTART_DELAY_S = 8.0
MAX_CRASHES = 5
"""Consecutive crashes of one worker after which the supervisor gives up."""
STABLE_S = 30.0
"""A worker that ran this long before exiting starts a new count of crashes."""
STOP_MARGIN_S = 10.0
"""Beyond drain + grace, how long a stopping worker gets before SIGKILL."""
POLL_S = 1.0
METRICS_REQUEST_TIMEOUT_S = 2.0
"""How long one scrape may keep the supervisor's loop (it serves /metrics itself)."""
PR_SET_PDEATHSIG = 1


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota."""
    cores = len(os.sched_getaffinity(0))
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    return max(1, cores)


def worker_count(config: GatewayConfig) -> int:
    """`workers` as a number ("auto": the usable cores)."""
    return usable_cores() if config.workers == "auto" else int(config.workers)


def restart_delay(crashes: int) -> float:
    """Seconds before restarting a worker that has crashed `crashes` times in a row."""
    return float(min(MAX_RESTART_DELAY_S, FIRST_RESTART_DELAY_S * 2 ** max(0, crashes - 1)))


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind host:port (0: a free port) with SO_REUSEPORT, without listening.

    Only listening sockets are given connections, so this one takes none; it
    keeps the port for the workers and fails at once if another program
    listens on it without SO_REUSEPORT.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


class StopTogether:
    """The workers' `api.server.Peers`: a barrier each passes once its gRPC stop has begun.

    Made by the supervisor (semaphores in shared memory: it outlives a
    SIGKILLed supervisor); a missing worker breaks it at the timeout.
    """

    def __init__(self, barrier: Any) -> None:
        self.barrier = barrier

    async def all_stopping(self, timeout_s: float) -> bool:
        """Wait at the barrier in a thread (it blocks); False once it is broken."""
        try:
            await asyncio.to_thread(self.barrier.wait, timeout_s)
        except threading.BrokenBarrierError:
            return False
        return True


def worker_main(
    config: GatewayConfig, index: int, metrics_dir: str, supervisor: int, barrier: Any = None
) -> None:
    """A worker: the ordinary gateway, its metrics in `metrics_dir`, its log lines tagged.

    prometheus_client picks multiprocess mode when it is first imported, which
    happens before this runs: the supervisor sets PROMETHEUS_MULTIPROC_DIR in
    its own environment before spawning, and the workers inherit it.
    """
    # The supervisor forwards SIGHUP to every live worker, this one too while it
    # imports and starts: ignored until serve() installs its reload handler.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if os.environ.get(MULTIPROC_ENV) != metrics_dir:
        raise RuntimeError(f"{MULTIPROC_ENV} must be {metrics_dir} before prometheus_client loads")
    _stop_with_parent(supervisor)
    from forecast_gateway import metrics
    from forecast_gateway.api.server import run
    from forecast_gateway.logs import configure_logging

    configure_logging(config.log_format, config.log_level)
    tag_logs(index)
    metrics.set_worker(index)
    run(config, StopTogether(barrier) if barrier is not None else None)


def _stop_with_parent(supervisor: int) -> None:
    """SIGTERM (a drain) for this worker if the supervisor dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before the request above took effect
        os.kill(os.getpid(), signal.SIGTERM)


def tag_logs(index: int) -> None:
    """Add `worker=<index>` to every log line of this process (after configure_logging).

    A processor rather than a context variable alone: the request interceptor
    clears context variables for each request. It runs first in structlog's
    chain and in the stdlib formatter's (grpc, tritonclient lines).
    """
    structlog.contextvars.bind_contextvars(worker=index)

    def add_worker(_: object, __: str, event: EventDict) -> EventDict:
        event.setdefault("worker", index)
        return event

    structlog.configure(processors=[add_worker, *structlog.get_config()["processors"]])
    for handler in logging.getLogger().handlers:
        formatter = handler.formatter
        if isinstance(formatter, structlog.stdlib.ProcessorFormatter):
            formatter.foreign_pre_chain = [add_worker, *(formatter.foreign_pre_chain or ())]


@dataclass
class _Worker:
    """One worker slot: its current process and its record of crashes."""

    index: int
    process: BaseProcess | None = None
    started: float = 0.0
    crashes: int = 0
    restart_at: float | None = None


@dataclass
class Supervisor:
    """Starts `count` workers on one port, restarts them, stops them on a signal."""

    config: GatewayConfig
    count: int
    workers: list[_Worker] = field(default_factory=list)
    restarts: int = 0
    _metrics: WSGIServer | None = None
    _stopping_since: float | None = None
    _exit_code: int = 0
    _barrier: Any = None

    def run(self) -> int:
        """Serve until a stop signal (or repeated crashes); the process's exit code."""
        try:
            port_socket = reserve_port(self.config.host, self.config.port)
        except OSError as error:
            sys.stderr.write(f"forecast-gateway: cannot bind {self.config.address}: {error}\n")
            return 1
        with port_socket, self._metrics_dir() as metrics_dir, self._signals() as wakeup:
            port = int(port_socket.getsockname()[1])
            worker_config = self.config.model_copy(
                update={"port": port, "metrics_port": -1, "workers": self.count}
            )
            try:
                self._metrics = self._metrics_server(metrics_dir)
            except OSError as error:
                address = f"{self.config.host}:{self.config.metrics_port}"
                sys.stderr.write(f"forecast-gateway: cannot serve metrics on {address}: {error}\n")
                return 1
            metrics_port = self._metrics.server_port if self._metrics else None
            log.info("workers_starting", workers=self.count, port=port, metrics_port=metrics_port)
            self.workers = [_Worker(index) for index in range(self.count)]
            self._barrier = SPAWN.Barrier(self.count)
            for worker in self.workers:
                self._start(worker, worker_config, metrics_dir)
            while self._alive() or self._stopping_since is None:
                ready = self._wait(wakeup)
                if self._metrics is not None and self._metrics.socket in ready:
                    self._metrics.handle_request()
                self._handle_signals(wakeup)
                self._reap(metrics_dir)
                self._restart_due(worker_config, metrics_dir)
                self._kill_overdue()
            # The last worker may exit after this round's _reap: is_alive()
            # above has collected it, and it is accounted (logged, its code) here.
            self._reap(metrics_dir)
            if self._metrics is not None:
                self._metrics.server_close()
        log.info("workers_stopped", exit_code=self._exit_code)
        return self._exit_code

    def _start(self, worker: _Worker, config: GatewayConfig, metrics_dir: Path) -> None:
        process = SPAWN.Process(
            target=worker_main,
            args=(config, worker.index, str(metrics_dir), os.getpid(), self._barrier),
            name=f"forecast-gateway-worker-{worker.index}",
        )
        process.start()
        worker.process, worker.started, worker.restart_at = process, time.monotonic(), None
        log.info("worker_started", worker=worker.index, pid=process.pid)

    def _alive(self) -> list[_Worker]:
        return [w for w in self.workers if w.process is not None and w.process.is_alive()]

    def _wait(self, wakeup: socket.socket) -> list[Any]:
        """Until a signal, a worker's exit, a scrape, or the next restart (at most POLL_S)."""
        now = time.monotonic()
        due = [w.restart_at - now for w in self.workers if w.restart_at is not None]
        timeout = max(0.0, min([POLL_S, *due]))
        sentinels = [w.process.sentinel for w in self._alive() if w.process is not None]
        metrics = [self._metrics.socket] if self._metrics is not None else []
        return multiprocessing.connection.wait([wakeup, *metrics, *sentinels], timeout)

    def _handle_signals(self, wakeup: socket.socket) -> None:
        try:
            received = wakeup.recv(64)
        except BlockingIOError:
            return
        for number in received:
            sig = signal.Signals(number)
            if sig in STOPPING:
                self._stop(sig, self._exit_code)
            else:
                self._forward(sig)

    def _forward(self, sig: signal.Signals) -> None:
        for worker in self._alive():
            assert worker.process is not None and worker.process.pid is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.process.pid, sig)
        log.info("signal_forwarded", signal=sig.name, workers=len(self._alive()))

    def _stop(self, sig: signal.Signals, exit_code: int) -> None:
        """Stop every worker (each drains); exit with `exit_code` once they are gone."""
        if self._stopping_since is None:
            self._stopping_since = time.monotonic()
            self._exit_code = exit_code
            for worker in self.workers:
                worker.restart_at = None
        self._forward(sig)

    def _reap(self, metrics_dir: Path) -> None:
        """Account for workers that exited; schedule restarts or give up."""
        for worker in self.workers:
            process = worker.process
            if process is None or process.exitcode is None:
                continue
            worker.process = None
            assert process.pid is not None
            multiprocess.mark_process_dead(process.pid, str(metrics_dir))  # type: ignore[no-untyped-call]
            code = process.exitcode
            ran_s = round(time.monotonic() - worker.started, 1)
            log.info("worker_exited", worker=worker.index, pid=process.pid, code=code, ran_s=ran_s)
            if self._stopping_since is not None:
                if code != 0 and self._exit_code == 0:
                    self._exit_code = 1
                continue
            if code == CONFIG_EXIT:
                log.error("worker_configuration_error", worker=worker.index)
                self._stop(signal.SIGTERM, CONFIG_EXIT)
                continue
            worker.crashes = 1 if ran_s >= STABLE_S else worker.crashes + 1
            if worker.crashes >= MAX_CRASHES:
                log.error("worker_restarts_exhausted", worker=worker.index, crashes=worker.crashes)
                self._stop(signal.SIGTERM, 1)
                continue
            delay = restart_delay(worker.crashes)
            worker.restart_at = time.monotonic() + delay
            log.warning(
                "worker_restarting", worker=worker.index, in_s=delay, crashes=worker.crashes
            )

    def _restart_due(self, config: GatewayConfig, metrics_dir: Path) -> None:
        now = time.monotonic()
        for worker in self.workers:
            if worker.restart_at is not None and worker.restart_at <= now:
                self.restarts += 1
                self._start(worker, config, metrics_dir)

    def _kill_overdue(self) -> None:
        """SIGKILL workers still running well past their drain and grace."""
        if self._stopping_since is None:
            return
        allowed = self.config.shutdown_drain_s + self.config.shutdown_grace_s + STOP_MARGIN_S
        if time.monotonic() - self._stopping_since < allowed:
            return
        for worker in self._alive():
            assert worker.process is not None
            log.error("worker_killed_after_grace", worker=worker.index, pid=worker.process.pid)
            worker.process.kill()

    def _metrics_server(self, metrics_dir: Path) -> WSGIServer | None:
        """/metrics for every worker (their files summed) plus the supervisor's own.

        Served from the supervisor's loop, not a thread: a worker gets its
        parent-death signal once per thread it is handed to as the threads of
        a dying supervisor exit, and a second SIGTERM cuts its drain short.
        """
        if self.config.metrics_port < 0:
            return None
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(metrics_dir))  # type: ignore[no-untyped-call]
        registry.register(_SupervisorCollector(self))
        family = socket.getaddrinfo(
            self.config.host.strip("[]") or None,
            self.config.metrics_port,
            type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE,
        )[0][0]
        server = _MetricsServer.for_family(family)(
            (self.config.host.strip("[]"), self.config.metrics_port), _QuietHandler
        )
        server.set_app(make_wsgi_app(registry))
        return server

    @contextlib.contextmanager
    def _metrics_dir(self) -> Iterator[Path]:
        """The workers' metric files: PROMETHEUS_MULTIPROC_DIR (emptied) or a temporary one."""
        named = os.environ.get(MULTIPROC_ENV)
        if named:
            path = Path(named).absolute()
            os.environ[MULTIPROC_ENV] = str(path)  # as the workers will compare it
            path.mkdir(parents=True, exist_ok=True)
            for stale in path.glob("*.db"):
                stale.unlink()
            yield path
            return
        path = Path(tempfile.mkdtemp(prefix="forecast-gateway-metrics-"))
        os.environ[MULTIPROC_ENV] = str(path)  # inherited by the workers
        try:
            yield path
        finally:
            del os.environ[MULTIPROC_ENV]
            shutil.rmtree(path, ignore_errors=True)

    @contextlib.contextmanager
    def _signals(self) -> Iterator[socket.socket]:
        """Signals arrive as bytes on a socket, so waiting on workers wakes at once."""
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        previous = {sig: signal.signal(sig, _ignore) for sig in FORWARDED}
        try:
            yield reader
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(previous_fd)
            reader.close()
            writer.close()


class _MetricsServer(WSGIServer):
    """A single-threaded WSGI server on the address family of the configured host."""

    @classmethod
    def for_family(cls, family: socket.AddressFamily) -> type[_MetricsServer]:
        """A subclass serving on `family` (IPv4 or IPv6)."""
        return type("_MetricsServer", (cls,), {"address_family": family})


class _QuietHandler(WSGIRequestHandler):
    """No access log line per scrape; a scrape that stalls is dropped."""

    timeout = METRICS_REQUEST_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


def _ignore(_signum: int, _frame: object) -> None:
    """A Python-level handler, so the signal is written to the wakeup socket."""


class _SupervisorCollector(Collector):
    """The supervisor's own figures: live workers and restarts."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Read at scrape time."""
        yield GaugeMetricFamily(
            "forecast_gateway_workers",
            "Worker processes running.",
            value=len(self.supervisor._alive()),
        )
        yield CounterMetricFamily(
            "forecast_gateway_worker_restarts",
            "Workers restarted after exiting unexpectedly.",
            value=self.supervisor.restarts,
        )
