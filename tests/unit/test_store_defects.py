"""Defects of the A/B store, each with the test that failed before its fix (both backends)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs

from forecast_gateway.ab.records import Prediction, RecordedForecast, Role, ShadowRecord
from forecast_gateway.ab.sql import Bounds
from forecast_gateway.ab.storage import open_storage
from forecast_gateway.ab.store import ExperimentStore
from tools.local_postgres import LocalPostgres

MODEL = "lstm_timeseries"
NOW = 1_700_000_000.0


def served(
    forecast_id: str,
    values: tuple[float, ...] = (1.0, 2.0, 3.0),
    *,
    version: str = "1",
    created_at: float = NOW,
    scale: float = 1.0,
) -> RecordedForecast:
    return RecordedForecast(
        forecast_id=forecast_id,
        model=MODEL,
        horizon=len(values),
        naive_scale=scale,
        created_at=created_at,
        served=Prediction(version, Role.SERVED, values, 5.0),
    )


def shadow(version: str, values: tuple[float, ...] = (1.5, 2.5, 3.5)) -> Prediction:
    return Prediction(version, Role.SHADOW, values, 7.0)


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


MakeStore = Callable[..., ExperimentStore]


@pytest.fixture(params=["sqlite", "postgresql"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> MakeStore:
    """Builds stores (not started) on one fresh database; the same `name` shares its data."""
    databases: dict[str, str] = {}

    def make(
        name: str = "main",
        *,
        bounds: Bounds | None = None,
        clock: Callable[[], float] | None = None,
        **options: float,
    ) -> ExperimentStore:
        bounds = bounds or Bounds(10_000, 1e9)
        clock = clock or Clock()
        if request.param == "sqlite":
            url, password_file = f"sqlite:///{tmp_path / name / 'experiments.sqlite3'}", ""
        else:
            server: LocalPostgres = request.getfixturevalue("postgres")
            if name not in databases:
                databases[name] = server.create_database(f"defect_{uuid.uuid4().hex[:12]}")
            url, password_file = databases[name], str(server.password_file)
        storage = open_storage(url, bounds, password_file=password_file, clock=clock)
        return ExperimentStore(storage, clock=clock, **options)  # type: ignore[arg-type]

    make.backend = request.param  # type: ignore[attr-defined]
    return make


@pytest.fixture
async def store(make_store: MakeStore) -> AsyncIterator[ExperimentStore]:
    store = make_store()
    await store.start()
    yield store
    await store.close()


# -- 1. a call cancelled at any moment leaves the connection clean ------------------------------


async def test_calls_cancelled_at_random_moments_leave_the_store_usable(
    store: ExperimentStore,
) -> None:
    """A cancel that lands while BEGIN runs used to leave the connection inside a transaction.

    Every later call then failed ("cannot start a transaction within a
    transaction"). Cancels land at random moments of ReportActuals (a random
    number of event-loop turns, then a random sub-millisecond wait).
    """
    forecasts = 20
    for i in range(forecasts):
        store.record(served(f"f{i}"))
    await store.experiment(MODEL)
    rng = random.Random(458)
    for attempt in range(600):
        call = asyncio.create_task(store.report_actuals(f"f{attempt % forecasts}", [2.0], 0))
        for _ in range(rng.randrange(12)):
            await asyncio.sleep(0)
        await asyncio.sleep(rng.uniform(0.0, 0.0005))
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call
    for i in range(forecasts):  # every call works again, and nothing was half applied
        report = await store.report_actuals(f"f{i}", [2.0, 2.0, 5.0], 0)
        assert report.steps_received == 3
    store.record(served("after"))
    [summary] = (await store.experiment(MODEL)).versions
    assert (summary.requests_served, summary.actuals_received) == (forecasts + 1, forecasts)
    assert summary.errors.mae_mean == pytest.approx(1.0)
    assert np.isfinite(summary.errors.mase_mean)


async def test_a_start_cancelled_as_it_gets_the_migration_lock_leaves_no_lock_held(
    postgres: LocalPostgres,
) -> None:
    """The session-level migration lock was taken outside its try: a cancel kept it held.

    The start is cancelled just as the lock it waits for is granted; the
    connection went back to the pool still holding it, and every other
    replica's start waited on it for as long as that pool lived.
    """
    import psycopg

    from forecast_gateway.ab.postgres import MIGRATION_LOCK

    url = postgres.create_database(f"defect_{uuid.uuid4().hex[:12]}")
    holder = await psycopg.AsyncConnection.connect(
        f"{url}?password={postgres.password}", autocommit=True
    )
    store = ExperimentStore(
        open_storage(url, Bounds(10, 60.0), password_file=str(postgres.password_file))
    )
    try:
        await holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        start = asyncio.create_task(store.start())
        await _until_waiting_for_a_lock(holder, "advisory")
        await holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
        start.cancel()  # before the start has read that it got the lock
        with contextlib.suppress(asyncio.CancelledError):
            await start
        free = await holder.execute("SELECT pg_try_advisory_lock(%s)", (MIGRATION_LOCK,))
        assert (await free.fetchone()) == (True,)
        await holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
        again = ExperimentStore(
            open_storage(url, Bounds(10, 60.0), password_file=str(postgres.password_file))
        )
        async with asyncio.timeout(30):
            await again.start()
        await again.close()
    finally:
        await store.storage.close()
        await holder.close()


# -- 3. two transactions creating one calibration pool keep both scores ------------------------


async def test_two_transactions_creating_one_calibration_pool_keep_both_scores(
    postgres: LocalPostgres,
) -> None:
    """FOR UPDATE locks no row that does not exist yet: the second upsert overwrote the first.

    Two transactions on two connections append to the same new pool; the
    second starts while the first (which created the row) is still open.
    """
    import psycopg

    from forecast_gateway.ab import sql

    url = postgres.create_database(f"defect_{uuid.uuid4().hex[:12]}")
    storage = open_storage(url, Bounds(10, 60.0, 8), password_file=str(postgres.password_file))
    watcher = await psycopg.AsyncConnection.connect(
        f"{url}?password={postgres.password}", autocommit=True
    )
    await storage.open()
    backend: Any = storage.backend  # type: ignore[attr-defined]

    async def append(score: float) -> None:
        async with backend.transaction(write=True) as tx:
            await sql._append_calibration(tx, backend.lock_rows, 8, {(MODEL, "1", 0): [score]})

    try:
        async with backend.transaction(write=True) as first:
            await sql._append_calibration(first, backend.lock_rows, 8, {(MODEL, "1", 0): [0.5]})
            second = asyncio.create_task(append(-0.25))
            await _until_waiting_for_a_lock(watcher)  # on the row the first created
        await second
        pools = await storage.calibration_pools({})
        assert pools[(MODEL, "1")].steps[0].tolist() == [0.5, -0.25]
    finally:
        await storage.close()
        await watcher.close()


async def _until_waiting_for_a_lock(connection: Any, locktype: str = "") -> None:
    """Poll pg_locks until some session waits for a lock (of `locktype`, if given)."""
    query = "SELECT count(*) FROM pg_locks WHERE NOT granted AND (locktype = %s OR %s = '')"
    async with asyncio.timeout(30):
        while True:
            row = await (await connection.execute(query, (locktype, locktype))).fetchone()
            if row and row[0]:
                return
            await asyncio.sleep(0.01)


# -- 4. writers and pruners lock rows in one order ---------------------------------------------


async def test_concurrent_writers_and_pruners_never_deadlock(postgres: LocalPostgres) -> None:
    """Writes locked store_meta before forecast rows, prunes the reverse: deadlocks, retried.

    Four replicas write batches of served forecasts and of shadows of the
    oldest forecasts (rows their prunes, at a 40-forecast bound, delete),
    and report actuals, all at once. PostgreSQL detects no deadlock, and no
    transaction is retried.
    """
    import psycopg

    url = postgres.create_database(f"defect_{uuid.uuid4().hex[:12]}")
    password = str(postgres.password_file)
    clock = Clock()
    storages = [
        open_storage(url, Bounds(40, 1e9), password_file=password, clock=clock) for _ in range(4)
    ]
    for storage in storages:
        await storage.open()
    recorded: list[str] = []

    async def replica(index: int) -> None:
        rng = random.Random(index)
        storage = storages[index]
        for batch in range(30):
            clock.now += 0.01
            fresh = [served(f"{index}-{batch}-{i}", created_at=clock.now) for i in range(4)]
            oldest = recorded[:20]
            shadows = [
                ShadowRecord(target, MODEL, shadow(str(2 + index)), clock.now)
                for target in rng.sample(oldest, min(6, len(oldest)))
            ]
            await storage.write([*fresh, *shadows])
            recorded.extend(f.forecast_id for f in fresh)
            if oldest:
                await storage.report_actuals(rng.choice(oldest), np.array([2.0, 2.0]), 0)

    async def deadlocks() -> int:
        async with await psycopg.AsyncConnection.connect(
            f"{url}?password={postgres.password}", autocommit=True
        ) as connection:
            query = "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
            row = await (await connection.execute(query)).fetchone()
            return int(row[0]) if row else 0

    before = await deadlocks()
    try:
        with capture_logs() as logs:
            await asyncio.gather(*(replica(i) for i in range(len(storages))))
    finally:
        for storage in storages:
            await storage.close()  # its sessions end: their statistics are flushed
    await asyncio.sleep(0.5)
    retried = [e for e in logs if e["event"] in ("store_transaction_retried", "store_prune_failed")]
    assert (len(retried), await deadlocks() - before) == (0, 0), retried[:3]
