"""ReportActuals by time in the store: `start` resolves to the step of that time, both backends.

A forecast recorded with time (its first step's instant and the frequency)
takes actuals at a step time instead of an offset; any other time, a start
beside a non-zero offset, or a start for a forecast without time is
INVALID_ARGUMENT on `start`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from forecast_gateway.ab.records import Prediction, RecordedForecast, Role, new_forecast_id
from forecast_gateway.ab.storage import Bounds, open_storage
from forecast_gateway.ab.store import ExperimentStore
from forecast_gateway.errors import InvalidArgument
from tests.stores import BACKENDS, location

MODEL = "lstm_timeseries"


def ns(text: str) -> int:
    return int(pd.Timestamp(text, tz="UTC").value)


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ExperimentStore]:
    url, password_file = location(request, tmp_path)
    store = ExperimentStore(open_storage(url, Bounds(1000, 1e12), password_file=password_file))
    await store.start()
    yield store
    await store.close()


def forecast(first: str | None, frequency: str = "", horizon: int = 3) -> RecordedForecast:
    return RecordedForecast(
        forecast_id=new_forecast_id(),
        model=MODEL,
        horizon=horizon,
        naive_scale=1.0,
        created_at=1e9,
        served=Prediction("1", Role.SERVED, tuple(float(i) for i in range(horizon)), 5.0),
        first_step_ns=None if first is None else ns(first),
        frequency=frequency,
    )


def fields(error: pytest.ExceptionInfo[InvalidArgument]) -> list[tuple[str, str]]:
    return [(v.field, v.description) for v in error.value.violations]


async def test_start_reports_at_the_step_of_that_time(store: ExperimentStore) -> None:
    by_time, by_offset = forecast("2026-01-05", "D"), forecast("2026-01-05", "D")
    store.record(by_time)
    store.record(by_offset)
    timed = await store.report_actuals(by_time.forecast_id, [4.0, 7.0], start_ns=ns("2026-01-06"))
    plain = await store.report_actuals(by_offset.forecast_id, [4.0, 7.0], 1)
    assert timed.steps_received == 2
    assert timed.scores[0].mae == plain.scores[0].mae == pytest.approx((3.0 + 5.0) / 2)


async def test_start_follows_a_calendar_frequency(store: ExperimentStore) -> None:
    """Month starts: 2026-03-01 is step 2 of a forecast from 2026-01-01 (31 and 28 days)."""
    f = forecast("2026-01-01", "MS", horizon=4)
    store.record(f)
    report = await store.report_actuals(f.forecast_id, [12.0], start_ns=ns("2026-03-01"))
    assert report.scores[0].mae == pytest.approx(10.0)  # the forecast's step 2 is 2.0


@pytest.mark.parametrize(
    ("start", "description"),
    [
        ("2026-01-05 12:00", "is not one of the forecast's step times"),
        ("2026-01-04", "is not one of the forecast's step times"),  # before the first step
        ("2026-01-08", "is not one of the forecast's step times"),  # past the last
    ],
)
async def test_a_start_off_the_steps_is_invalid(
    store: ExperimentStore, start: str, description: str
) -> None:
    f = forecast("2026-01-05", "D")
    store.record(f)
    with pytest.raises(InvalidArgument) as error:
        await store.report_actuals(f.forecast_id, [1.0], start_ns=ns(start))
    [(field, text)] = fields(error)
    assert field == "start" and description in text, text
    assert "2026-01-05" in text and "2026-01-07" in text, text  # the steps it could be


async def test_start_and_an_offset_together_are_invalid(store: ExperimentStore) -> None:
    f = forecast("2026-01-05", "D")
    store.record(f)
    with pytest.raises(InvalidArgument) as error:
        await store.report_actuals(f.forecast_id, [1.0], 1, start_ns=ns("2026-01-06"))
    assert [field for field, _ in fields(error)] == ["start"]


async def test_start_on_a_forecast_without_time_is_invalid(store: ExperimentStore) -> None:
    f = forecast(None)
    store.record(f)
    with pytest.raises(InvalidArgument) as error:
        await store.report_actuals(f.forecast_id, [1.0], start_ns=ns("2026-01-06"))
    [(field, text)] = fields(error)
    assert field == "start" and "the forecast had no time" in text


async def test_actuals_from_start_still_fit_the_horizon(store: ExperimentStore) -> None:
    f = forecast("2026-01-05", "D")
    store.record(f)
    with pytest.raises(InvalidArgument) as error:
        await store.report_actuals(f.forecast_id, [1.0, 2.0], start_ns=ns("2026-01-07"))
    assert [field for field, _ in fields(error)] == ["actuals"]
    assert np.isnan((await store.experiment(MODEL)).versions[0].errors.mae_mean)
