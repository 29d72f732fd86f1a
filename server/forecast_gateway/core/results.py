"""The plain data the forecasting stages hand on: plans, results, and a call's notes."""

from __future__ import annotations

from dataclasses import dataclass, field

from forecast_gateway.core.calibration import Uncertainty
from forecast_gateway.core.routing import Decision, Route
from forecast_gateway.core.validation import ForecastQuery, Shape
from forecast_gateway.errors import GatewayError
from forecast_gateway.numerics import FloatArray
from forecast_gateway.timegrid import Instants


@dataclass(frozen=True)
class Plan:
    """A validated series with the version and shape it will run with (plan -> execute)."""

    index: int
    """Its position in the caller's request (0 for a single forecast)."""
    query: ForecastQuery
    route: Route
    shape: Shape


@dataclass(frozen=True)
class ForecastResult:
    """A forecast in the units of the history, and how it was produced (execute -> record)."""

    forecast_id: str
    model: str
    version: str
    decision: Decision
    values: FloatArray
    horizon: int
    window: int
    latency_ms: float = 0.0
    primary_version: str = ""
    restricted: bool = False
    scale: float = 0.0
    """Naive MAE of the window the model read (`numerics.naive_scale`): the unit of its errors."""
    uncertainty: Uncertainty | None = None
    """The requested intervals and quantiles; None when the request asked for none."""
    timestamps: Instants | None = None
    """The instant of each step (ns, UTC) when the request had time."""
    frequency: str = ""
    """The series' frequency, as given or inferred ("" without time)."""
    filled: int = 0
    """Missing points of the window filled by the request's fill method."""
    tracked: FloatArray | None = None
    """A quantile model's bounds at the tracked levels (scale units), recorded for
    GetExperiment; None for a point model (its calibration gives them)."""


Outcome = ForecastResult | GatewayError
"""What one series of a request ends with."""


@dataclass(frozen=True)
class VersionOutcome:
    """One version's answer in a comparison: values and latency, or the error."""

    version: str
    window: int
    latency_ms: float
    values: FloatArray | None = None
    error: GatewayError | None = None
    uncertainty: Uncertainty | None = None
    timestamps: Instants | None = None
    frequency: str = ""
    filled: int = 0


@dataclass
class CallNotes:
    """Where one call went: its metrics' labels and its request line's fields.

    Written by the core as it routes (and by the servicer), read once by the
    edge's interceptor when the call ends: metrics never depend on what the
    logging context holds.
    """

    model: str = ""
    version: str = ""
    routing: str = ""
    fields: dict[str, object] = field(default_factory=dict)
    """More fields for the request line (routing_restricted, fallback_model, series...)."""

    def route(self, model: str, version: str, decision: Decision, restricted: bool) -> None:
        """The model, version and routing decision the call is served with."""
        self.model, self.version, self.routing = model, version, decision.value
        self.fields["routing_restricted"] = restricted

    def fallback(self, model: str, version: str) -> None:
        """The call was answered by the fallback `model` `version`."""
        self.version, self.routing = version, Decision.FALLBACK.value
        self.fields["fallback_model"] = model
