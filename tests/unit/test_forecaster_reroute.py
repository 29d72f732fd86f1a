"""The forecaster when Triton no longer serves the version the router chose (before a refresh).

A stand-in proxy plays Triton with version 1 of model "m" unloaded; the
catalog still says it is ready, as it does until its next refresh.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pytest

from forecast_gateway.backends.base import DEFAULT_SIGNATURE, Rows, Signature
from forecast_gateway.config import ModelConfig
from forecast_gateway.core.catalog import ModelCatalog, build_spec
from forecast_gateway.core.forecaster import Forecaster
from forecast_gateway.core.results import ForecastResult, Outcome
from forecast_gateway.core.routing import Decision, Fallback, Policy
from forecast_gateway.core.validation import ForecastQuery
from forecast_gateway.errors import Unavailable
from tests.backend_double import PartialBackend

PARAMETERS = {"default_horizon": "4", "max_horizon": "8", "v1.sequence_length": "10"}
PARAMETERS["v2.sequence_length"] = "52"


class UnloadedV1(PartialBackend):
    """Triton with m v1 unloaded: it answers VERSION_UNAVAILABLE for it, zeros otherwise."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def forecast(
        self,
        model: str,
        version: str,
        windows: Rows,
        horizon: int,
        timeout_s: float,
        signature: Signature = DEFAULT_SIGNATURE,
        season: int = 1,
    ) -> Rows:
        self.calls.append((model, version))
        if (model, version) == ("m", "1"):
            raise Unavailable("not loaded", reason="VERSION_UNAVAILABLE")
        return np.zeros((windows.shape[0], horizon), dtype=np.float32)


class Routing:
    """Every unpinned call of "m" drawn to v1, with or without a fallback."""

    def __init__(self, fallback: Fallback | None = None) -> None:
        self.fallback = fallback

    def policy(self, name: str) -> Policy | None:
        return Policy(split=(("1", 1.0),), fallback=self.fallback) if name == "m" else None

    def experiment(self, name: str) -> str:
        raise NotImplementedError("these forecasters have no store: nothing is recorded")


def forecaster(proxy: UnloadedV1, routing: Routing) -> Forecaster:
    spec = build_spec(ModelConfig("m"), PARAMETERS, {"1": "READY", "2": "READY"}, 8)
    other = build_spec(
        ModelConfig("other"),
        {"default_horizon": "4", "max_horizon": "8", "sequence_length": "10"},
        {"1": "READY"},
        8,
    )
    catalog = ModelCatalog(
        models=(ModelConfig("m"), ModelConfig("other")),
        specs={"m": spec, "other": other},
        triton_up=True,
    )
    return Forecaster(catalog, proxy, routing, None, 10_000, 1.0)


def query(points: int, version: str = "") -> ForecastQuery:
    return ForecastQuery("m", version, "", np.arange(points, dtype=np.float64), 0, 0)


async def test_an_unpinned_call_is_routed_again_and_the_version_leaves_routing() -> None:
    proxy = UnloadedV1()
    core = forecaster(proxy, Routing())
    result = await core.forecast(query(60), time.monotonic() + 2)
    assert (result.version, result.decision) == ("2", Decision.DEFAULT)
    assert proxy.calls == [("m", "1"), ("m", "2")]
    assert core.catalog.get("m").ready_versions() == ["2"]  # until the next refresh
    await core.forecast(query(60), time.monotonic() + 2)
    assert proxy.calls[2:] == [("m", "2")]  # Triton is not asked for v1 again


async def test_a_pinned_call_keeps_its_error() -> None:
    proxy = UnloadedV1()
    with pytest.raises(Unavailable) as raised:
        await forecaster(proxy, Routing()).forecast(query(60, "1"), time.monotonic() + 2)
    assert raised.value.reason == "VERSION_UNAVAILABLE"
    assert proxy.calls == [("m", "1")]


async def test_a_history_too_short_for_the_other_version_gets_the_fallback() -> None:
    proxy = UnloadedV1()
    core = forecaster(proxy, Routing(Fallback("other")))
    result = await core.forecast(query(20), time.monotonic() + 2)  # v2 needs 52 points
    assert (result.model, result.decision) == ("other", Decision.FALLBACK)


async def test_without_a_fallback_the_caller_gets_the_version_error() -> None:
    proxy = UnloadedV1()
    with pytest.raises(Unavailable) as raised:
        await forecaster(proxy, Routing()).forecast(query(20), time.monotonic() + 2)
    assert raised.value.reason == "VERSION_UNAVAILABLE"  # not INVALID_ARGUMENT from v2's window


def forecasts(outcomes: Sequence[Outcome]) -> list[ForecastResult]:
    """The outcomes, each of which is a forecast (an error fails the test)."""
    results = []
    for outcome in outcomes:
        assert isinstance(outcome, ForecastResult), outcome
        results.append(outcome)
    return results


def batch(points: int, count: int) -> list[ForecastQuery]:
    return [
        ForecastQuery("m", "", f"series-{i}", np.arange(points, dtype=np.float64), 0, 0)
        for i in range(count)
    ]


async def test_a_batch_group_is_routed_again_like_a_single_forecast() -> None:
    proxy = UnloadedV1()
    outcomes = await forecaster(proxy, Routing()).forecast_batch(
        "m", batch(60, 3), time.monotonic() + 2
    )
    assert [(o.version, o.decision) for o in forecasts(outcomes)] == [("2", Decision.DEFAULT)] * 3
    assert proxy.calls == [("m", "1"), ("m", "2")]  # one tensor each time


async def test_a_failed_batch_group_gets_the_fallback() -> None:
    proxy = UnloadedV1()
    core = forecaster(proxy, Routing(Fallback("other")))
    queries = [*batch(20, 2), ForecastQuery("m", "1", "pinned", np.arange(60.0), 0, 0)]
    outcomes = await core.forecast_batch("m", queries, time.monotonic() + 2)
    assert [(o.model, o.decision, o.primary_version) for o in forecasts(outcomes[:2])] == [
        ("other", Decision.FALLBACK, "1")
    ] * 2
    assert isinstance(outcomes[2], Unavailable)  # pinned: no re-route; its route has no fallback
    assert ("other", "1") in proxy.calls
