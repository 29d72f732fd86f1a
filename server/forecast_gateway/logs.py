"""Structured logging: one configuration for structlog and the stdlib loggers.

JSON lines when stderr is not a terminal (or FORECAST_LOG_FORMAT=json), a
readable console format on a terminal. The request id and rpc are bound
with contextvars by the interceptor, so every line of a request carries them
(a worker process adds `worker=<n>`: `workers.tag_logs`); the model, version
and routing decision are in the call's `CallNotes` and go on its request
line, and no metric label is read from the log context.

The gateway's own events are rendered by structlog and written straight to
stderr; only foreign loggers (grpc, tritonclient) go through the stdlib
`logging` machinery, whose record, handler and formatter objects cost more
per line than the rendering itself (docs/benchmarks.md). Both produce the
same fields: event, level, logger, timestamp and the bound context.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, TextIO

import structlog
from structlog.typing import Processor


class LineWriter:
    """A structlog logger that writes each rendered line to a stream, under a lock."""

    def __init__(self, name: str, stream: TextIO, lock: threading.Lock) -> None:
        self.name = name  # read by structlog.stdlib.add_logger_name
        self._stream = stream
        self._lock = lock

    def msg(self, message: str) -> None:
        """Write one rendered line."""
        with self._lock:
            self._stream.write(message + "\n")
            self._stream.flush()

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


class LineWriterFactory:
    """Makes the LineWriter of each named logger; all share one stream and lock."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def __call__(self, *args: Any) -> LineWriter:
        """The logger for ``structlog.get_logger(name)``."""
        return LineWriter(str(args[0]) if args else "", self._stream, self._lock)


def configure_logging(log_format: str = "auto", level: str = "info") -> None:
    """Configure structlog and route stdlib logging (grpc, tritonclient) through it."""
    use_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if use_json:
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.dict_tracebacks)
    else:
        renderer = structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
    threshold = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(
        processors=[*shared, renderer],
        logger_factory=LineWriterFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(threshold)
