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
from forecast_gateway.ab.storage import Bounds, open_storage
from forecast_gateway.ab.store import ExperimentStore
from forecast_gateway.numerics import FloatArray
from tests.stores import BACKENDS, location
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


@pytest.fixture(params=BACKENDS)
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
        url, password_file = location(request, tmp_path, name, databases)
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

    from forecast_gateway.ab import pools as pool_rows

    url = postgres.create_database(f"defect_{uuid.uuid4().hex[:12]}")
    storage = open_storage(url, Bounds(10, 60.0, 8), password_file=str(postgres.password_file))
    watcher = await psycopg.AsyncConnection.connect(
        f"{url}?password={postgres.password}", autocommit=True
    )
    await storage.open()
    backend: Any = storage.backend

    async def append(score: float) -> None:
        async with backend.transaction(write=True) as tx:
            await pool_rows.append_calibration(tx, 8, {(MODEL, "1", 0): [score]})

    try:
        async with backend.transaction(write=True) as first:
            await pool_rows.append_calibration(first, 8, {(MODEL, "1", 0): [0.5]})
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


# -- 2. a corrected huge first actual leaves the running moments exact ---------------------------


@pytest.mark.parametrize("typo", [1e6, 1e12, 1e100])
async def test_a_huge_first_actual_corrected_later_leaves_the_comparisons_exact(
    store: ExperimentStore, typo: float
) -> None:
    """The running sums kept the first value as their shift after it was taken back out.

    The first forecast of version 1 gets a typo as its first actual (its
    MASE is the first value of every row it enters), forty more forecasts
    are scored, then the typo is corrected. The store's means, tests and
    verdicts must be those of the final scores, computed directly. Before,
    the variance of version 1 was clamped to 0 (1e6, 1e12: a one-sample test,
    p 0.01 instead of 0.06) or the mean was lost (1e100: MASE -3e84, and a
    "conclusive" verdict).
    """
    from forecast_gateway.ab import scoring, sequential

    rng = np.random.default_rng(5)
    final: dict[str, dict[str, float]] = {"1": {}, "2": {}, "3": {}}
    for i in range(40):
        for version, level in (("1", 1.0), ("2", 1.1)):
            forecast_id = f"{version}-{i}"
            store.record(served(forecast_id, tuple(rng.normal(level, 0.5, 3)), version=version))
            if version == "1":  # a shadow of each: the paired comparison 1 vs 3
                store.record_shadow(forecast_id, MODEL, shadow("3", tuple(rng.normal(1.2, 0.5, 3))))
            first = [typo, 0.0, 0.0] if forecast_id == "1-0" else [0.0, 0.0, 0.0]
            report = await store.report_actuals(forecast_id, first, 0)
            for score in report.scores:
                final[score.version][forecast_id] = score.mase
    report = await store.report_actuals("1-0", [0.0, 0.0, 0.0], 0)  # the correction
    for score in report.scores:
        final[score.version]["1-0"] = score.mase
    mase = {v: np.array([final[v][k] for k in sorted(final[v])]) for v in final}
    paired_b = np.array([final["3"][k] for k in sorted(final["1"])])

    result = await store.experiment(MODEL)
    means = {s.version: s.errors.mase_mean for s in result.versions}
    assert means == {v: pytest.approx(float(m.mean()), rel=1e-12) for v, m in mase.items()}
    comparisons = {(c.version_a, c.version_b): c for c in result.comparisons}
    welch = scoring.compare(mase["1"], mase["2"], paired=False)
    paired = scoring.compare(mase["1"], paired_b, paired=True)
    for got, direct, always_valid in (
        (
            comparisons[("1", "2")],
            welch,
            sequential.two_sample(scoring.Moments.of(mase["1"]), scoring.Moments.of(mase["2"])),
        ),
        (
            comparisons[("1", "3")],
            paired,
            sequential.paired(scoring.Moments.of(mase["1"] - paired_b)),
        ),
    ):
        assert (got.test, got.samples) == (direct.test, direct.samples)
        assert got.mean_difference == pytest.approx(direct.mean_difference, rel=1e-12)
        assert got.p_value == pytest.approx(direct.p_value, rel=1e-9)
        assert got.sequential_p_value == pytest.approx(always_valid.p_value, rel=1e-9)
        assert got.conclusive == always_valid.conclusive


async def test_a_store_of_shifted_sums_is_migrated_to_exact_sums(
    make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows written as schema 4 (SQLite) or 3 (PostgreSQL) kept them read the same after."""
    from forecast_gateway.ab import aggregates, migrations, schema

    name = "SQLITE" if make_store.backend == "sqlite" else "POSTGRES"  # type: ignore[attr-defined]
    versions = getattr(migrations, name)
    rng = np.random.default_rng(3)
    mase = {"1": rng.normal(1.0, 0.3, 30), "2": rng.normal(1.2, 0.3, 30)}
    constant = [1 / 3] * 5  # around a shift that left: the old rounding, clamped as before
    old = make_store()
    exact = next(i for i, m in enumerate(versions) if m.then is schema.exact_moments)
    monkeypatch.setattr(migrations, name, versions[:exact])  # and the versions after it
    await old.start()
    deltas = [
        aggregates.MomentDelta(MODEL, "default", metric, version, "", float(value), +1)
        for version, values in mase.items()
        for metric in (aggregates.SCORED, "mase", aggregates.COMPARABLE_MASE)
        for value in ([3.0] * len(values) if metric == aggregates.SCORED else values)
    ]
    deltas += [aggregates.MomentDelta(MODEL, "default", "mae", "1", "", 2 / 3, +1)]
    deltas += [aggregates.MomentDelta(MODEL, "default", "mae", "1", "", v, +1) for v in constant]
    deltas += [aggregates.MomentDelta(MODEL, "default", "mae", "1", "", 2 / 3, -1)]
    backend: Any = old.storage.backend
    async with backend.transaction(write=True) as tx:
        await schema._apply_shifted(tx, deltas)
    await old.close()
    monkeypatch.setattr(migrations, name, versions)

    new = make_store()
    await new.start()
    try:
        result = await new.experiment(MODEL)
        one, two = result.versions
        assert (one.actuals_received, two.actuals_received) == (30, 30)
        assert one.errors.mase_mean == pytest.approx(float(mase["1"].mean()), rel=1e-12)
        assert one.errors.mae_mean == pytest.approx(1 / 3, rel=1e-12)
        [comparison] = result.comparisons
        direct = scoring_compare(mase["1"], mase["2"])
        assert comparison.p_value == pytest.approx(direct, rel=1e-9)
        totals = await new.storage.aggregates(MODEL, "default")
        assert totals.of("mae", "1").constant  # its rounding stayed clamped at 0
    finally:
        await new.close()


def scoring_compare(a: FloatArray, b: FloatArray) -> float:
    from forecast_gateway.ab.scoring import compare

    return compare(a, b, paired=False).p_value
