"""A sticky split through the gRPC edge: the recorder gives the store each forecast's key.

Forecasts served with a routing key under a split (STICKY) are compared one
value per key; the same split without keys (WEIGHTED) one value per forecast.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from forecast.v1 import forecast_service_pb2 as pb
from forecast_gateway.core.routing import sticky_version
from tests.edge import LSTM, forecast_request, routing_file, serving

SPLIT = """
[models.lstm_timeseries]
split = { "1" = 50, "2" = 50 }
experiment = "edge-sticky"
"""


def keys_routed_to(version: str, count: int) -> list[str]:
    """`count` routing keys that SPLIT sends to `version`."""
    split = [("1", 50.0), ("2", 50.0)]
    keys = (f"customer-{i}" for i in range(10_000))
    return [k for k in keys if sticky_version(LSTM, k, split) == version][:count]


@pytest.mark.parametrize("keyed", [True, False], ids=["sticky", "weighted"])
async def test_a_sticky_split_is_compared_per_key(tmp_path: Path, keyed: bool) -> None:
    rng = np.random.default_rng(5)
    async with serving(tmp_path, routing_file=routing_file(tmp_path, SPLIT)) as edge:
        per_version: dict[str, int] = {}
        for version in ("1", "2"):
            for key in keys_routed_to(version, 3):
                for _ in range(4):  # four forecasts of each key
                    request = forecast_request(routing_key=key if keyed else "", horizon=3)
                    served = await edge.stub.Forecast(request)
                    per_version[served.version] = per_version.get(served.version, 0) + 1
                    actuals = rng.normal(3.0, 2.0, 3).tolist()
                    await edge.stub.ReportActuals(
                        pb.ReportActualsRequest(forecast_id=served.forecast_id, actuals=actuals)
                    )
        report = await edge.stub.GetExperiment(pb.GetExperimentRequest(model=LSTM))
    [comparison] = report.comparisons
    if keyed:
        assert per_version == {"1": 12, "2": 12}
        assert comparison.samples == 3, comparison  # keys
        assert "after 3 keys each" in comparison.verdict, comparison.verdict
    else:  # weighted draws: each forecast a unit of its own
        assert comparison.samples == min(per_version.values()) > 3, comparison
        assert "forecasts each" in comparison.verdict, comparison.verdict
