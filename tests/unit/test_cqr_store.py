"""CQR pools in the shared store, both backends: ReportActuals appends a quantile version's scores.

A prediction recorded with its model's own quantiles (`native`) adds, per
tracked coverage and newly reported step, max(lo - y, y - hi) / scale to
`cqr_pools`; a correction adds none; a point model's bounds add none; the
pools keep the newest `window` and their revision moves what a cache re-reads.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from forecast_gateway.ab import TRACKED
from forecast_gateway.ab.records import Prediction, RecordedForecast, Role, new_forecast_id
from forecast_gateway.ab.storage import Bounds, open_storage
from forecast_gateway.ab.store import ExperimentStore
from forecast_gateway.core.native import tracked_table
from tests.stores import BACKENDS, location

MODEL = "team_q"
DECLARED = (0.025, 0.1, 0.5, 0.9, 0.975)
WINDOW = 12


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ExperimentStore]:
    url, password_file = location(request, tmp_path)
    bounds = Bounds(1000, 1e12, WINDOW)
    store = ExperimentStore(open_storage(url, bounds, password_file=password_file))
    await store.start()
    yield store
    await store.close()


def forecast(values: list[float], scale: float, native: bool = True) -> RecordedForecast:
    """A forecast whose 0.8 band is values +- 2 and 0.95 band values +- 4 (model quantiles)."""
    point = np.asarray(values)
    quantiles = point[:, None] + np.array([-4.0, -2.0, 0.0, 2.0, 4.0])
    tracked = tracked_table(DECLARED, quantiles, point, scale, TRACKED)
    return RecordedForecast(
        forecast_id=new_forecast_id(),
        model=MODEL,
        horizon=len(values),
        naive_scale=scale,
        created_at=time.time(),
        served=Prediction("1", Role.SERVED, tuple(values), 1.0, tracked, native=native),
    )


async def test_reported_actuals_add_cqr_scores_per_coverage_and_step(
    store: ExperimentStore,
) -> None:
    f = forecast([10.0, 20.0, 30.0], 2.0)
    store.record(f)
    await store.report_actuals(f.forecast_id, [13.0, 19.0])
    pools = (await store.calibration_pools({}))[(MODEL, "1")]
    # step 0: y = 13, 0.8 band 8..12 -> (13 - 12) / 2; 0.95 band 6..14 -> (13 - 14) / 2
    # step 1: y = 19, 0.8 band 18..22 -> max(18 - 19, 19 - 22) / 2; 0.95 band 16..24 -> -3 / 2
    assert {k: v.tolist() for k, v in pools.cqr.items()} == {
        (0.8, 0): [0.5],
        (0.95, 0): [-0.5],
        (0.8, 1): [-0.5],
        (0.95, 1): [-1.5],
    }
    assert sorted(pools.steps) == [0, 1]  # the point pools fill as before

    known = {(MODEL, "1"): pools.revision}
    await store.report_actuals(f.forecast_id, [0.0], 1)  # a correction of step 1
    assert await store.calibration_pools(known) == {}  # nothing changed: no re-read
    await store.report_actuals(f.forecast_id, [30.0], 2)  # step 2's first actual
    again = (await store.calibration_pools(known))[(MODEL, "1")]
    assert again.revision > pools.revision
    assert again.cqr[(0.8, 1)].tolist() == [-0.5] and again.cqr[(0.8, 2)].tolist() == [-1.0]


async def test_a_point_models_predictions_add_no_cqr_scores(store: ExperimentStore) -> None:
    f = forecast([10.0, 20.0], 2.0, native=False)
    store.record(f)
    await store.report_actuals(f.forecast_id, [13.0, 19.0])
    pools = (await store.calibration_pools({}))[(MODEL, "1")]
    assert pools.cqr == {} and sorted(pools.steps) == [0, 1]


async def test_cqr_pools_keep_the_newest_window_of_scores(store: ExperimentStore) -> None:
    for i in range(WINDOW + 3):
        f = forecast([0.0], 1.0)
        store.record(f)
        await store.report_actuals(f.forecast_id, [2.0 + i])  # 0.8 score: 2 + i - 2 = i
    pools = (await store.calibration_pools({}))[(MODEL, "1")]
    assert pools.cqr[(0.8, 0)].tolist() == [float(i) for i in range(3, WINDOW + 3)]
