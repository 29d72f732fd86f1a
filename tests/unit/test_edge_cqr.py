"""CQR through the whole gateway in process (fake backend): a quantile model's 80% interval.

Before any actual, the intervals are the model's own quantiles
(NOT_CALIBRATED); after enough reported actuals the next forecast's 80%
interval is CQR, [lo - scale Q, hi + scale Q] with Q computed here from
the reported data, and CALIBRATED; 95% still needs more scores.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from forecast.v1 import forecast_pb2
from forecast.v1 import forecast_service_pb2 as pb
from forecast_gateway.backends.base import Rows
from forecast_gateway.backends.fake import FakeModel
from forecast_gateway.numerics import naive_scale
from tests.edge import fake_backend, serving

MODEL = "team_q"
WINDOW = 28
QUANTILE_MODEL = {
    "forecast.contract": "1",
    "forecast.normalization": "none",
    "forecast.window": str(WINDOW),
    "forecast.horizon": "fixed",
    "forecast.max_horizon": "14",
    "forecast.horizon_input": "none",
    "forecast.output_kind": "quantiles",
    "forecast.quantile_levels": "0.025,0.1,0.5,0.9,0.975",
    "forecast.output": "none",
}
HORIZON = 3
REPORTED = 9
"""Forecasts with actuals: the 80% offset is the 8th smallest of 9 (ceil(10 * 0.8))."""


def spread_quantiles(windows: Rows, steps: int) -> Rows:
    """Point = the window's last value; quantiles last +- 1, 2: the 80% band is last +- 1."""
    last = windows[:, -1][:, None, None]
    offsets = np.array([0.0, -2.0, -1.0, 0.0, 1.0, 2.0], dtype=np.float32)
    return np.broadcast_to(last + offsets, (windows.shape[0], steps, 6)).astype(np.float32)


def history(i: int) -> list[float]:
    """40 points whose naive scale and last value differ with i."""
    return [300.0 + ((j * (i + 2)) % 13) * (i + 1) for j in range(40)]


def request(i: int, coverages: list[float]) -> pb.ForecastRequest:
    return pb.ForecastRequest(
        model=MODEL, history=history(i), horizon=HORIZON, interval_coverages=coverages
    )


async def test_reported_actuals_turn_the_80_interval_into_cqr(tmp_path: Path) -> None:
    backend = fake_backend()
    backend.models[MODEL] = FakeModel(
        QUANTILE_MODEL, {"1": "READY"}, forecasts={"1": spread_quantiles}
    )
    rng = np.random.default_rng(7)
    scores: list[list[float]] = [[] for _ in range(HORIZON)]
    async with serving(tmp_path, backend, calibration_refresh_s=60.0) as edge:
        before = await edge.stub.Forecast(request(0, [0.8]))
        for i in range(1, REPORTED + 1):
            served = await edge.stub.Forecast(request(i, []))
            last, scale = history(i)[-1], naive_scale(history(i)[-WINDOW:])
            actuals = (last + rng.normal(0.0, 3.0, HORIZON)).tolist()
            await edge.stub.ReportActuals(
                pb.ReportActualsRequest(forecast_id=served.forecast_id, actuals=actuals)
            )
            for step, y in enumerate(actuals):
                scores[step].append(max((last - 1) - y, y - (last + 1)) / scale)
        calibration = edge.gateway.forecaster.calibration
        assert calibration is not None
        await calibration.refresh()
        after = await edge.stub.Forecast(request(REPORTED + 1, [0.8]))
        mixed = await edge.stub.Forecast(request(REPORTED + 1, [0.8, 0.95]))

    assert before.uncertainty.status == forecast_pb2.UNCERTAINTY_STATUS_NOT_CALIBRATED
    assert before.uncertainty.method.startswith("model quantiles")
    assert "needs 4 scores per horizon step, step 1 has 0" in before.uncertainty.detail

    assert after.uncertainty.status == forecast_pb2.UNCERTAINTY_STATUS_CALIBRATED
    assert "CQR" in after.uncertainty.method and "9 scores" in after.uncertainty.method
    assert list(after.uncertainty.calibration_scores) == [REPORTED] * HORIZON
    last, scale = history(REPORTED + 1)[-1], naive_scale(history(REPORTED + 1)[-WINDOW:])
    rank = math.ceil((REPORTED + 1) * 0.8)
    q = np.array([sorted(step)[rank - 1] for step in scores])
    (interval,) = after.intervals
    assert list(interval.lower) == pytest.approx((last - 1) - scale * q, rel=1e-6)
    assert list(interval.upper) == pytest.approx((last + 1) + scale * q, rel=1e-6)

    assert mixed.uncertainty.status == forecast_pb2.UNCERTAINTY_STATUS_NOT_CALIBRATED
    assert "CQR for the 0.8 interval" in mixed.uncertainty.detail
    assert "CQR of the 0.95 interval needs 19 scores" in mixed.uncertainty.detail
    eighty, ninety_five = mixed.intervals
    assert list(eighty.lower) == list(interval.lower)
    assert list(ninety_five.lower) == pytest.approx([last - 2] * HORIZON)  # the model's own
