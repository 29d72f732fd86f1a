"""The A/B store's façade: write-behind recording on the request path, reads that see it.

The request path only enqueues (`record`, `record_shadow`); a background
task writes the queue in batches every `flush_interval_s` or `flush_batch`
records. Reads (`report_actuals`, `experiment`) write what is queued first,
after any write in progress, so they see everything this process recorded
before them. Another replica's forecasts become visible once that replica
has flushed (within `flush_interval_s` plus one write): an unknown id made
less than `WRITE_BEHIND_GRACE_S` ago is looked up again until then, so a
forecast served by one replica and reported to another right away is found.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import structlog

from forecast_gateway import metrics
from forecast_gateway.ab.actuals import checked_actuals, not_found
from forecast_gateway.ab.records import (
    DEFAULT_EXPERIMENT,
    ActualsReport,
    ExperimentInfo,
    ExperimentReport,
    Prediction,
    Record,
    RecordedForecast,
    Role,
    ShadowRecord,
    check_experiment,
    check_forecast,
    check_prediction,
    forecast_id_time,
)
from forecast_gateway.ab.report import summarize
from forecast_gateway.ab.storage import Bounds, CalibrationPools, Storage, open_storage
from forecast_gateway.errors import Unavailable

log = structlog.get_logger(__name__)

MAX_PENDING = 20_000
"""Records queued for the writer at most (~0.6 KB each at horizon 5, ~2 KB at 64); past it
they are dropped and counted: A/B recording never grows the gateway's memory without
bound. Only a stalled database fills it."""
WRITE_BEHIND_GRACE_S = 2.0
"""How long after its id was made an unknown forecast may still be in a replica's queue."""
CLOCK_SKEW_S = 1.0
"""How far ahead of this host's clock another replica's forecast id may be stamped."""
LOOKUP_INTERVAL_S = 0.05


class StoreOpenError(RuntimeError):
    """The store could not be opened at start-up; the message names it (never a password)."""


class ExperimentStore:
    """Records forecasts write-behind and scores them when actuals arrive.

    Use from one event loop: `await start()`, `record*()` on the request
    path, `await close()` on shutdown (writes everything still queued).
    """

    def __init__(
        self,
        storage: Storage,
        *,
        clock: Callable[[], float] = time.time,
        flush_interval_s: float = 0.05,
        flush_batch: int = 256,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.storage = storage
        self.dropped = 0
        """Records dropped because the queue was full, the store closed or a write failed."""
        self._clock = clock
        self._flush_interval_s = flush_interval_s
        self._flush_batch = flush_batch
        self._max_pending = max_pending
        self._pending: list[Record] = []
        self._wakeup = asyncio.Event()
        self._write_lock = asyncio.Lock()  # writes in order; a read waits for earlier ones
        self._writes: set[asyncio.Future[Unavailable | None]] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._stopping = False
        self._closed = False
        self._unreported_drops = 0

    @classmethod
    def open(
        cls,
        url: str,
        bounds: Bounds,
        *,
        default_path: str = "",
        password_file: str = "",
    ) -> ExperimentStore:
        """The store `url` names (empty: the SQLite file `default_path`), kept within `bounds`."""
        return cls(
            open_storage(url, bounds, default_path=default_path, password_file=password_file)
        )

    async def start(self) -> None:
        """Open (or create) the database and start the background flusher.

        Raises StoreOpenError if the database cannot be reached or the file
        cannot be written.
        """
        try:
            await self.storage.open()
        except Exception as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise StoreOpenError(
                f"cannot open the A/B store {self.storage.describe()}: "
                f"{type(error).__name__}: {reason}"
            ) from error
        log.info("experiment_store_opened", store=self.storage.describe())
        self._flusher = asyncio.create_task(self._flush_forever(), name="experiment-flusher")

    async def close(self) -> None:
        """Write everything queued, then close the database. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._flusher is not None:
            self._stopping = True  # not cancelled: a batch being written is finished
            self._wakeup.set()
            await asyncio.wait([self._flusher])
            await self._flush()
            if self._pending:  # the database stayed unreachable to the end
                self._drop(len(self._pending))
                self._pending = []
        await self.storage.close()

    def record(self, forecast: RecordedForecast) -> None:
        """Queue a served forecast (never blocks); counts a served request for its version.

        Raises ValueError for a malformed record (a caller bug), so that a
        bad row never fails the batch it would be written in.
        """
        check_forecast(forecast)
        self._enqueue(forecast)

    def record_shadow(
        self,
        forecast_id: str,
        model: str,
        prediction: Prediction,
        experiment: str = DEFAULT_EXPERIMENT,
    ) -> None:
        """Queue a shadow prediction of a recorded forecast (never blocks).

        It may arrive before or after the served record and after actuals
        were reported; in the last case it is scored when written.
        `experiment` is the served forecast's (its request counter goes there).
        """
        check_prediction(prediction, Role.SHADOW)
        check_experiment(experiment)
        self._enqueue(ShadowRecord(forecast_id, model, prediction, self._clock(), experiment))

    async def report_actuals(
        self,
        forecast_id: str,
        actuals: Sequence[float],
        offset: int = 0,
        start_ns: int | None = None,
    ) -> ActualsReport:
        """Store actuals at horizon steps [offset, offset + len) and rescore the forecast.

        `start_ns` (ns since the epoch, UTC): the time of actuals[0], in place
        of `offset`, for a forecast recorded with time; it must be one of its
        step times. Raises InvalidArgument (field "forecast_id", "actuals",
        "offset" or "start": both given, not a step time, a forecast without time),
        NotFound (reason FORECAST_NOT_FOUND) for an unknown or expired id, and
        Unavailable (STORE_UNAVAILABLE) when the database cannot be reached.
        """
        values = checked_actuals(forecast_id, actuals, offset, start_ns)
        await self._flush(for_read=True)
        report = await self.storage.report_actuals(forecast_id, values, offset, start_ns)
        give_up = time.monotonic() + _still_queued_for(forecast_id)
        while report is None and time.monotonic() < give_up:
            await asyncio.sleep(LOOKUP_INTERVAL_S)  # possibly still queued on another replica
            report = await self.storage.report_actuals(forecast_id, values, offset, start_ns)
        if report is None:
            raise not_found(forecast_id)
        return report

    async def experiment(
        self, model: str, experiment: str = DEFAULT_EXPERIMENT
    ) -> ExperimentReport:
        """The A/B results of one experiment of `model` (empty if nothing was recorded in it)."""
        await self._flush(for_read=True)
        return summarize(model, experiment, await self.storage.aggregates(model, experiment))

    async def experiments(self, model: str = "") -> list[ExperimentInfo]:
        """The experiments with recorded forecasts, of `model` or ("") of every model."""
        await self._flush(for_read=True)
        return await self.storage.experiments(model)

    async def calibration_pools(
        self, known: dict[tuple[str, str], int]
    ) -> dict[tuple[str, str], CalibrationPools]:
        """The calibration pools of each (model, version) changed since the `known` revisions.

        Every replica's scores; raises Unavailable when the database is unreachable.
        """
        return await self.storage.calibration_pools(known)

    def _enqueue(self, record: Record) -> None:
        if self._closed or len(self._pending) >= self._max_pending:
            self._drop(1)
            return
        self._pending.append(record)
        if len(self._pending) >= self._flush_batch:
            self._wakeup.set()

    def _drop(self, records: int) -> None:
        self.dropped += records
        metrics.EXPERIMENT_RECORDS_DROPPED.inc(records)
        self._unreported_drops += records
        if self._unreported_drops == records:  # once per episode; the flusher reports the total
            log.warning("experiment_records_dropping", closed=self._closed)

    async def _flush(self, *, for_read: bool = False) -> None:
        """Write the queue, after any write in progress, in a task of its own.

        The write finishes even if the caller is cancelled (a client's
        deadline must not roll back records of other calls). A batch the
        database could not take because it is unreachable goes back to the
        front of the queue (within MAX_PENDING) and, for a read, the read
        fails with that Unavailable at once; any other failure drops the
        batch, logged and counted.
        """
        write = asyncio.ensure_future(self._write_pending())
        self._writes.add(write)
        write.add_done_callback(self._writes.discard)
        unreachable = await asyncio.shield(write)
        if unreachable is not None and for_read:
            raise unreachable

    async def _write_pending(self) -> Unavailable | None:
        async with self._write_lock:
            records, self._pending = self._pending, []
            try:
                await self.storage.write(records)
            except Unavailable as error:
                log.warning("experiment_store_unreachable", records=len(records))
                keep = max(self._max_pending - len(self._pending), 0)
                self._pending[:0] = records[:keep]
                if len(records) > keep:
                    self._drop(len(records) - keep)
                return error
            except Exception:
                log.exception("experiment_flush_failed", records=len(records))
                self._drop(len(records))
            return None

    async def _flush_forever(self) -> None:
        while not self._stopping:
            try:
                async with asyncio.timeout(self._flush_interval_s):
                    await self._wakeup.wait()
            except TimeoutError:
                pass
            self._wakeup.clear()
            await self._flush()
            if self._unreported_drops:
                log.warning("experiment_records_dropped", records=self._unreported_drops)
                self._unreported_drops = 0


def _still_queued_for(forecast_id: str) -> float:
    """Seconds an unknown id may yet appear: a version-7 id made in the last 2 s, else 0.

    An id stamped in the future (beyond the clock skew replicas may have) is a
    client's, not one still queued: it is not waited for.
    """
    made_at = forecast_id_time(forecast_id)
    if made_at is None:
        return 0.0
    now = time.time()
    if not now - WRITE_BEHIND_GRACE_S <= made_at <= now + CLOCK_SKEW_S:
        return 0.0
    return min(made_at + WRITE_BEHIND_GRACE_S - now, WRITE_BEHIND_GRACE_S)
