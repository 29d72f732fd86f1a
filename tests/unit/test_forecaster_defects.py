"""Forecaster defects found in review, each pinned by a test (with the in-process fake backend)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from forecast_gateway.backends.base import DEFAULT_SIGNATURE, Rows, Signature
from forecast_gateway.backends.fake import FakeBackend, FakeModel, last_value
from forecast_gateway.config import ModelConfig
from forecast_gateway.core.catalog import ModelCatalog, build_spec
from forecast_gateway.core.forecaster import Forecaster, ForecastResult
from forecast_gateway.core.routing import Decision, Fallback, Policy, Shadow
from forecast_gateway.core.validation import ForecastQuery
from forecast_gateway.errors import (
    DeadlineExceeded,
    GatewayError,
    Internal,
    InvalidArgument,
    Unavailable,
)
from forecast_gateway.numerics import Levels

M = {"default_horizon": "4", "max_horizon": "8", "sequence_length": "10"}


def first_row_not_finite(windows: Rows, horizon: int) -> Rows:
    """Row 0 comes back NaN (a model that failed on one series), the others as last_value."""
    out = last_value(windows, horizon)
    out[0] = np.nan
    return out


class Routing:
    def __init__(self, policy: Policy) -> None:
        self._policy = policy

    def policy(self, name: str) -> Policy | None:
        return self._policy if name == "m" else None

    def experiment(self, name: str) -> str:
        return "default"


def core(backend: FakeBackend, policy: Policy) -> Forecaster:
    specs = {
        name: build_spec(ModelConfig(name), model.parameters, model.states, model.max_batch_size)
        for name, model in backend.models.items()
    }
    catalog = ModelCatalog(models=tuple(ModelConfig(n) for n in specs), specs=specs, triton_up=True)
    return Forecaster(catalog, backend, Routing(policy), None, 10_000, 1.0)


def query(key: str = "", version: str = "") -> ForecastQuery:
    return ForecastQuery("m", version, key, np.arange(1.0, 21.0), 0, 0)


async def test_a_fallback_with_no_ready_version_keeps_the_good_forecasts_of_the_batch() -> None:
    backend = FakeBackend(
        {
            "m": FakeModel(M, {"1": "READY"}, forecasts={"1": first_row_not_finite}),
            "other": FakeModel(M, {"1": "LOADING"}),
        }
    )
    forecaster = core(backend, Policy(split=(("1", 1.0),), fallback=Fallback("other")))
    outcomes = await forecaster.forecast_batch(
        "m", [query("a"), query("b"), query("c")], time.monotonic() + 2
    )
    assert isinstance(outcomes[0], Internal)
    assert outcomes[0].reason == "MODEL_OUTPUT_INVALID"  # its own error, not "the forecast failed"
    assert all(isinstance(o, ForecastResult) and o.version == "1" for o in outcomes[1:])


async def test_a_single_forecast_whose_fallback_is_loading_gets_its_own_error() -> None:
    backend = FakeBackend(
        {"m": FakeModel(M, {"1": "READY"}), "other": FakeModel(M, {"1": "LOADING"})}
    )
    backend.errors[("m", "1")] = Unavailable("Triton is unreachable", reason="TRITON_UNAVAILABLE")
    forecaster = core(backend, Policy(split=(("1", 1.0),), fallback=Fallback("other")))
    with pytest.raises(GatewayError) as raised:
        await forecaster.forecast(query(), time.monotonic() + 2)
    assert raised.value.reason == "TRITON_UNAVAILABLE"  # the primary's, not the fallback model's


async def test_a_forecast_rerouted_to_its_shadow_version_is_not_shadowed_by_itself() -> None:
    backend = FakeBackend({"m": FakeModel(M, {"1": "READY", "2": "READY"})})
    backend.errors[("m", "1")] = Unavailable("gone", reason="VERSION_UNAVAILABLE")
    forecaster = core(backend, Policy(split=(("1", 1.0),), shadow=Shadow("2", 100.0)))
    result = await forecaster.forecast(query(), time.monotonic() + 2)
    assert (result.version, result.decision) == ("2", Decision.DEFAULT)
    await forecaster.drain_shadows()
    assert [(c.version, c.rows) for c in backend.calls] == [("1", 1), ("2", 1)]  # v2 ran once


async def test_a_version_that_misses_its_deadline_is_answered_by_the_fallback_in_time() -> None:
    """The chosen version gets 75% of the time left; the fallback answers within the rest."""
    backend = FakeBackend(
        {"m": FakeModel(M, {"1": "READY"}), "other": FakeModel(M, {"1": "READY"})}
    )
    slow = backend.models["m"]

    class Slow(FakeBackend):
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
            if model == "m":  # never answers within its deadline, as a stuck version does
                await asyncio.sleep(timeout_s)  # gRPC ends the call at its deadline
                raise DeadlineExceeded("the deadline passed while Triton was computing")
            return await super().forecast(
                model, version, windows, horizon, timeout_s, signature, season
            )

    slow_backend = Slow({"m": slow, "other": backend.models["other"]})
    forecaster = core(slow_backend, Policy(split=(("1", 1.0),), fallback=Fallback("other")))
    result = await forecaster.forecast(query(), time.monotonic() + 0.4)
    assert (result.model, result.decision, result.primary_version) == (
        "other",
        Decision.FALLBACK,
        "1",
    )


async def test_one_bad_request_lists_every_violation_known_before_inference() -> None:
    """AIP-193: horizon over the model's maximum and a bad coverage in one BadRequest."""
    backend = FakeBackend({"m": FakeModel(M, {"1": "READY"})})
    forecaster = core(backend, Policy(split=(("1", 1.0),)))
    bad = ForecastQuery("m", "", "", np.arange(1.0, 21.0), 3000, 0, levels=Levels(coverages=(1.5,)))
    with pytest.raises(InvalidArgument) as raised:
        await forecaster.forecast(bad, time.monotonic() + 2)
    assert {v.field for v in raised.value.violations} == {"interval_coverages[0]", "horizon"}
    pinned = ForecastQuery("m", "1", "", np.arange(1.0, 6.0), 3000, 0, levels=Levels((1.5,)))
    outcomes = await forecaster.forecast_batch("m", [pinned], time.monotonic() + 2)
    assert isinstance(outcomes[0], InvalidArgument)
    assert {v.field for v in outcomes[0].violations} == {
        "interval_coverages[0]",
        "horizon",
        "history",  # 5 points, version 1 reads 10
    }
    assert backend.calls == []  # nothing reached the backend


async def test_a_bad_field_of_an_unknown_model_is_still_invalid_argument() -> None:
    forecaster = core(FakeBackend({"m": FakeModel(M, {"1": "READY"})}), Policy())
    bad = ForecastQuery("nope", "", "", np.arange(1.0, 21.0), -1, 0)
    with pytest.raises(InvalidArgument) as raised:
        await forecaster.forecast(bad, time.monotonic() + 2)
    assert [v.field for v in raised.value.violations] == ["horizon"]
