"""GetExperiment's interval and quantile scores: running totals against a direct computation.

Every test runs on a real store of both backends (in-memory SQLite and a
real PostgreSQL), records predictions with known tracked bounds (scale
units, `conformal.bound_table` rows), reports actuals and compares the
report with numpy over the same steps.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from structlog.testing import capture_logs

from forecast.v1 import forecast_service_pb2 as pb
from forecast_gateway import metrics
from forecast_gateway.ab import aggregates
from forecast_gateway.ab.records import (
    ExperimentReport,
    IntervalStats,
    Prediction,
    QuantileStats,
    RecordedForecast,
    Role,
)
from forecast_gateway.ab.report import WILSON_Z, wilson
from forecast_gateway.ab.storage import Bounds, open_storage
from forecast_gateway.ab.store import ExperimentStore
from forecast_gateway.api.server import Gateway
from forecast_gateway.api.service import ForecastServicer
from forecast_gateway.config import ModelConfig
from forecast_gateway.core.catalog import ModelCatalog
from tools.local_postgres import LocalPostgres

MODEL = "interval_model"
COVERAGES = aggregates.TRACKED.coverages
QUANTILES = aggregates.TRACKED.quantiles
ROWS = 2 * len(COVERAGES) + len(QUANTILES)
NORMAL = {0.8: 1.2815515655446004, 0.95: 1.959963984540054}
"""Standard normal quantiles at 1 - alpha/2: the exact bounds for N(0, 1) scaled errors."""
Q_NORMAL = {0.1: -1.2815515655446004, 0.5: 0.0, 0.9: 1.2815515655446004}


def gaussian_bounds(horizon: int, narrow: float = 1.0) -> npt.NDArray[Any]:
    """Bounds [ROWS, horizon] that hold for N(0, 1) scaled errors (narrow < 1: too narrow)."""
    rows = []
    for c in COVERAGES:
        rows += [-NORMAL[c] * narrow, NORMAL[c] * narrow]
    rows += [Q_NORMAL[q] * narrow for q in QUANTILES]
    return np.repeat(np.array(rows)[:, np.newaxis], horizon, axis=1)


def as_stored(bounds: npt.NDArray[Any] | None) -> npt.NDArray[Any] | None:
    """Bounds as the store keeps them (float32), so the direct computation reads the same."""
    return None if bounds is None else bounds.astype(np.float32).astype(np.float64)


@dataclass
class Kept:
    """What the test recorded for one prediction: enough to score it directly."""

    values: npt.NDArray[Any]
    bounds: npt.NDArray[Any] | None
    scale: float
    actuals: npt.NDArray[Any]


@dataclass
class Ledger:
    """The predictions recorded per version, and the actuals reported per forecast."""

    by_version: dict[str, list[Kept]] = field(default_factory=dict)
    actuals: dict[str, npt.NDArray[Any]] = field(default_factory=dict)

    def add(self, forecast_id: str, version: str, kept: Kept) -> None:
        kept.actuals = self.actuals.setdefault(forecast_id, kept.actuals)
        self.by_version.setdefault(version, []).append(kept)


def record(
    store: ExperimentStore,
    ledger: Ledger,
    forecast_id: str,
    values: npt.NDArray[Any],
    bounds: npt.NDArray[Any] | None,
    *,
    version: str = "1",
    scale: float = 2.0,
    own_scale: float = math.nan,
) -> None:
    """Record a served forecast (naive scale `scale`; `own_scale`: its Prediction.scale)."""
    bounds = as_stored(bounds)
    store.record(
        RecordedForecast(
            forecast_id=forecast_id,
            model=MODEL,
            horizon=values.size,
            naive_scale=scale,
            created_at=time.time(),
            served=Prediction(
                version,
                Role.SERVED,
                tuple(values.tolist()),
                5.0,
                None if bounds is None else bounds.copy(),
                own_scale,
            ),
        )
    )
    used = own_scale if math.isfinite(own_scale) else scale
    ledger.add(forecast_id, version, Kept(values, bounds, used, np.full(values.size, np.nan)))


def record_shadow(
    store: ExperimentStore,
    ledger: Ledger,
    forecast_id: str,
    values: npt.NDArray[Any],
    bounds: npt.NDArray[Any] | None,
    *,
    version: str,
    scale: float,
) -> None:
    """A shadow prediction with its own window's scale."""
    bounds = as_stored(bounds)
    store.record_shadow(
        forecast_id,
        MODEL,
        Prediction(version, Role.SHADOW, tuple(values.tolist()), 7.0, bounds, scale),
    )
    ledger.add(forecast_id, version, Kept(values, bounds, scale, np.full(values.size, np.nan)))


async def report(
    store: ExperimentStore, ledger: Ledger, forecast_id: str, actuals: list[float], offset: int
) -> None:
    await store.report_actuals(forecast_id, actuals, offset)
    ledger.actuals[forecast_id][offset : offset + len(actuals)] = actuals


def direct(kept: list[Kept]) -> tuple[list[IntervalStats], list[QuantileStats]]:
    """The expected stats, from every scorable step at once (numpy, no running sums)."""
    usable = [k for k in kept if k.bounds is not None and k.scale > 0]
    if not usable:
        return [], []
    y = np.concatenate([(k.actuals - k.values) / k.scale for k in usable])
    table = np.concatenate([k.bounds for k in usable if k.bounds is not None], axis=1)
    intervals = []
    for i, c in enumerate(COVERAGES):
        lower, upper = table[2 * i], table[2 * i + 1]
        keep = np.isfinite(y) & np.isfinite(lower) & np.isfinite(upper)
        if not keep.any():
            continue
        yy, lo, hi = y[keep], lower[keep], upper[keep]
        alpha = 1 - c
        winkler = (hi - lo) + (2 / alpha) * np.where(
            yy < lo, lo - yy, np.where(yy > hi, yy - hi, 0.0)
        )
        hits = int(((lo <= yy) & (yy <= hi)).sum())
        low, high = wilson(hits, yy.size)
        intervals.append(
            IntervalStats(
                c, yy.size, hits / yy.size, low, high, (hi - lo).mean(), winkler.mean(), high < c
            )
        )
    quantiles = []
    for i, tau in enumerate(QUANTILES):
        q = table[2 * len(COVERAGES) + i]
        keep = np.isfinite(y) & np.isfinite(q)
        if not keep.any():
            continue
        d = y[keep] - q[keep]
        pinball = np.maximum(tau * d, (tau - 1) * d).mean()
        quantiles.append(QuantileStats(tau, int(keep.sum()), pinball, float((d <= 0).mean())))
    return intervals, quantiles


def assert_matches(result: ExperimentReport, ledger: Ledger) -> None:
    """Each version's interval and quantile stats equal the direct computation."""
    summaries = {v.version: v for v in result.versions}
    for version, kept in ledger.by_version.items():
        intervals, quantiles = direct(kept)
        got = summaries[version]
        assert [i.nominal for i in got.intervals] == [i.nominal for i in intervals], version
        for a, b in zip(got.intervals, intervals, strict=True):
            assert (a.steps, a.undercovering) == (b.steps, b.undercovering), (version, a)
            for name in ("coverage", "coverage_low", "coverage_high", "mean_width", "winkler"):
                assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-9, abs=1e-12), (
                    version,
                    a.nominal,
                    name,
                )
        assert [q.level for q in got.quantiles] == [q.level for q in quantiles], version
        for qa, qb in zip(got.quantiles, quantiles, strict=True):
            assert qa.steps == qb.steps, (version, qa)
            assert qa.pinball == pytest.approx(qb.pinball, rel=1e-9, abs=1e-12)
            assert qa.below == pytest.approx(qb.below, rel=1e-12)


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[ExperimentStore]:
    """A started store on a fresh in-memory SQLite or PostgreSQL database."""
    bounds = Bounds(10_000, 3600.0)
    if request.param == "sqlite":
        storage = open_storage("sqlite:///:memory:", bounds)
    else:
        server: LocalPostgres = request.getfixturevalue("postgres")
        url = server.create_database(f"iv_{uuid.uuid4().hex[:12]}")
        storage = open_storage(url, bounds, password_file=str(server.password_file))
    store = ExperimentStore(storage)
    await store.start()
    yield store
    await store.close()


def test_wilson_bounds_solve_the_score_equation() -> None:
    """Both ends p satisfy |p_hat - p| = z sqrt(p (1 - p) / n), and contain p_hat."""
    for hits, n in ((0, 10), (3, 10), (10, 10), (412, 500), (1, 1), (7990, 10_000)):
        low, high = wilson(hits, n)
        p_hat = hits / n
        assert 0 <= low <= p_hat <= high <= 1
        for p in (low, high):
            if p in (0.0, 1.0) and p == p_hat:
                continue  # the end at a degenerate p_hat
            assert abs(p_hat - p) == pytest.approx(WILSON_Z * math.sqrt(p * (1 - p) / n))
    assert all(math.isnan(v) for v in wilson(0, 0))


async def test_scores_equal_a_direct_computation(store: ExperimentStore) -> None:
    rng = np.random.default_rng(7)
    ledger = Ledger()
    for i in range(12):
        horizon = 6
        values = rng.normal(100, 5, horizon)
        bounds = gaussian_bounds(horizon) * rng.uniform(0.5, 1.5, (1, horizon))
        bounds[:, 5] = np.nan  # a step past the pools: never scored
        if i % 4 == 0:
            bounds[2:4, :] = np.nan  # the 0.95 interval not calibrated for this one
        own = 1.5 if i % 3 == 0 else math.nan  # this version read a window of its own
        record(store, ledger, f"f{i}", values, bounds, own_scale=own)
        actuals = values + 2.0 * rng.normal(0, 1.2, horizon)
        await report(store, ledger, f"f{i}", actuals.tolist(), 0)
    result = await store.experiment(MODEL)
    assert_matches(result, ledger)
    [version] = result.versions
    assert [i.nominal for i in version.intervals] == [0.8, 0.95]
    assert version.intervals[0].steps == 12 * 5 and version.intervals[1].steps == 9 * 5
    assert [q.level for q in version.quantiles] == [0.1, 0.5, 0.9]


async def test_partial_reports_and_a_correction_never_double_count(
    store: ExperimentStore,
) -> None:
    ledger = Ledger()
    values = np.array([10.0, 11.0, 12.0, 13.0])
    bounds = gaussian_bounds(4)
    record(store, ledger, "a", values, bounds)
    record(store, ledger, "b", values + 1, bounds * 0.5)
    await report(store, ledger, "a", [10.5, 14.0], 0)  # y = 0.25, 1.5
    assert_matches(await store.experiment(MODEL), ledger)
    await report(store, ledger, "a", [9.0, 30.0], 2)  # y = -1.5, 8.5
    assert_matches(await store.experiment(MODEL), ledger)
    await report(store, ledger, "a", [11.2], 1)  # a correction: step 1 was 14.0
    await report(store, ledger, "b", [11.0, 12.0, 13.0, 14.0], 0)
    await report(store, ledger, "b", [11.0, 12.0, 13.0, 14.0], 0)  # the same again: no change
    result = await store.experiment(MODEL)
    assert_matches(result, ledger)
    [summary] = result.versions
    assert summary.intervals[0].steps == 8
    # The running rows hold one value per forecast, however many reports it took.
    storage: Any = store.storage
    totals = await storage.aggregates(MODEL, "default")
    for metric in aggregates.INTERVAL_METRICS:
        assert totals.of(aggregates.level_metric(metric, 0.8), "1").count == 2
    for metric in aggregates.QUANTILE_METRICS:
        assert totals.of(aggregates.level_metric(metric, 0.5), "1").count == 2


async def test_a_shadow_arriving_after_the_actuals_is_scored(store: ExperimentStore) -> None:
    ledger = Ledger()
    values = np.array([5.0, 6.0, 7.0])
    record(store, ledger, "s", values, gaussian_bounds(3))
    await report(store, ledger, "s", [5.5, 4.0, 9.0], 0)
    record_shadow(store, ledger, "s", values + 0.5, gaussian_bounds(3, 0.2), version="2", scale=1.0)
    result = await store.experiment(MODEL)
    assert [v.version for v in result.versions] == ["1", "2"]
    assert result.versions[1].intervals[0].steps == 3
    assert_matches(result, ledger)
    # Scored once: a later correction moves it, never adds it twice.
    await report(store, ledger, "s", [7.5], 2)
    result = await store.experiment(MODEL)
    assert result.versions[1].intervals[0].steps == 3
    assert_matches(result, ledger)


async def test_predictions_without_bounds_or_scale_add_nothing(store: ExperimentStore) -> None:
    ledger = Ledger()
    values = np.array([1.0, 2.0])
    record(store, ledger, "none", values, None)
    record(store, ledger, "flat", values, gaussian_bounds(2), scale=0.0)
    record(store, ledger, "nan", values, np.full((ROWS, 2), np.nan))
    for forecast_id in ("none", "flat", "nan"):
        await report(store, ledger, forecast_id, [1.0, 2.5], 0)
    [summary] = (await store.experiment(MODEL)).versions
    assert summary.actuals_received == 3
    assert (summary.intervals, summary.quantiles) == ((), ())


async def test_too_narrow_intervals_undercover_and_calibrated_ones_do_not(
    store: ExperimentStore,
) -> None:
    """Scaled errors N(0, 1): exact bounds for version 1, bounds at 40% width for version 2."""
    rng = np.random.default_rng(2024)
    ledger = Ledger()
    horizon = 8
    for i in range(100):
        values = rng.normal(50, 3, horizon)
        record(store, ledger, f"u{i}", values, gaussian_bounds(horizon), scale=2.0)
        record_shadow(
            store,
            ledger,
            f"u{i}",
            values,
            gaussian_bounds(horizon, 0.4),
            version="2",
            scale=2.0,
        )
        await report(store, ledger, f"u{i}", (values + 2.0 * rng.normal(0, 1, horizon)).tolist(), 0)
    result = await store.experiment(MODEL)
    assert_matches(result, ledger)
    calibrated, narrow = result.versions
    for stats in calibrated.intervals:
        assert stats.steps == 800 and not stats.undercovering
        assert stats.coverage_low <= stats.nominal <= stats.coverage_high
    for stats in narrow.intervals:
        assert stats.undercovering and stats.coverage_high < stats.nominal
    # Sharper but wrong: the Winkler score says the calibrated intervals are better.
    assert narrow.intervals[0].mean_width < calibrated.intervals[0].mean_width
    assert narrow.intervals[0].winkler > calibrated.intervals[0].winkler
    assert calibrated.quantiles[1].below == pytest.approx(0.5, abs=0.05)
    assert narrow.quantiles[0].below > 0.15  # the 0.1 quantile sits too high


# -- the flag: gauge and log -----------------------------------------------------------


class Routing:
    def __init__(self, experiment: str = "default") -> None:
        self.current = experiment

    def experiment(self, model: str) -> str:
        return self.current


class Catalog:
    def get(self, model: str) -> object:
        return object()


class Context:
    def time_remaining(self) -> None:
        return None


def gauge(version: str, coverage: str, model: str = MODEL) -> float:
    value: float = metrics.INTERVAL_UNDERCOVERING.labels(model, version, coverage)._value.get()
    return value


async def record_undercovering(store: ExperimentStore, model: str = MODEL) -> None:
    """Version 1 calibrated, version 2 (shadow) far too narrow, over 60 forecasts."""
    rng = np.random.default_rng(11)
    for i in range(60):
        values = rng.normal(0, 1, 4)
        store.record(
            RecordedForecast(
                f"g{i}",
                model,
                4,
                1.0,
                time.time(),
                Prediction("1", Role.SERVED, tuple(values.tolist()), 1.0, gaussian_bounds(4)),
            )
        )
        store.record_shadow(
            f"g{i}",
            model,
            Prediction("2", Role.SHADOW, tuple(values.tolist()), 1.0, gaussian_bounds(4, 0.3)),
        )
        await store.report_actuals(f"g{i}", (values + rng.normal(0, 1, 4)).tolist(), 0)


async def test_get_experiment_sets_the_gauge_and_logs_the_turn(store: ExperimentStore) -> None:
    model = f"gauge_{uuid.uuid4().hex[:8]}"
    await record_undercovering(store, model)
    routing = Routing()
    servicer = ForecastServicer(
        SimpleNamespace(routing=routing),  # type: ignore[arg-type]
        Catalog(),  # type: ignore[arg-type]
        store,
        default_timeout_s=5.0,
        max_batch_series=10,
        max_operation_series=100,
        stream_max_pending=4,
        backtester=None,  # type: ignore[arg-type]
        backtest_timeout_s=300.0,
    )
    request = pb.GetExperimentRequest(model=model)
    with capture_logs() as logs:
        response = await servicer.GetExperiment(request, Context())  # type: ignore[arg-type]
        await servicer.GetExperiment(request, Context())  # type: ignore[arg-type]
    flagged = {
        (v.version, c.nominal): c.undercovering
        for v in response.versions
        for c in v.interval_coverage
    }
    assert flagged == {("1", 0.8): False, ("1", 0.95): False, ("2", 0.8): True, ("2", 0.95): True}
    narrow = response.versions[1]
    assert [q.level for q in narrow.quantile_losses] == pytest.approx([0.1, 0.5, 0.9])
    assert narrow.interval_coverage[0].steps == 240
    assert narrow.interval_coverage[0].coverage_high < 0.8
    assert (gauge("1", "0.8", model), gauge("1", "0.95", model)) == (0, 0)
    assert (gauge("2", "0.8", model), gauge("2", "0.95", model)) == (1, 1)
    turned = [e for e in logs if e["event"] == "interval_undercoverage"]
    assert sorted(e["nominal"] for e in turned) == [0.8, 0.95]  # once each, not per call
    assert {(e["model"], e["version"]) for e in turned} == {(model, "2")}
    assert all(e["coverage_high"] < e["nominal"] and e["steps"] == 240 for e in turned)
    # Another experiment becomes current: the old flags drop to 0.
    routing.current = "next"
    await servicer.GetExperiment(request, Context())  # type: ignore[arg-type]
    assert (gauge("2", "0.8", model), gauge("2", "0.95", model)) == (0, 0)


async def test_gateway_check_publishes_every_model_and_survives_failures(
    store: ExperimentStore,
) -> None:
    model = f"bg_{uuid.uuid4().hex[:8]}"
    await record_undercovering(store, model)

    class Broken:
        async def experiment(self, model: str, experiment: str) -> ExperimentReport:
            raise RuntimeError("the store is down")

    models = [SimpleNamespace(name="other"), SimpleNamespace(name=model)]
    gateway: Any = Gateway.__new__(Gateway)
    gateway.catalog = ModelCatalog(models=tuple(ModelConfig(m.name) for m in models))
    gateway.routing = Routing()
    gateway.store = Broken()
    with capture_logs() as logs:
        await gateway.check_intervals()  # logged, not raised
    failed = [e["model"] for e in logs if e["event"] == "interval_check_failed"]
    assert failed == sorted(["other", model])  # every served model, in name order
    gateway.store = store
    await gateway.check_intervals()
    assert (gauge("1", "0.95", model), gauge("2", "0.95", model)) == (0, 1)
