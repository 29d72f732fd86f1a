"""The A/B store (forecast_gateway.ab) against both backends: SQLite and a real PostgreSQL."""

import asyncio
import dataclasses
import inspect
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from forecast_gateway import metrics
from forecast_gateway.ab.records import Prediction, RecordedForecast, Role, new_forecast_id
from forecast_gateway.ab.scoring import PAIRED_TEST, WELCH_TEST, compare
from forecast_gateway.ab.storage import ORPHAN_GRACE_S, Bounds, open_storage
from forecast_gateway.ab.store import ExperimentStore, StoreOpenError
from forecast_gateway.errors import InvalidArgument, NotFound
from forecast_gateway.numerics import naive_scale
from tests.conftest import start_postgres
from tests.polling import eventually, eventually_sync
from tests.stores import location

MODEL = "lstm_timeseries"
WINDOW = np.array([1.0, 2.0, 4.0])  # naive scale 1.5


class Clock:
    """A settable wall clock."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def served(
    forecast_id: str,
    values: tuple[float, ...] = (1.0, 2.0, 3.0),
    *,
    version: str = "1",
    created_at: float = 1_700_000_000.0,
    latency_ms: float = 5.0,
    scale: float | None = None,
) -> RecordedForecast:
    return RecordedForecast(
        forecast_id=forecast_id,
        model=MODEL,
        horizon=len(values),
        naive_scale=naive_scale(WINDOW) if scale is None else scale,
        created_at=created_at,
        served=Prediction(version, Role.SERVED, values, latency_ms),
    )


def shadow(version: str, values: tuple[float, ...], latency_ms: float = 7.0) -> Prediction:
    return Prediction(version, Role.SHADOW, values, latency_ms)


@pytest.fixture
def clock() -> Clock:
    return Clock()


MakeStore = Callable[..., ExperimentStore]


@pytest.fixture(params=["sqlite", "postgresql"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> MakeStore:
    """Builds stores (not started) on one fresh database of the parametrized backend.

    Stores made with the same `name` share their data (a restart, or a second replica).
    """
    databases: dict[str, str] = {}

    def make(
        name: str = "main",
        *,
        max_forecasts: int = 1000,
        max_age_s: float = 3600.0,
        **options: float,
    ) -> ExperimentStore:
        bounds = Bounds(max_forecasts, max_age_s)
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


def field_of(error: InvalidArgument) -> list[str]:
    return [v.field for v in error.violations]


# -- scoring through the store ------------------------------------------------------------


async def test_actuals_score_the_served_forecast(store: ExperimentStore) -> None:
    store.record(served("f1"))
    report = await store.report_actuals("f1", [2.0, 2.0, 5.0], offset=0)
    assert (report.forecast_id, report.model, report.horizon) == ("f1", MODEL, 3)
    assert report.steps_received == 3
    [score] = report.scores
    assert (score.version, score.role, score.steps_scored) == ("1", Role.SERVED, 3)
    assert score.mae == pytest.approx(1.0)
    assert score.smape == pytest.approx(100 * (2 / 3 + 0 + 4 / 8) / 3)
    assert score.mase == pytest.approx(1.0 / 1.5)


async def test_partial_reports_in_several_calls_add_up(store: ExperimentStore) -> None:
    store.record(served("f1"))
    first = await store.report_actuals("f1", [2.0], offset=0)
    assert first.steps_received == 1
    assert first.scores[0].mae == pytest.approx(1.0)
    last = await store.report_actuals("f1", [5.0], offset=2)
    assert last.steps_received == 2
    assert last.scores[0].mae == pytest.approx(1.5)
    full = await store.report_actuals("f1", [2.0], offset=1)
    assert full.steps_received == 3
    assert full.scores[0].mae == pytest.approx(1.0)


async def test_a_later_report_overwrites_the_same_steps(store: ExperimentStore) -> None:
    store.record(served("f1"))
    await store.report_actuals("f1", [10.0, 10.0, 10.0], offset=0)
    report = await store.report_actuals("f1", [2.0, 2.0], offset=1)
    assert report.steps_received == 3
    assert report.scores[0].mae == pytest.approx((9 + 0 + 1) / 3)


@pytest.mark.parametrize(
    ("actuals", "offset", "field"),
    [
        ([1.0], 3, "offset"),  # offset == horizon
        ([1.0, 2.0], 2, "actuals"),  # runs past the end
        ([1.0, 2.0, 3.0, 4.0], 0, "actuals"),
        ([], 0, "actuals"),
        ([1.0, math.nan], 0, "actuals"),
        ([math.inf], 0, "actuals"),
        ([1.0], -1, "offset"),
    ],
)
async def test_actuals_that_do_not_fit_name_the_field(
    store: ExperimentStore, actuals: list[float], offset: int, field: str
) -> None:
    store.record(served("f1"))
    with pytest.raises(InvalidArgument) as caught:
        await store.report_actuals("f1", actuals, offset)
    assert field_of(caught.value) == [field]
    # Nothing was stored by the rejected call.
    assert (await store.report_actuals("f1", [1.0], 0)).steps_received == 1


async def test_an_empty_forecast_id_is_invalid(store: ExperimentStore) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await store.report_actuals("", [1.0], 0)
    assert field_of(caught.value) == ["forecast_id"]


async def test_unknown_forecast_is_not_found(store: ExperimentStore) -> None:
    with pytest.raises(NotFound) as caught:
        await store.report_actuals("nope", [1.0], 0)
    assert caught.value.reason == "FORECAST_NOT_FOUND"
    assert caught.value.metadata == {"forecast_id": "nope"}


async def test_a_constant_window_scores_mae_but_no_mase(store: ExperimentStore) -> None:
    store.record(served("f1", scale=naive_scale(np.full(5, 3.0))))
    [score] = (await store.report_actuals("f1", [2.0, 2.0, 2.0], 0)).scores
    assert score.mae == pytest.approx(2 / 3)
    assert math.isnan(score.mase)
    summary = (await store.experiment(MODEL)).versions[0]
    assert summary.errors.count == 1
    assert summary.errors.mae_mean == pytest.approx(2 / 3)
    assert math.isnan(summary.errors.mase_mean)


# -- shadows --------------------------------------------------------------------------------


async def test_served_and_shadow_are_scored_together(store: ExperimentStore) -> None:
    store.record(served("f1"))
    store.record_shadow("f1", MODEL, shadow("2", (2.0, 2.0, 5.0)))
    report = await store.report_actuals("f1", [2.0, 2.0, 5.0], 0)
    assert [(s.version, s.role) for s in report.scores] == [
        ("1", Role.SERVED),
        ("2", Role.SHADOW),
    ]
    assert report.scores[1].mae == 0.0


async def test_a_shadow_recorded_after_the_actuals_is_scored_at_once(
    store: ExperimentStore,
) -> None:
    store.record(served("f1"))
    await store.report_actuals("f1", [2.0, 2.0, 5.0], 0)
    store.record_shadow("f1", MODEL, shadow("2", (2.0, 3.0, 5.0)))
    versions = {v.version: v for v in (await store.experiment(MODEL)).versions}
    assert versions["2"].requests_shadowed == 1
    assert versions["2"].actuals_received == 1
    assert versions["2"].errors.mae_mean == pytest.approx(1 / 3)


async def test_a_shadow_recorded_before_its_served_forecast_is_kept(
    store: ExperimentStore, clock: Clock
) -> None:
    store.record_shadow("f1", MODEL, shadow("2", (1.0, 1.0, 1.0)))
    await store.experiment(MODEL)  # written as an orphan
    clock.now += ORPHAN_GRACE_S / 2
    store.record(served("f1", created_at=clock.now))
    clock.now += ORPHAN_GRACE_S
    report = await store.report_actuals("f1", [1.0, 1.0, 1.0], 0)
    assert [s.version for s in report.scores] == ["1", "2"]


async def test_a_shadow_whose_served_forecast_never_comes_is_pruned(
    store: ExperimentStore, clock: Clock
) -> None:
    store.record_shadow("lost", MODEL, shadow("2", (1.0, 1.0, 1.0)))
    assert (await store.experiment(MODEL)).versions[0].latency.count == 1
    clock.now += ORPHAN_GRACE_S + 1
    [summary] = (await store.experiment(MODEL)).versions
    assert summary.requests_shadowed == 1  # aggregates are totals, never pruned
    assert summary.latency.count == 1
    store.record(served("lost", created_at=clock.now))  # too late: the shadow is gone
    report = await store.report_actuals("lost", [1.0, 1.0, 1.0], 0)
    assert [s.version for s in report.scores] == ["1"]


# -- the experiment report ------------------------------------------------------------------


async def test_counters_latency_and_errors_per_version(store: ExperimentStore) -> None:
    for i in range(4):
        store.record(served(f"a{i}", version="1", latency_ms=10.0 + i))
        store.record_shadow(f"a{i}", MODEL, shadow("2", (1.0, 2.0, 3.0), latency_ms=20.0))
    store.record(served("b0", version="2", latency_ms=30.0))
    await store.report_actuals("a0", [2.0, 2.0, 5.0], 0)
    report = await store.experiment(MODEL)
    assert report.model == MODEL
    one, two = report.versions
    assert (one.version, one.requests_served, one.requests_shadowed) == ("1", 4, 0)
    assert (two.version, two.requests_served, two.requests_shadowed) == ("2", 1, 4)
    assert (one.actuals_received, two.actuals_received) == (1, 1)
    assert one.errors.count == 1
    assert one.errors.mase_mean == pytest.approx(1.0 / 1.5)
    assert one.latency.count == 4
    assert one.latency.p50_ms == pytest.approx(float(np.percentile([10, 11, 12, 13], 50)), rel=0.01)
    assert one.latency.p99_ms == pytest.approx(float(np.percentile([10, 11, 12, 13], 99)), rel=0.01)
    assert two.latency.count == 5


async def test_versions_in_numeric_order_and_unknown_model_is_empty(
    store: ExperimentStore,
) -> None:
    for version in ("10", "2", "1"):
        store.record(served(f"f{version}", version=version))
    report = await store.experiment(MODEL)
    assert [v.version for v in report.versions] == ["1", "2", "10"]
    assert report.comparisons == []  # nothing scored yet
    empty = await store.experiment("other")
    assert (empty.versions, empty.comparisons) == ([], [])


async def test_unscored_version_has_nan_means(store: ExperimentStore) -> None:
    store.record(served("f1"))
    [summary] = (await store.experiment(MODEL)).versions
    assert summary.errors.count == 0
    assert math.isnan(summary.errors.mae_mean) and math.isnan(summary.errors.mase_mean)


def errors(rng: np.random.Generator, bias: float) -> tuple[float, ...]:
    """A 3-step forecast whose errors against zero actuals are about `bias`."""
    return tuple(float(x) for x in rng.normal(bias, 0.3, 3))


async def test_shadow_pairs_use_the_paired_test(store: ExperimentStore) -> None:
    rng = np.random.default_rng(7)
    for i in range(30):
        store.record(served(f"f{i}", errors(rng, 1.0), version="1"))
        store.record_shadow(f"f{i}", MODEL, shadow("2", errors(rng, 0.0)))
        await store.report_actuals(f"f{i}", [0.0, 0.0, 0.0], 0)
    [comparison] = (await store.experiment(MODEL)).comparisons
    assert (comparison.version_a, comparison.version_b) == ("1", "2")
    assert comparison.metric == "mase"
    assert comparison.test == PAIRED_TEST
    assert comparison.samples == 30
    assert comparison.significant
    assert comparison.mean_difference > 0  # version 1 is worse
    assert comparison.ci_low > 0


async def test_separate_requests_use_welch_and_match_scipy(store: ExperimentStore) -> None:
    rng = np.random.default_rng(8)
    for i in range(20):
        store.record(served(f"a{i}", errors(rng, 1.0), version="1"))
        await store.report_actuals(f"a{i}", [0.0, 0.0, 0.0], 0)
    for i in range(12):
        store.record(served(f"b{i}", errors(rng, 1.0), version="2"))
        await store.report_actuals(f"b{i}", [0.0, 0.0, 0.0], 0)
    report = await store.experiment(MODEL)
    [comparison] = report.comparisons
    assert comparison.test == WELCH_TEST
    assert comparison.samples == 12
    assert not comparison.significant  # the same distribution
    # The same numbers as scoring.compare on the stored MASE values.
    one, two = report.versions
    assert comparison.mean_difference == pytest.approx(one.errors.mase_mean - two.errors.mase_mean)


async def test_a_single_pair_falls_back_to_welch(store: ExperimentStore) -> None:
    store.record(served("p", version="1"))
    store.record_shadow("p", MODEL, shadow("2", (1.0, 1.0, 1.0)))
    await store.report_actuals("p", [1.5, 2.5, 2.0], 0)
    for i, values in enumerate([(1.0, 2.0, 4.0), (2.0, 2.0, 2.0)]):
        store.record(served(f"b{i}", values, version="2"))
        await store.report_actuals(f"b{i}", [1.5, 2.5, 2.0], 0)
    [comparison] = (await store.experiment(MODEL)).comparisons
    assert comparison.test == WELCH_TEST
    assert comparison.samples == 1  # version 1 has one scored forecast: untested
    assert math.isnan(comparison.p_value) and not comparison.significant
    # The groups are the served forecasts only (the shadow is no draw of the split).
    reference = compare([4 / 9], [2 / 3, 2 / 9], paired=False)  # MASE by hand
    assert comparison.mean_difference == pytest.approx(reference.mean_difference, abs=1e-15)


# -- bounds -----------------------------------------------------------------------------------


async def test_pruned_by_count_oldest_first(make_store: MakeStore, clock: Clock) -> None:
    store = make_store(max_forecasts=3)
    await store.start()
    try:
        for i in range(5):
            store.record(served(f"f{i}", created_at=clock.now + i))
        for i in (0, 1):
            with pytest.raises(NotFound):
                await store.report_actuals(f"f{i}", [1.0], 0)
        for i in (2, 3, 4):
            assert (await store.report_actuals(f"f{i}", [1.0], 0)).steps_received == 1
        [summary] = (await store.experiment(MODEL)).versions
        assert summary.requests_served == 5
        assert summary.latency.count == 5  # totals: pruning bounds storage, not the evidence
        assert summary.actuals_received == 3
    finally:
        await store.close()


async def test_pruned_by_age(store: ExperimentStore, clock: Clock) -> None:
    store.record(served("old", created_at=clock.now))
    clock.now += 1800
    store.record(served("new", created_at=clock.now))
    await store.report_actuals("old", [1.0], 0)
    clock.now += 1801
    with pytest.raises(NotFound):
        await store.report_actuals("old", [1.0], 0)
    assert (await store.report_actuals("new", [1.0], 0)).steps_received == 1
    [summary] = (await store.experiment(MODEL)).versions
    assert summary.actuals_received == 2  # "old" was scored before it expired: totals keep it
    assert summary.requests_served == 2


# -- durability and the write-behind ----------------------------------------------------------


async def test_restart_keeps_pending_forecasts_and_counters(make_store: MakeStore) -> None:
    first = make_store("nested/dir")
    await first.start()
    first.record(served("f1"))
    first.record_shadow("f1", MODEL, shadow("2", (2.0, 2.0, 5.0)))
    await first.close()  # before the flusher's first tick: close writes the queue

    second = make_store("nested/dir")
    await second.start()
    try:
        report = await second.report_actuals("f1", [2.0, 2.0, 5.0], 0)
        assert [(s.version, s.steps_scored) for s in report.scores] == [("1", 3), ("2", 3)]
        second.record(served("f2"))
        one, two = (await second.experiment(MODEL)).versions
        assert (one.requests_served, two.requests_shadowed) == (2, 1)
    finally:
        await second.close()


async def test_record_never_waits_for_the_database(tmp_path: Path, clock: Clock) -> None:
    bounds = Bounds(10_000, 3600.0)
    store = ExperimentStore(open_storage(f"sqlite:///{tmp_path}/s.db", bounds, clock=clock))
    await store.start()
    gate = threading.Event()
    executor = store.storage.backend._executor  # type: ignore[attr-defined]
    stall = executor.submit(gate.wait, 10.0)  # the store's only thread is stuck
    try:
        started = time.perf_counter()
        for i in range(5000):
            store.record(served(f"f{i}"))
        assert time.perf_counter() - started < 2.0  # the thread stays stuck for 10 s
        # The event loop stays free while the flusher waits on the stalled thread.
        ticks = time.perf_counter()
        await asyncio.sleep(0.2)
        assert time.perf_counter() - ticks < 2.0
    finally:
        gate.set()
    stall.result()
    [summary] = (await store.experiment(MODEL)).versions
    assert summary.requests_served == 5000
    await store.close()


async def test_the_flusher_writes_without_a_read(make_store: MakeStore) -> None:
    store = make_store(flush_interval_s=0.01)
    await store.start()
    try:
        store.record(served("f1"))
        await eventually(lambda: store._pending == [], message="the flusher wrote the queue")
        assert store._pending == []
    finally:
        await store.close()


async def test_a_full_queue_drops_instead_of_blocking(make_store: MakeStore) -> None:
    store = make_store(max_pending=3)
    counted = metrics.EXPERIMENT_RECORDS_DROPPED._value.get()
    for i in range(5):
        store.record(served(f"f{i}"))  # not started: everything stays queued
    assert store.dropped == 2
    assert metrics.EXPERIMENT_RECORDS_DROPPED._value.get() - counted == 2
    await store.start()
    try:
        [summary] = (await store.experiment(MODEL)).versions
        assert summary.requests_served == 3
    finally:
        await store.close()
    store.record(served("late"))
    assert store.dropped == 3


def test_malformed_records_are_rejected_on_the_spot() -> None:
    store = ExperimentStore(open_storage("sqlite:///:memory:", Bounds(10, 60.0)))
    with pytest.raises(ValueError, match="role SERVED"):
        store.record(dataclasses.replace(served("f"), served=shadow("1", (1.0, 2.0, 3.0))))
    with pytest.raises(ValueError, match="horizon"):
        store.record(
            RecordedForecast("f", MODEL, 4, 1.0, 0.0, Prediction("1", Role.SERVED, (1.0,), 1.0))
        )
    with pytest.raises(ValueError, match="latency_ms"):
        store.record_shadow("f", MODEL, shadow("2", (1.0,), latency_ms=math.nan))


async def test_latency_percentiles_match_numpy(store: ExperimentStore) -> None:
    latencies = np.random.default_rng(9).lognormal(1.0, 0.8, 257)
    for i, latency in enumerate(latencies):
        store.record(served(f"f{i}", latency_ms=float(latency)))
    [summary] = (await store.experiment(MODEL)).versions
    expected = np.percentile(latencies, [50, 95, 99])
    assert summary.latency.count == 257
    # Counted in buckets 2% wide: each percentile within 1% of numpy's.
    assert [summary.latency.p50_ms, summary.latency.p95_ms, summary.latency.p99_ms] == (
        pytest.approx(expected.tolist(), rel=0.0101)
    )


async def test_an_orphan_shadow_survives_a_restart(make_store: MakeStore, clock: Clock) -> None:
    first = make_store()
    await first.start()
    first.record_shadow("f1", MODEL, shadow("2", (1.0, 1.0, 1.0)))
    await first.close()
    second = make_store()
    await second.start()
    try:
        second.record(served("f1", created_at=clock.now))
        clock.now += ORPHAN_GRACE_S + 1  # adopted: no longer pruned as an orphan
        report = await second.report_actuals("f1", [1.0, 1.0, 1.0], 0)
        assert [s.version for s in report.scores] == ["1", "2"]
    finally:
        await second.close()


def clock_past(millisecond: int) -> bool:
    """Whether the wall clock (Unix milliseconds, as in forecast ids) is past `millisecond`."""
    return time.time_ns() // 1_000_000 > millisecond


def test_forecast_ids_are_unique_version_7_uuids_in_time_order() -> None:
    ids = []
    for _ in range(3):
        ids += [new_forecast_id() for _ in range(1000)]
        last = uuid.UUID(ids[-1]).int >> 80  # its millisecond: the next batch is made after it
        eventually_sync(partial(clock_past, last), interval_s=0.001)
    parsed = [uuid.UUID(forecast_id) for forecast_id in ids]
    assert {u.version for u in parsed} == {7}
    assert {u.variant for u in parsed} == {uuid.RFC_4122}
    assert len(set(ids)) == len(ids)
    milliseconds = [u.int >> 80 for u in parsed]
    assert milliseconds == sorted(milliseconds)
    assert abs(milliseconds[-1] - time.time() * 1000) < 5_000
    assert ids[999] < ids[1000] < ids[2000]  # string order follows time across milliseconds


async def test_running_aggregates_match_the_per_row_computation(store: ExperimentStore) -> None:
    """GetExperiment's running totals equal means and t-tests over the final scores themselves.

    Some forecasts are reported twice (the second report overwrites steps), so
    rescoring must take the old contribution out exactly.
    """
    rng = np.random.default_rng(7)
    final: dict[str, dict[str, tuple[float, float, float]]] = {}  # forecast -> version -> errors
    for i in range(300):
        forecast_id = f"f{i}"
        version = "1" if rng.random() < 0.5 else "2"
        values = tuple(float(v) for v in rng.normal(10.0, 2.0, 4))
        flat = rng.random() < 0.05  # a constant window: MASE undefined
        store.record(served(forecast_id, values, version=version, scale=0.0 if flat else None))
        if rng.random() < 0.6:  # v3 shadows most requests: paired comparisons with v3
            store.record_shadow(forecast_id, MODEL, shadow("3", tuple(v + 0.3 for v in values)))
        if rng.random() < 0.8:
            steps = int(rng.integers(1, 5))
            actuals = [float(v) for v in rng.normal(10.0, 2.0, steps)]
            report = await store.report_actuals(forecast_id, actuals, offset=0)
            if rng.random() < 0.3:
                again = [float(v) for v in rng.normal(10.0, 2.0, int(rng.integers(1, 5)))]
                report = await store.report_actuals(forecast_id, again, offset=0)
            final[forecast_id] = {s.version: (s.mae, s.smape, s.mase) for s in report.scores}
    experiment = await store.experiment(MODEL)

    def column(version: str, index: int, ids: list[str] | None = None) -> npt.NDArray[Any]:
        chosen = ids if ids is not None else list(final)
        return np.array([final[f][version][index] for f in chosen if version in final[f]])

    for summary in experiment.versions:
        mae, smape, mase = (column(summary.version, k) for k in range(3))
        assert summary.errors.count == summary.actuals_received == mae.size > 0
        assert summary.errors.mae_mean == pytest.approx(np.nanmean(mae), rel=1e-12)
        assert summary.errors.smape_mean == pytest.approx(np.nanmean(smape), rel=1e-12)
        assert summary.errors.mase_mean == pytest.approx(np.nanmean(mase), rel=1e-12)
    tests = {}
    for comparison in experiment.comparisons:
        a, b = comparison.version_a, comparison.version_b
        both = [f for f in final if a in final[f] and b in final[f]]
        paired = [f for f in both if not np.isnan([final[f][a][2], final[f][b][2]]).any()]
        expected = (
            compare(column(a, 2, paired), column(b, 2, paired), paired=True)
            if len(paired) >= 2
            else compare(column(a, 2), column(b, 2), paired=False)
        )
        tests[(a, b)] = comparison.test
        assert comparison.test == expected.test
        assert comparison.samples == expected.samples
        for name in ("mean_difference", "ci_low", "ci_high", "p_value"):
            assert getattr(comparison, name) == pytest.approx(getattr(expected, name), rel=1e-9)
    assert tests == {("1", "2"): WELCH_TEST, ("1", "3"): PAIRED_TEST, ("2", "3"): PAIRED_TEST}


async def test_overflowing_actuals_do_not_poison_the_version(store: ExperimentStore) -> None:
    store.record(served("f1"))
    store.record(served("f2"))
    report = await store.report_actuals("f1", [1.7e308, 1.7e308, 1.7e308], offset=0)
    [score] = report.scores
    assert math.isnan(score.mae) and math.isnan(score.mase)  # undefined, not inf
    await store.report_actuals("f2", [2.0, 2.0, 5.0], offset=0)
    [summary] = (await store.experiment(MODEL)).versions
    assert summary.errors.mae_mean == pytest.approx(1.0)
    assert summary.errors.mase_mean == pytest.approx(1.0 / 1.5)


# -- replicas sharing one store ---------------------------------------------------------------


async def test_two_replicas_scoring_the_same_forecast_at_once_count_it_once(
    make_store: MakeStore,
) -> None:
    """Actuals for one forecast reach both replicas at the same moment, many times over."""
    first, second = make_store("shared"), make_store("shared")
    await asyncio.gather(first.start(), second.start())  # migrations race too
    try:
        ids = [f"f{i}" for i in range(40)]
        for forecast_id in ids:
            first.record(served(forecast_id, (1.0, 2.0, 3.0)))
            first.record_shadow(forecast_id, MODEL, shadow("2", (2.0, 2.0, 5.0)))
        await first.experiment(MODEL)  # written
        parts = [([2.0], 0), ([5.0], 2), ([2.0], 1), ([2.0, 2.0, 5.0], 0)]  # each part twice
        reports = [
            replica.report_actuals(forecast_id, actuals, offset)
            for forecast_id in ids
            for actuals, offset in parts
            for replica in (first, second)
        ]
        await asyncio.gather(*reports)
        for forecast_id in ids:  # no report lost another's steps
            final = await second.report_actuals(forecast_id, [2.0], 0)
            assert final.steps_received == 3
        results = await asyncio.gather(first.experiment(MODEL), second.experiment(MODEL))
        assert results[0] == results[1]
        one, two = results[0].versions
        assert (one.actuals_received, two.actuals_received) == (40, 40)
        assert one.errors.mae_mean == pytest.approx(1.0)
        assert two.errors.mae_mean == pytest.approx(0.0, abs=1e-12)
        [comparison] = results[0].comparisons
        assert (comparison.test, comparison.samples) == (PAIRED_TEST, 40)
        assert comparison.mean_difference == pytest.approx(1.0 / 1.5)
    finally:
        await asyncio.gather(first.close(), second.close())


async def test_a_forecast_reported_to_another_replica_at_once_is_found(
    make_store: MakeStore,
) -> None:
    """The other replica's write-behind queue has not been flushed yet when actuals arrive."""
    first, second = make_store("shared", flush_interval_s=0.3), make_store("shared")
    await first.start()
    await second.start()
    try:
        forecast_id = new_forecast_id()
        first.record(served(forecast_id, created_at=time.time()))
        started = time.perf_counter()
        report = await second.report_actuals(forecast_id, [2.0, 2.0, 5.0], 0)
        assert report.steps_received == 3
        assert time.perf_counter() - started < 1.5
        with pytest.raises(NotFound):  # an old id is not waited for
            await second.report_actuals(str(uuid.UUID(int=7 << 76 | 1 << 63)), [1.0], 0)
    finally:
        await asyncio.gather(first.close(), second.close())


async def test_a_version_1_sqlite_store_is_migrated_with_its_aggregates(tmp_path: Path) -> None:
    """A store written before the running aggregates existed reports the same results after."""
    import sqlite3

    from forecast_gateway.ab.migrations import SQLITE

    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    for statement in SQLITE[0].statements:
        old.execute(statement)
    values = np.array([1.0, 2.0, 3.0]).tobytes()
    for i, (mae, mase) in enumerate([(1.0, 0.5), (3.0, 1.5), (2.0, None)]):
        old.execute(
            "INSERT INTO forecasts VALUES (?, ?, 3, 1.0, ?, NULL, 3)", (f"f{i}", MODEL, 1.0)
        )
        old.execute(
            "INSERT INTO predictions VALUES (?, '1', ?, 'served', ?, ?, 1.0, 0, 3, ?, 10.0, ?)",
            (f"f{i}", MODEL, values, 5.0 + i, mae, mase),
        )
    old.execute("INSERT INTO counters VALUES (?, '1', 3, 0)", (MODEL,))
    old.execute("PRAGMA user_version=1")
    old.commit()
    old.close()
    store = ExperimentStore(open_storage(f"sqlite:///{path}", Bounds(100, 1e10)))
    await store.start()
    try:
        [summary] = (await store.experiment(MODEL)).versions
        assert (summary.requests_served, summary.actuals_received) == (3, 3)
        assert summary.errors.mae_mean == pytest.approx(2.0)
        assert summary.errors.mase_mean == pytest.approx(1.0)
        assert summary.latency.count == 3
    finally:
        await store.close()


# -- named experiments ------------------------------------------------------------------------


async def test_a_new_experiment_starts_with_fresh_counts_and_the_old_one_stays(
    store: ExperimentStore, clock: Clock
) -> None:
    for i in range(3):
        store.record(dataclasses.replace(served(f"old{i}"), experiment="first"))
    await store.report_actuals("old0", [2.0, 2.0, 5.0], 0)
    clock.now += 10
    store.record(dataclasses.replace(served("new0", created_at=clock.now), experiment="second"))
    store.record_shadow("new0", MODEL, shadow("2", (1.0, 1.0, 1.0)), "second")
    await store.report_actuals("new0", [2.0, 2.0, 5.0], 0)
    first, second = await store.experiment(MODEL, "first"), await store.experiment(MODEL, "second")
    assert (first.experiment, first.forecasts, first.started_at) == ("first", 3, 1_700_000_000.0)
    assert [(v.version, v.requests_served, v.actuals_received) for v in first.versions] == [
        ("1", 3, 1)
    ]
    assert [(v.version, v.requests_served, v.requests_shadowed) for v in second.versions] == [
        ("1", 1, 0),
        ("2", 0, 1),
    ]
    assert second.forecasts == 1
    empty = await store.experiment(MODEL)  # the default experiment holds nothing
    assert (empty.versions, empty.forecasts, empty.started_at) == ([], 0, None)
    listed = [(i.experiment, i.forecasts) for i in await store.experiments(MODEL)]
    assert listed == [("second", 1), ("first", 3)]  # newest first
    assert await store.experiments("other") == []


def test_experiment_names_are_checked() -> None:
    store = ExperimentStore(open_storage("sqlite:///:memory:", Bounds(10, 60.0)))
    for bad in ("", "has space", "x" * 65, "-leading"):
        with pytest.raises(ValueError, match="experiment name"):
            store.record(dataclasses.replace(served("f"), experiment=bad))


async def test_only_the_splits_draws_enter_the_two_sample_comparison(
    store: ExperimentStore,
) -> None:
    """Short histories routed to version 1 only (or pins) would compare requests, not versions."""
    rng = np.random.default_rng(21)
    for i in range(20):
        for version in ("1", "2"):
            forecast_id = f"{version}-{i}"
            store.record(served(forecast_id, errors(rng, 1.0), version=version))
            await store.report_actuals(forecast_id, [0.0, 0.0, 0.0], 0)
    before = (await store.experiment(MODEL)).comparisons[0]
    for i in range(20):  # version 1 alone could serve these, and did badly
        forecast_id = f"short-{i}"
        record = dataclasses.replace(served(forecast_id, errors(rng, 9.0)), comparable=False)
        store.record(record)
        await store.report_actuals(forecast_id, [0.0, 0.0, 0.0], 0)
    report = await store.experiment(MODEL)
    after = report.comparisons[0]
    assert (after.test, after.samples) == (before.test, before.samples)
    assert after.mean_difference == pytest.approx(before.mean_difference)
    assert report.versions[0].actuals_received == 40  # still in the version's own means


async def test_a_store_that_cannot_be_opened_says_which_and_why(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    bounds = Bounds(10, 60.0)
    store = ExperimentStore(open_storage(f"sqlite:///{tmp_path}/a-file/s.db", bounds))
    with pytest.raises(StoreOpenError, match=r"cannot open the A/B store sqlite:.*a-file/s\.db"):
        await store.start()
    secret = ExperimentStore(
        open_storage("postgresql://forecast:hunter2@127.0.0.1:1/x", bounds)  # nothing listens
    )
    secret.storage.backend.connect_timeout_s = 1.0  # type: ignore[attr-defined]
    with pytest.raises(StoreOpenError) as caught:
        await secret.start()
    assert "postgresql://forecast@127.0.0.1:1/x" in str(caught.value)
    assert "hunter2" not in str(caught.value)


# -- review findings ----------------------------------------------------------------------------


def suspended(task: asyncio.Task[Any]) -> bool:
    """Whether `task` has started and now waits at an await."""
    coroutine = task.get_coro()
    return (
        inspect.iscoroutine(coroutine)
        and inspect.getcoroutinestate(coroutine) == inspect.CORO_SUSPENDED
    )


async def test_a_cancelled_read_does_not_lose_the_queue(store: ExperimentStore) -> None:
    for i in range(2000):
        store.record(served(f"f{i}"))
    read = asyncio.create_task(store.experiment(MODEL))
    # The read has started: it waits on its flush (suspended at its first await).
    await eventually(partial(suspended, read), interval_s=0)
    read.cancel()
    with pytest.raises(asyncio.CancelledError):
        await read
    [summary] = (await store.experiment(MODEL)).versions
    assert summary.requests_served == 2000
    assert store.dropped == 0


async def test_a_future_dated_id_is_not_waited_for(store: ExperimentStore) -> None:
    future = uuid.UUID(int=(int((time.time() + 3600) * 1000) << 80) | 7 << 76 | 1 << 63)
    started = time.perf_counter()
    with pytest.raises(NotFound):
        await store.report_actuals(str(future), [1.0], 0)
    assert time.perf_counter() - started < 1.0


async def test_huge_actuals_stay_out_of_the_sums_and_a_correction_works(
    store: ExperimentStore,
) -> None:
    store.record(served("f1"))
    store.record(served("f2"))
    await store.report_actuals("f1", [1e160, 1e160, 1e160], 0)  # a typo
    await store.report_actuals("f1", [2.0, 2.0, 5.0], 0)  # corrected
    await store.report_actuals("f2", [2.0, 2.0, 5.0], 0)
    [summary] = (await store.experiment(MODEL)).versions
    assert summary.errors.mae_mean == pytest.approx(1.0)
    assert summary.errors.mase_mean == pytest.approx(1.0 / 1.5)


async def test_a_constant_difference_stays_untestable_after_a_correction(
    store: ExperimentStore,
) -> None:
    """The first value of a row removed again: rounding must not turn into a variance."""
    store.record(served("first", (1.0, 2.0, 3.0)))
    store.record_shadow("first", MODEL, shadow("2", (1.5, 2.5, 3.5)))
    await store.report_actuals("first", [1.3, 7.0, 0.1], 0)  # a typo: the row's shift
    for i in range(60):
        store.record(served(f"f{i}", (1.0, 2.0, 3.0)))
        store.record_shadow(f"f{i}", MODEL, shadow("2", (1.5, 2.5, 3.5)))
        await store.report_actuals(f"f{i}", [1.0, 2.0, 3.0], 0)
    await store.report_actuals("first", [1.0, 2.0, 3.0], 0)  # corrected: like the others
    [comparison] = (await store.experiment(MODEL)).comparisons
    assert comparison.samples == 61
    assert comparison.mean_difference == pytest.approx(-1 / 3)
    assert math.isnan(comparison.p_value) and math.isnan(comparison.sequential_p_value)
    assert comparison.verdict.startswith("not conclusive: the difference is the same")


def test_a_latency_past_the_last_bucket_is_counted_there() -> None:
    from forecast_gateway.ab.aggregates import latency_bucket, latency_stats

    assert latency_bucket(1.7e308) == latency_bucket(1e9) == latency_bucket(1e12)
    assert latency_stats({latency_bucket(1.7e308): 3}).count == 3


def test_running_sums_of_a_constant_sample_with_a_stale_shift_stay_constant() -> None:
    """Sums accumulated one value at a time around a shift that left the sample."""
    from forecast_gateway.ab.scoring import Moments

    shift, total, squares = 2 / 3, 0.0, 0.0
    for _ in range(500):
        total += 1 / 3 - shift
        squares += (1 / 3 - shift) ** 2
    moments = Moments.from_sums(500, shift, total, squares)
    assert moments.mean == pytest.approx(1 / 3)
    assert moments.constant


async def test_while_postgresql_is_down_reads_are_unavailable_and_records_wait(
    clock: Clock,
) -> None:
    from forecast_gateway.errors import Unavailable

    server = start_postgres()
    try:
        url = server.create_database("outage")
        bounds = Bounds(1000, 3600.0)
        store = ExperimentStore(
            open_storage(url, bounds, password_file=str(server.password_file), clock=clock),
            clock=clock,
            flush_interval_s=3600,  # only reads write: the test decides when
        )
        await store.start()
        store.record(served("before"))
        await store.experiment(MODEL)
        server.stop()
        for i in range(5):
            store.record(served(f"during{i}"))
        started = time.perf_counter()
        with pytest.raises(Unavailable) as caught:
            await store.experiment(MODEL)
        assert caught.value.reason == "STORE_UNAVAILABLE"
        assert time.perf_counter() - started < 10
        assert len(store._pending) == 5 and store.dropped == 0  # kept for later, not lost
        await store.close()
        assert store.dropped == 5  # never written: counted at the end
    finally:
        server.stop()
