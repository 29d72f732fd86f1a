"""Sticky splits in the store: one value per routing key, on SQLite and on a real PostgreSQL.

A sticky draw is recorded with its routing key (`RecordedForecast.unit`);
the store keeps each key's count and exact sum of comparable MASE and feeds
the two-sample comparison the key's mean, moving it (old mean out, new in)
whenever a report, a correction or a late shadow changes it. Random draws
stay one value per forecast. Each figure is checked against numpy over the
same final scores.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from forecast_gateway.ab import sequential
from forecast_gateway.ab.records import Prediction, RecordedForecast, Role, new_forecast_id
from forecast_gateway.ab.scoring import WELCH_TEST, Moments, compare
from forecast_gateway.ab.storage import Bounds, open_storage
from forecast_gateway.ab.store import ExperimentStore
from tests.stores import BACKENDS, location

MODEL = "lstm_timeseries"
EXPERIMENT = "sticky-units"


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ExperimentStore]:
    url, password_file = location(request, tmp_path)
    store = ExperimentStore(open_storage(url, Bounds(10_000, 1e9), password_file=password_file))
    await store.start()
    yield store
    await store.close()


def forecast(version: str, unit: str, *, comparable: bool = True) -> RecordedForecast:
    return RecordedForecast(
        forecast_id=new_forecast_id(),
        model=MODEL,
        horizon=3,
        naive_scale=1.5,
        created_at=1e9,  # age bound 1e9 s: never expired
        served=Prediction(version, Role.SERVED, (1.0, 2.0, 3.0), 5.0),
        experiment=EXPERIMENT,
        comparable=comparable,
        unit=unit,
    )


async def _report(store: ExperimentStore, f: RecordedForecast, rng: np.random.Generator) -> float:
    report = await store.report_actuals(f.forecast_id, rng.normal(2.0, 1.5, 3).tolist(), 0)
    return report.scores[0].mase


async def test_a_sticky_split_is_compared_on_one_mean_per_key(store: ExperimentStore) -> None:
    rng = np.random.default_rng(7)
    final: dict[tuple[str, str], dict[str, float]] = {}  # (version, key) -> forecast -> MASE
    forecasts = []
    for version, keys in (("1", 6), ("2", 7)):
        for k in range(keys):
            key = f"customer-{version}-{k}"
            for _ in range(1 + k % 4):  # 1-4 forecasts per key: means of different sizes
                f = forecast(version, key)
                store.record(f)
                forecasts.append(f)
    # Noise the store must leave out: a pinned forecast with a key, an unreported forecast.
    pinned = forecast("1", "customer-1-0", comparable=False)
    store.record(pinned)
    store.record(forecast("2", "customer-2-0"))
    for f in forecasts:
        final.setdefault((f.served.version, f.unit), {})[f.forecast_id] = await _report(
            store, f, rng
        )
    await _report(store, pinned, rng)
    # Corrections: every third forecast reported again, its key's mean moves.
    for f in forecasts[::3]:
        final[(f.served.version, f.unit)][f.forecast_id] = await _report(store, f, rng)
    # A partial report (one step) of another forecast changes its MASE too.
    f = forecasts[1]
    report = await store.report_actuals(f.forecast_id, [9.0], 2)
    final[(f.served.version, f.unit)][f.forecast_id] = report.scores[0].mase

    means = {
        version: np.array(
            [np.mean(list(s.values())) for (v, _), s in final.items() if v == version]
        )
        for version in ("1", "2")
    }
    expected = compare(means["1"], means["2"], paired=False)
    always_valid = sequential.two_sample(Moments.of(means["1"]), Moments.of(means["2"]))
    [comparison] = (await store.experiment(MODEL, EXPERIMENT)).comparisons
    assert comparison.test == WELCH_TEST
    assert comparison.samples == 6 == expected.samples  # keys, not forecasts
    assert comparison.mean_difference == pytest.approx(expected.mean_difference, rel=1e-9)
    assert comparison.p_value == pytest.approx(expected.p_value, rel=1e-9)
    assert comparison.ci_low == pytest.approx(expected.ci_low, rel=1e-9)
    assert comparison.sequential_p_value == pytest.approx(always_valid.p_value, rel=1e-9)
    assert comparison.cs_high == pytest.approx(always_valid.cs_high, rel=1e-9)
    assert "after 6 keys each" in comparison.verdict, comparison.verdict
    # Per forecast (the old, wrong statistic) would give other figures.
    per_forecast = compare(
        [m for (v, _), s in final.items() if v == "1" for m in s.values()],
        [m for (v, _), s in final.items() if v == "2" for m in s.values()],
        paired=False,
    )
    assert per_forecast.samples > comparison.samples


async def test_random_draws_and_keys_are_units_of_one_sample(store: ExperimentStore) -> None:
    """A split served with and without keys: each forecast without a key is a unit of its own."""
    rng = np.random.default_rng(8)
    values: dict[str, list[float]] = {"1": [], "2": []}
    for version in ("1", "2"):
        for k in range(3):  # three keys of two forecasts each
            pair = [forecast(version, f"key-{version}-{k}") for _ in range(2)]
            for f in pair:
                store.record(f)
            values[version].append(float(np.mean([await _report(store, f, rng) for f in pair])))
        for _ in range(4):  # four random draws
            f = forecast(version, "")
            store.record(f)
            values[version].append(await _report(store, f, rng))
    expected = compare(values["1"], values["2"], paired=False)
    [comparison] = (await store.experiment(MODEL, EXPERIMENT)).comparisons
    assert comparison.samples == 7
    assert comparison.p_value == pytest.approx(expected.p_value, rel=1e-9)
    assert comparison.mean_difference == pytest.approx(expected.mean_difference, rel=1e-9)
    assert "7 units (keys and forecasts) each" in comparison.verdict, comparison.verdict


async def test_units_are_stored_as_digests_never_as_keys(store: ExperimentStore) -> None:
    f = forecast("1", "alice@example.com")
    store.record(f)
    await _report(store, f, np.random.default_rng(1))
    backend = store.storage.backend
    async with backend.transaction(write=False) as tx:
        rows = await tx.fetchall("SELECT unit FROM unit_scores")
        stored = await tx.fetchall("SELECT unit FROM forecasts")
    assert rows and stored
    assert all("alice" not in str(unit) for (unit,) in rows + stored)
    assert len(rows[0][0]) == 32
