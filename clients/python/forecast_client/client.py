"""A small, typed, blocking client for `forecast.v1.ForecastService` and its operations.

    with ForecastClient("localhost:50051") as client:  # or ..., cacert="ca.pem", token=...
        result = client.forecast("lstm_timeseries", history, horizon=12)
        result.values  # list[float], `horizon` steps

        outcomes = client.forecast_batch("lstm_timeseries", {"store-1": h1, "store-2": h2})
        comparison = client.compare_versions("lstm_timeseries", history, horizon=12)
        banded = client.forecast("lstm_timeseries", history, interval_coverages=[0.8, 0.95])
        banded.interval(0.95)  # Interval(coverage, lower, upper), or None if not calibrated
        report = client.report_actuals(result.forecast_id, observed)
        experiment = client.get_experiment("lstm_timeseries")
        backtest = client.backtest("lstm_timeseries", {"store-1": h1}, horizon=12, n_windows=8)
        backtest.result("lstm_timeseries:2").mase, backtest.comparisons[0].verdict

        operation = client.start_backtest("lstm_timeseries", series, horizon=12, n_windows=800)
        operation = client.wait_operation(operation.name, on_progress=print)  # Operation
        report = client.backtest_result(operation)  # the BacktestReport `backtest` returns
        batch = client.start_forecast_batch("lstm_timeseries", many_series)  # then the same

        dated = client.forecast("lstm_timeseries", values, start="2024-01-01", frequency="D")
        dated.timestamps  # tuple[datetime, ...], UTC: the day after the last history point on
        gappy = client.forecast("m", values, timestamps=days, frequency="D", fill="linear")
        sales = client.forecast("m", pandas_series)  # its DatetimeIndex is the timestamps

Every failed call raises `ForecastError` (see `errors.py`). Batch and stream
calls answer each series on its own: a series that failed is a
`SeriesOutcome` whose `error` is a `ForecastError`, and the others still
have their forecasts. A failed operation's `error` is a `ForecastError`
too (`backtest_result` raises it). Scores and statistics the gateway
cannot compute yet (no actuals, too few samples) are NaN.

Series with time: `start=` (the time of `history[0]`) with `frequency=` (a
pandas offset alias: "D", "h", "15min", "W-SUN", "MS", ...), or one time per
point in `timestamps=` (for data with gaps). Times are datetimes (naive ones
are UTC), dates, numpy datetime64, pandas Timestamps or ISO 8601 strings
(see `times.py`). NaN (or None) in a history is a missing value, filled by
the gateway per `fill=` ("linear", "previous", "zero"); with no fill, one
inside the window the model reads is INVALID_ARGUMENT (reason
MISSING_VALUES). Forecasts of a request with time carry `timestamps` (one
timezone-aware UTC datetime per step), `frequency` and `filled_points`.

Intervals and quantiles come only when asked for (`interval_coverages=`,
`quantile_levels=`), and only those the gateway has calibrated: when one is
missing, `uncertainty.status` is "not_calibrated" and `uncertainty.detail`
says why.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Required, Self, TypedDict, TypeVar

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2

from forecast.v1 import forecast_pb2, forecast_service_pb2, forecast_service_pb2_grpc
from forecast_client.connection import (
    AUTHORIZATION,
    DEFAULT_RETRY_POLICY,
    PathLike,
    RetryPolicy,
    bearer_metadata,
    channel_credentials,
    channel_options,
)
from forecast_client.errors import ForecastError, from_proto_error, from_rpc_error
from forecast_client.operations import (
    BACKTEST,
    FORECAST_BATCH,
    MAX_WAIT_S,
    RESPONSE_TYPES,
    Operation,
    OperationProgress,
    operation_of,
)
from forecast_client.times import (
    TimeLike,
    datetime_index,
    from_timestamp,
    series_fields,
    to_timestamp,
)

__all__ = [
    "ActualsReport",
    "BacktestComparison",
    "BacktestInterval",
    "BacktestQuantile",
    "BacktestReport",
    "BacktestResult",
    "BacktestStep",
    "BacktestTarget",
    "BacktestWindow",
    "Comparison",
    "ErrorStats",
    "Experiment",
    "Forecast",
    "ForecastArgs",
    "ForecastClient",
    "Interval",
    "IntervalCoverage",
    "LatencyStats",
    "ModelInfo",
    "ModelVersionInfo",
    "Operation",
    "OperationProgress",
    "QuantileForecast",
    "QuantileLoss",
    "SeriesInput",
    "SeriesOutcome",
    "Uncertainty",
    "VersionComparison",
    "VersionDifference",
    "VersionExperiment",
    "VersionForecast",
    "VersionScore",
]

_Response = TypeVar("_Response")
_Number = TypeVar("_Number", bound=int)


@dataclass(frozen=True)
class Interval:
    """A prediction interval: the actual lies in [lower, upper] with probability `coverage`.

    `lower` and `upper` have one value per horizon step, in the units of the
    history; the intervals of one forecast are nested and lower <= upper.
    """

    coverage: float
    lower: list[float]
    upper: list[float]


@dataclass(frozen=True)
class QuantileForecast:
    """The forecast quantile at `level`: the actual is at or below `values` with that probability.

    One value per horizon step; the quantiles of one forecast do not decrease with the level.
    """

    level: float
    values: list[float]


@dataclass(frozen=True)
class Uncertainty:
    """How a forecast's intervals and quantiles were obtained.

    `status` is "calibrated" (everything asked for is returned),
    "not_calibrated" (something asked for is missing: `detail` says what and
    why) or "model_native"; `calibration_scores` is the number of
    calibration scores behind each horizon step.
    """

    status: str
    method: str
    calibration_scores: list[int]
    detail: str

    @property
    def calibrated(self) -> bool:
        """True when every requested interval and quantile was returned."""
        return self.status != "not_calibrated"


class _Bands:
    """Look-ups shared by the results that carry intervals and quantiles."""

    intervals: tuple[Interval, ...]
    quantiles: tuple[QuantileForecast, ...]

    def interval(self, coverage: float) -> Interval | None:
        """The interval of this nominal coverage, None if it was not asked for or not calibrated."""
        return next((i for i in self.intervals if math.isclose(i.coverage, coverage)), None)

    def quantile(self, level: float) -> QuantileForecast | None:
        """The quantile at this level, None if it was not asked for or not calibrated."""
        return next((q for q in self.quantiles if math.isclose(q.level, level)), None)


@dataclass(frozen=True)
class Forecast(_Bands):
    """A forecast of one series, as the gateway returned it.

    `routing_decision` is the enum value without its prefix, lowercased
    ("pinned" or "default"); `sequence_length` is the window the model read.
    `intervals` and `quantiles` are the calibrated ones asked for, in request
    order; `uncertainty` is None when none were asked for. For a request
    with time, `timestamps` holds the time of each step (timezone-aware UTC
    datetimes, the first one step after the last history point),
    `frequency` the pandas offset alias used (given or inferred);
    `filled_points` counts the missing points of the window that the
    gateway filled. Without time: (), "" and 0 (or the NaN filled).
    """

    forecast_id: str
    model: str
    version: str
    values: list[float]
    routing_decision: str
    horizon: int
    sequence_length: int
    intervals: tuple[Interval, ...] = ()
    quantiles: tuple[QuantileForecast, ...] = ()
    uncertainty: Uncertainty | None = None
    timestamps: tuple[datetime, ...] = ()
    frequency: str = ""
    filled_points: int = 0


@dataclass(frozen=True)
class ModelVersionInfo:
    """One version of a served model; `state` is e.g. "ready" or "loading"."""

    version: str
    state: str
    sequence_length: int
    min_sequence_length: int
    max_sequence_length: int
    description: str
    replicas_ready: int = 0
    """How many Triton replicas reported this version READY at the gateway's last refresh."""
    unavailable_reason: str = ""
    """Why it is not ready: Triton's load error, or what is wrong with its declaration."""
    output_kind: str = ""
    """"point" or "quantiles" (its own quantiles at `quantile_levels`)."""
    quantile_levels: tuple[float, ...] = ()
    frequencies: tuple[str, ...] = ()
    """The pandas aliases it was declared for; empty: any."""


@dataclass(frozen=True)
class ModelInfo:
    """A model the gateway serves, with every version it knows of."""

    name: str
    description: str
    default_version: str
    default_horizon: int
    max_horizon: int
    versions: tuple[ModelVersionInfo, ...]


class ForecastArgs(TypedDict, total=False):
    """The fields of one ForecastRequest, as keyword arguments of `forecast()`."""

    model: Required[str]
    history: Required[Iterable[float | None]]
    version: str
    routing_key: str
    horizon: int
    sequence_length: int
    interval_coverages: Iterable[float]
    quantile_levels: Iterable[float]
    start: TimeLike
    frequency: str
    timestamps: Iterable[TimeLike]
    fill: str | int


@dataclass(frozen=True)
class SeriesInput:
    """One series of `forecast_batch` with its own time (a plain history works too).

    The fields are those of `forecast()`; a field left at its default takes
    the batch's value (`forecast_batch(..., frequency="D", fill="linear")`).
    """

    history: Iterable[float | None]
    start: TimeLike | None = None
    frequency: str = ""
    timestamps: Iterable[TimeLike] | None = None
    fill: str | int | None = None
    routing_key: str = ""


BatchSeries = Iterable[float | None] | SeriesInput
"""A series of `forecast_batch`: its history, or a `SeriesInput` with its time."""


@dataclass(frozen=True)
class SeriesOutcome:
    """The answer for one series of a batch (or one request of a stream).

    `id` is the series id (batch) or the request id (stream). Exactly one of
    `forecast` and `error` is set.
    """

    id: str
    forecast: Forecast | None
    error: ForecastError | None

    @property
    def ok(self) -> bool:
        """True when the series was forecast."""
        return self.forecast is not None


@dataclass(frozen=True)
class VersionForecast(_Bands):
    """One version's answer in a comparison; `error` is set (and `values` empty) if it failed.

    `intervals`, `quantiles`, `uncertainty`, `timestamps`, `frequency` and
    `filled_points` are as in `Forecast`.
    """

    version: str
    values: list[float]
    latency_ms: float
    sequence_length: int
    error: ForecastError | None
    intervals: tuple[Interval, ...] = ()
    quantiles: tuple[QuantileForecast, ...] = ()
    uncertainty: Uncertainty | None = None
    timestamps: tuple[datetime, ...] = ()
    frequency: str = ""
    filled_points: int = 0


@dataclass(frozen=True)
class VersionDifference:
    """How far two versions' forecasts are apart, in the units of the history."""

    version_a: str
    version_b: str
    mean_absolute_difference: float
    max_absolute_difference: float


@dataclass(frozen=True)
class Comparison:
    """The same request run on several versions (nothing recorded for A/B scoring)."""

    model: str
    forecasts: tuple[VersionForecast, ...]
    differences: tuple[VersionDifference, ...]


@dataclass(frozen=True)
class VersionScore:
    """The accuracy of one version's forecast; `role` is "served" or "shadow"."""

    version: str
    role: str
    steps_scored: int
    mae: float
    smape: float
    mase: float


@dataclass(frozen=True)
class ActualsReport:
    """What has been scored for a forecast so far (served version first, then shadows)."""

    forecast_id: str
    model: str
    horizon: int
    steps_received: int
    scores: tuple[VersionScore, ...]


@dataclass(frozen=True)
class ErrorStats:
    """Means of the per-forecast errors of `count` scored forecasts (sMAPE in percent)."""

    count: int
    mae_mean: float
    smape_mean: float
    mase_mean: float


@dataclass(frozen=True)
class LatencyStats:
    """Latency percentiles in milliseconds over `count` observations."""

    count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float


@dataclass(frozen=True)
class IntervalCoverage:
    """How one version's intervals of one nominal coverage held on the actuals so far.

    `coverage` is the fraction of `steps` scored horizon steps whose actual
    fell inside, `coverage_low`/`coverage_high` its Wilson 95% interval;
    `mean_width` and `winkler` (lower is better) are in scale units (divided
    by the naive MAE of the request's window). `undercovering`: the
    intervals cover significantly less than `nominal`.
    """

    nominal: float
    steps: int
    coverage: float
    coverage_low: float
    coverage_high: float
    mean_width: float
    winkler: float
    undercovering: bool


@dataclass(frozen=True)
class QuantileLoss:
    """How one version's quantiles at `level` held on the actuals so far.

    `pinball` is the mean pinball loss in scale units (lower is better);
    `below` the fraction of actuals at or below the quantile (ideally `level`).
    """

    level: float
    steps: int
    pinball: float
    below: float


@dataclass(frozen=True)
class VersionExperiment:
    """One version's traffic, scored accuracy and latency, and how its intervals held."""

    version: str
    requests_served: int
    requests_shadowed: int
    actuals_received: int
    errors: ErrorStats
    latency: LatencyStats
    interval_coverage: tuple[IntervalCoverage, ...] = ()
    quantile_losses: tuple[QuantileLoss, ...] = ()


@dataclass(frozen=True)
class VersionComparison:
    """A test of whether two versions' errors differ.

    `mean_difference` is mean(error of a) - mean(error of b) on `metric`:
    negative means version a is more accurate. `ci_low`/`ci_high` bound its
    95% confidence interval; `significant` is `p_value < 0.05`: a
    fixed-sample test, valid when read once. `verdict`, `conclusive`,
    `sequential_p_value` and the confidence sequence `cs_low`/`cs_high` stay
    valid however often the results are read.
    """

    version_a: str
    version_b: str
    metric: str
    test: str
    samples: int
    mean_difference: float
    ci_low: float
    ci_high: float
    p_value: float
    significant: bool
    verdict: str = ""
    conclusive: bool = False
    sequential_test: str = ""
    sequential_p_value: float = math.nan
    cs_low: float = math.nan
    cs_high: float = math.nan


@dataclass(frozen=True)
class Experiment:
    """One experiment's A/B results: per-version statistics and pairwise tests.

    `started_at` is Unix seconds of its first forecast (None: none yet).
    """

    model: str
    versions: tuple[VersionExperiment, ...]
    comparisons: tuple[VersionComparison, ...]
    experiment: str = ""
    started_at: float | None = None
    forecasts: int = 0


@dataclass(frozen=True)
class ExperimentSummary:
    """An experiment the gateway holds for a model; `current` takes new forecasts."""

    model: str
    experiment: str
    started_at: float | None
    forecasts: int
    current: bool


BacktestTarget = str | tuple[str, str]
"""A target of `backtest`: "model:version", a bare "version" (of the request's model), or a
(model, version) pair."""


@dataclass(frozen=True)
class BacktestStep:
    """A target's accuracy at one horizon step (1-based) over every window.

    `mae` is in the series' units, `smape` in percent (0-200); `mase` is NaN
    when no window had a scale.
    """

    step: int
    mae: float
    smape: float
    mase: float


@dataclass(frozen=True)
class BacktestInterval:
    """How a target's intervals of one nominal `coverage` held on the held-out points.

    `observed` is the fraction of points inside, `winkler` the mean Winkler
    score (series' units, lower is better); `per_step_*` give both per
    horizon step. `status` is the intervals' calibration when the backtest
    ran ("calibrated", "not_calibrated", "model_native"): not calibrated,
    there were no intervals and the scores are NaN.
    """

    coverage: float
    observed: float
    winkler: float
    per_step_observed: tuple[float, ...]
    per_step_winkler: tuple[float, ...]
    status: str


@dataclass(frozen=True)
class BacktestQuantile:
    """How a target's quantiles at `level` held: the mean pinball loss (series' units)."""

    level: float
    pinball: float
    per_step: tuple[float, ...]


@dataclass(frozen=True)
class BacktestWindow:
    """A target's accuracy on one window of one series (`per_window=True`).

    `window` is the window's index within its series (0 = the earliest);
    `origin` the number of points before it: it forecast points `origin` ..
    `origin + horizon - 1`. `origin_time` is the time of its first forecast
    point (a timezone-aware UTC datetime) when the series had time, else None.
    """

    series_id: str
    window: int
    origin: int
    mae: float
    smape: float
    mase: float
    origin_time: datetime | None = None


@dataclass(frozen=True)
class BacktestResult:
    """One target's scores over every window of every series.

    `mae`, `smape` (percent) and `rmse` are over every held-out point;
    `mase` is the mean over windows of each window's MAE over its scale
    (see `BacktestReport.scale`). `steps` has one entry per horizon step,
    `intervals` and `quantiles` one per requested coverage and level (in
    request order), `window_scores` every window when `per_window` was set.
    """

    model: str
    version: str
    windows: int
    mae: float
    smape: float
    mase: float
    rmse: float
    steps: tuple[BacktestStep, ...]
    intervals: tuple[BacktestInterval, ...] = ()
    quantiles: tuple[BacktestQuantile, ...] = ()
    window_scores: tuple[BacktestWindow, ...] = ()

    @property
    def target(self) -> str:
        """The target as "model:version", as comparisons name it."""
        return f"{self.model}:{self.version}"

    def interval(self, coverage: float) -> BacktestInterval | None:
        """The scores of the intervals of this coverage, None if they were not asked for."""
        return next((i for i in self.intervals if math.isclose(i.coverage, coverage)), None)

    def quantile(self, level: float) -> BacktestQuantile | None:
        """The scores of the quantiles at this level, None if they were not asked for."""
        return next((q for q in self.quantiles if math.isclose(q.level, level)), None)


@dataclass(frozen=True)
class BacktestComparison:
    """A Diebold-Mariano test of two targets' errors on the same windows.

    `target_a` and `target_b` are "model:version"; `mase_a`/`mase_b` their
    mean MASE over the `windows` both were scored on; `mean_difference` is
    mean(loss of a - loss of b) per window (negative: a is more accurate);
    `statistic` is Student t with windows - 1 degrees of freedom, `lag` the
    HAC truncation lag; `p_value` is NaN when the test is undefined;
    `significant` is p_value < 0.05. `verdict` says it in words.
    """

    target_a: str
    target_b: str
    test: str
    windows: int
    mase_a: float
    mase_b: float
    mean_difference: float
    statistic: float
    p_value: float
    lag: int
    significant: bool
    verdict: str


@dataclass(frozen=True)
class BacktestReport:
    """A rolling-origin backtest: each target's scores and every pair's comparison.

    Window k of `n_windows` (k = 0 the earliest) of a series of T points
    forecasts its points from the origin T - horizon - step * (n_windows - 1 - k).
    `scale` says what MASE was scaled by. `results` are in target order;
    `comparisons` hold one entry per pair of targets.
    """

    model: str
    horizon: int
    n_windows: int
    step: int
    scale: str
    results: tuple[BacktestResult, ...]
    comparisons: tuple[BacktestComparison, ...]

    def result(self, target: str) -> BacktestResult | None:
        """The result of a target named "model:version" (or a bare version of `model`)."""
        label = target if ":" in target else f"{self.model}:{target}"
        return next((r for r in self.results if r.target == label), None)


class ForecastClient:
    """Blocking client; use it as a context manager (or call `close()`).

    `timeout_s` is the deadline of every call, retries included (a wait for an
    operation is many calls, see `wait_operation`); `metadata`
    is sent with every call (e.g. `[("x-request-id", "abc")]`).

    Secured gateways (the options of grpcurl and of the `forecast` command):
    `cacert` (PEM CA that signed the gateway's certificate) or `tls=True`
    (the system's trusted roots) make the channel TLS; `cert` and `key` add a
    client certificate (mTLS); `token` is sent as `authorization: Bearer
    <token>`. `credentials` takes ready-made channel credentials instead of
    the files. Without any of them the channel is plaintext. A missing or
    unreadable file, or a malformed token, raises `SettingError` (a
    ValueError naming the option, never the token) here, not at a call.

    `retry_policy` (default `DEFAULT_RETRY_POLICY`: UNAVAILABLE, 5 attempts)
    is applied to every call (by gRPC; by the client for the
    google.longrunning.Operations calls); None turns retries off.
    `load_balancing="round_robin"` spreads the calls over every address the
    target resolves to (e.g. "dns:///gateway-headless:50051" or
    "ipv4:10.0.0.1:50051,10.0.0.2:50051"), so a replica that restarts only
    moves its share to the others. `options` are extra gRPC channel options
    (e.g. `("grpc.ssl_target_name_override", "gateway.internal")`).
    """

    def __init__(
        self,
        target: str,
        *,
        timeout_s: float = 10.0,
        metadata: Sequence[tuple[str, str]] = (),
        tls: bool = False,
        cacert: PathLike | None = None,
        cert: PathLike | None = None,
        key: PathLike | None = None,
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        retry_policy: RetryPolicy | None = DEFAULT_RETRY_POLICY,
        load_balancing: str | None = None,
        options: Sequence[tuple[str, str | int]] = (),
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if credentials is not None and (tls or any(f is not None for f in (cacert, cert, key))):
            raise ValueError("pass either credentials or tls/cacert/cert/key, not both")
        if credentials is None:
            credentials = channel_credentials(tls=tls, cacert=cacert, cert=cert, key=key)
        call_metadata = tuple(metadata)
        if token is not None:
            if any(name.lower() == AUTHORIZATION for name, _ in call_metadata):
                raise ValueError("pass the token either as token or in metadata, not both")
            call_metadata += (bearer_metadata(token),)
        self.target = target
        self.secure = credentials is not None
        self._timeout_s = timeout_s
        self._metadata = call_metadata
        self._retry_policy = retry_policy
        all_options = [*channel_options(retry_policy, load_balancing), *options]
        self._channel = (
            grpc.insecure_channel(target, all_options)
            if credentials is None
            else grpc.secure_channel(target, credentials, all_options)
        )
        self._stub = forecast_service_pb2_grpc.ForecastServiceStub(self._channel)
        self._operations = operations_pb2_grpc.OperationsStub(self._channel)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel; the client cannot be used afterwards."""
        self._channel.close()

    def forecast(
        self,
        model: str,
        history: Iterable[float | None],
        *,
        version: str = "",
        routing_key: str = "",
        horizon: int = 0,
        sequence_length: int = 0,
        interval_coverages: Iterable[float] = (),
        quantile_levels: Iterable[float] = (),
        start: TimeLike | None = None,
        frequency: str = "",
        timestamps: Iterable[TimeLike] | None = None,
        fill: str | int | None = None,
    ) -> Forecast:
        """Forecast one series (`history`, oldest point first; NaN or None: a missing value).

        `version` "" lets the gateway choose; `horizon` and `sequence_length`
        0 mean the model's defaults. `interval_coverages` (e.g. [0.8, 0.95])
        and `quantile_levels` (e.g. [0.1, 0.9]) ask for prediction intervals
        and quantiles, each level in (0, 1).

        Time (optional): `start` is the time of `history[0]` and `frequency`
        the spacing, a pandas offset alias ("D", "h", "W-SUN", "MS", ...); or
        `timestamps`, one per point, for data with gaps (`frequency` is then
        inferred if left out). A time is a datetime (naive = UTC), a date, a
        numpy datetime64, a pandas Timestamp or an ISO 8601 string. A pandas
        Series `history` with a DatetimeIndex sends its index as `timestamps`
        and its index's frequency, if set, as `frequency` (explicit arguments
        win). `fill` ("linear", "previous", "zero" or a FillMethod) fills the
        missing points; without it one inside the window read is an error.
        The forecast then has `timestamps`, `frequency` and `filled_points`.

        Validation is the gateway's: an empty history, an unknown frequency,
        an off-grid timestamp or a level of 1.5 comes back as
        INVALID_ARGUMENT with a field violation. Only a time of a type the
        client cannot read raises TypeError or ValueError here.
        """
        request = _forecast_request(
            model=model,
            history=history,
            version=version,
            routing_key=routing_key,
            horizon=horizon,
            sequence_length=sequence_length,
            interval_coverages=interval_coverages,
            quantile_levels=quantile_levels,
            start=start,
            frequency=frequency,
            timestamps=timestamps,
            fill=fill,
        )
        return _forecast(self._call(self._stub.Forecast, request))

    def forecast_batch(
        self,
        model: str,
        series: Mapping[str, BatchSeries] | Iterable[tuple[str, BatchSeries]],
        *,
        version: str = "",
        horizon: int = 0,
        sequence_length: int = 0,
        interval_coverages: Iterable[float] = (),
        quantile_levels: Iterable[float] = (),
        start: TimeLike | None = None,
        frequency: str = "",
        timestamps: Iterable[TimeLike] | None = None,
        fill: str | int | None = None,
    ) -> list[SeriesOutcome]:
        """Forecast many series of one model in one call; one outcome per series, in order.

        `series` maps each series id to its history (or is a sequence of
        (id, history) pairs); a history may be a pandas Series with a
        DatetimeIndex, or a `SeriesInput` with its own time fields.
        `interval_coverages` and `quantile_levels` ask for the same intervals
        and quantiles for every series (see `forecast`); `start`,
        `frequency`, `timestamps` and `fill` (see `forecast`) apply to every
        series that does not set its own. Each series is routed by its id
        (or its `routing_key`) and answered on its own: an invalid series
        gets an `error` in its outcome and does not fail the others. The
        call itself fails (ForecastError) only when the batch is invalid as
        a whole (empty, too many series, a repeated id) or the model is not
        served.
        """
        request = _batch_request(
            model,
            series,
            version=version,
            horizon=horizon,
            sequence_length=sequence_length,
            interval_coverages=interval_coverages,
            quantile_levels=quantile_levels,
            start=start,
            frequency=frequency,
            timestamps=timestamps,
            fill=fill,
        )
        return _outcomes(self._call(self._stub.ForecastBatch, request))

    def stream_forecast(
        self, requests: Iterable[tuple[str, ForecastArgs]], *, timeout_s: float | None = None
    ) -> Iterator[SeriesOutcome]:
        """Send (request_id, ForecastArgs) pairs on one StreamForecast call; yield the answers.

        Answers come as they are ready, not necessarily in request order:
        match them by `SeriesOutcome.id` (the request id). A failed request
        is an outcome with an `error`; the stream goes on. A request id that
        is empty or repeats one in flight ends the stream with a
        ForecastError (INVALID_ARGUMENT). `requests` may be a lazy iterator:
        it is read as the gateway asks for more. `timeout_s` is the deadline
        of the whole stream (default: the client's timeout). The call starts
        when iteration starts; stopping early cancels it.
        """
        messages = (
            forecast_service_pb2.StreamForecastRequest(
                request_id=request_id, request=_forecast_request(**args)
            )
            for request_id, args in requests
        )
        call = self._stub.StreamForecast(
            messages, timeout=timeout_s or self._timeout_s, metadata=self._metadata
        )
        try:
            for response in call:
                if response.WhichOneof("outcome") == "forecast":
                    yield SeriesOutcome(response.request_id, _forecast(response.forecast), None)
                else:
                    error = from_proto_error(response.error)
                    yield SeriesOutcome(response.request_id, None, error)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error
        finally:
            call.cancel()  # no-op once the stream has ended

    def compare_versions(
        self,
        model: str,
        history: Iterable[float | None],
        *,
        versions: Iterable[str] = (),
        horizon: int = 0,
        sequence_length: int = 0,
        interval_coverages: Iterable[float] = (),
        quantile_levels: Iterable[float] = (),
        start: TimeLike | None = None,
        frequency: str = "",
        timestamps: Iterable[TimeLike] | None = None,
        fill: str | int | None = None,
    ) -> Comparison:
        """Run one request on several versions (default: every ready version) and compare them.

        `interval_coverages` and `quantile_levels` ask every version for its
        own intervals and quantiles; `start`, `frequency`, `timestamps` and
        `fill` give the series its time (see `forecast`). A version that
        fails has an `error` in its `VersionForecast`; the call fails as a
        whole only for an invalid request or an unknown model or version.
        Nothing is recorded for A/B scoring.
        """
        request = forecast_service_pb2.CompareVersionsRequest(
            model=model,
            versions=list(versions),
            horizon=horizon,
            sequence_length=sequence_length,
            interval_coverages=_floats(interval_coverages),
            quantile_levels=_floats(quantile_levels),
            **series_fields(
                history, start=start, frequency=frequency, timestamps=timestamps, fill=fill
            ),
        )
        response = self._call(self._stub.CompareVersions, request)
        return Comparison(
            model=response.model,
            forecasts=tuple(
                VersionForecast(
                    version=f.version,
                    values=list(f.values),
                    latency_ms=f.latency_ms,
                    sequence_length=f.sequence_length,
                    error=from_proto_error(f.error) if f.HasField("error") else None,
                    **_bands(f),
                    **_time(f),
                )
                for f in response.forecasts
            ),
            differences=tuple(
                VersionDifference(
                    version_a=d.version_a,
                    version_b=d.version_b,
                    mean_absolute_difference=d.mean_absolute_difference,
                    max_absolute_difference=d.max_absolute_difference,
                )
                for d in response.differences
            ),
        )

    def backtest(
        self,
        model: str,
        series: Mapping[str, BatchSeries] | Iterable[tuple[str, BatchSeries]],
        *,
        horizon: int,
        n_windows: int,
        step: int = 0,
        targets: Iterable[BacktestTarget] = (),
        sequence_length: int = 0,
        interval_coverages: Iterable[float] = (),
        quantile_levels: Iterable[float] = (),
        per_window: bool = False,
        start: TimeLike | None = None,
        frequency: str = "",
        timestamps: Iterable[TimeLike] | None = None,
        fill: str | int | None = None,
        timeout_s: float | None = None,
    ) -> BacktestReport:
        """Backtest model versions on the caller's own histories (rolling origin).

        Each series (as in `forecast_batch`: a mapping of id to history, or
        (id, history) pairs; a pandas Series with a DatetimeIndex or a
        `SeriesInput` carries its own time) is cut into `n_windows` windows
        of `horizon` points whose origins are `step` points apart (0:
        `horizon`, windows that do not overlap), the last one ending at the
        series' end. Every target forecasts every window from the history
        before its origin, and is scored on the held-out points.

        `targets` are "model:version" strings, bare "version" strings (of
        `model`) or (model, version) pairs; none means every ready version
        of `model`. `interval_coverages` and `quantile_levels` add interval
        (coverage, Winkler) and quantile (pinball) scores; `per_window` adds
        every window's scores. `start`, `frequency`, `timestamps` and `fill`
        apply to every series that does not set its own (see `forecast`);
        with time, MASE is scaled by the seasonal naive forecast and windows
        carry their `origin_time`. `timeout_s` overrides the client's
        deadline for this call (a backtest of many windows takes longer
        than a forecast).

        Nothing is recorded for A/B scoring. Validation is the gateway's: a
        series too short for its windows, a bad layout or a target that
        names no version is INVALID_ARGUMENT with field violations; an
        unknown model or version is NOT_FOUND.
        """
        request = _backtest_request(
            model,
            series,
            horizon=horizon,
            n_windows=n_windows,
            step=step,
            targets=targets,
            sequence_length=sequence_length,
            interval_coverages=interval_coverages,
            quantile_levels=quantile_levels,
            per_window=per_window,
            start=start,
            frequency=frequency,
            timestamps=timestamps,
            fill=fill,
        )
        return _backtest_report(self._call(self._stub.Backtest, request, timeout_s=timeout_s))

    def start_backtest(
        self,
        model: str,
        series: Mapping[str, BatchSeries] | Iterable[tuple[str, BatchSeries]],
        *,
        horizon: int,
        n_windows: int,
        step: int = 0,
        targets: Iterable[BacktestTarget] = (),
        sequence_length: int = 0,
        interval_coverages: Iterable[float] = (),
        quantile_levels: Iterable[float] = (),
        per_window: bool = False,
        start: TimeLike | None = None,
        frequency: str = "",
        timestamps: Iterable[TimeLike] | None = None,
        fill: str | int | None = None,
        timeout_s: float | None = None,
    ) -> Operation:
        """`backtest` as a long-running operation (StartBacktest), returned at once.

        The arguments are `backtest`'s, checked as there before the operation
        exists (INVALID_ARGUMENT, NOT_FOUND); `timeout_s` is the deadline of
        this call only. Its progress counts windows; `wait_operation` waits
        for it and `backtest_result` reads the report of the finished one.
        """
        request = _backtest_request(
            model,
            series,
            horizon=horizon,
            n_windows=n_windows,
            step=step,
            targets=targets,
            sequence_length=sequence_length,
            interval_coverages=interval_coverages,
            quantile_levels=quantile_levels,
            per_window=per_window,
            start=start,
            frequency=frequency,
            timestamps=timestamps,
            fill=fill,
        )
        return operation_of(self._call(self._stub.StartBacktest, request, timeout_s=timeout_s))

    def start_forecast_batch(
        self,
        model: str,
        series: Mapping[str, BatchSeries] | Iterable[tuple[str, BatchSeries]],
        *,
        version: str = "",
        horizon: int = 0,
        sequence_length: int = 0,
        interval_coverages: Iterable[float] = (),
        quantile_levels: Iterable[float] = (),
        start: TimeLike | None = None,
        frequency: str = "",
        timestamps: Iterable[TimeLike] | None = None,
        fill: str | int | None = None,
    ) -> Operation:
        """`forecast_batch` as a long-running operation (StartForecastBatch), returned at once.

        For more series than one call should carry: the arguments are
        `forecast_batch`'s, the batch is checked as a whole before the
        operation exists. Its progress counts series; `forecast_batch_result`
        reads the outcomes of the finished one (each series answered on its
        own, as by `forecast_batch`).
        """
        request = _batch_request(
            model,
            series,
            version=version,
            horizon=horizon,
            sequence_length=sequence_length,
            interval_coverages=interval_coverages,
            quantile_levels=quantile_levels,
            start=start,
            frequency=frequency,
            timestamps=timestamps,
            fill=fill,
        )
        return operation_of(self._call(self._stub.StartForecastBatch, request))

    def get_operation(self, name: str) -> Operation:
        """The operation as it stands now.

        NOT_FOUND if no such operation exists (never did, expired, deleted,
        or, with tokens, started by another token).
        """
        request = operations_pb2.GetOperationRequest(name=name)
        return operation_of(self._call_operations(self._operations.GetOperation, request))

    def wait_operation(
        self,
        name: str,
        *,
        timeout_s: float | None = None,
        on_progress: Callable[[Operation], object] | None = None,
        progress_every_s: float = 1.0,
    ) -> Operation:
        """Wait until the operation is done, or `timeout_s` has passed (None: no limit).

        Returns the operation: check `done` (a wait that ran out returns it
        as it stands) and `error`. One WaitOperation waits at most 300 s on
        the gateway, and one whose replica stops answers early; this asks
        again (any replica answers), so the client's per-call timeout never
        cuts a long wait. `on_progress` is called with the operation at once
        and whenever its progress, attempt or `done` changes, looked at every
        `progress_every_s`.
        """
        if progress_every_s <= 0:
            raise ValueError(f"progress_every_s must be > 0, got {progress_every_s}")
        deadline = math.inf if timeout_s is None else time.monotonic() + timeout_s
        longest = MAX_WAIT_S if on_progress is None else min(MAX_WAIT_S, progress_every_s)
        seen: tuple[bool, int, int, int] | None = None
        while True:
            operation = self._wait_once(name, max(0.0, min(longest, deadline - time.monotonic())))
            progress = operation.progress
            now = (operation.done, progress.done, progress.total, operation.attempt)
            if on_progress is not None and now != seen:
                seen = now
                on_progress(operation)
            if operation.done or time.monotonic() >= deadline:
                return operation

    def cancel_operation(self, name: str) -> None:
        """Ask the gateway to cancel the operation.

        A queued one ends at once, a running one soon after, both with error
        CANCELLED; a finished one stays as it is. NOT_FOUND as `get_operation`.
        """
        request = operations_pb2.CancelOperationRequest(name=name)
        self._call_operations(self._operations.CancelOperation, request)

    def delete_operation(self, name: str) -> None:
        """Forget the operation and its result (a running one stops).

        NOT_FOUND as `get_operation`.
        """
        request = operations_pb2.DeleteOperationRequest(name=name)
        self._call_operations(self._operations.DeleteOperation, request)

    def list_operations(self, *, page_size: int = 0) -> Iterator[Operation]:
        """Every operation of the caller (with tokens: of its token), oldest first.

        The pages (`page_size` operations each, 0: the gateway's default of
        50, at most 500) are fetched as the iteration reaches them.
        """
        page_token = ""
        while True:
            request = operations_pb2.ListOperationsRequest(
                page_size=page_size, page_token=page_token
            )
            page = self._call_operations(self._operations.ListOperations, request)
            yield from (operation_of(message) for message in page.operations)
            page_token = page.next_page_token
            if not page_token:
                return

    def backtest_result(self, operation: Operation) -> BacktestReport:
        """The report of a finished StartBacktest operation, as `backtest` returns it.

        Raises the operation's `error` (a ForecastError) if it failed, and
        ValueError if it is not done or not a backtest.
        """
        response = forecast_service_pb2.BacktestResponse.FromString(
            _response_of(operation, BACKTEST)
        )
        return _backtest_report(response)

    def forecast_batch_result(self, operation: Operation) -> list[SeriesOutcome]:
        """The outcomes of a finished StartForecastBatch operation, as `forecast_batch` returns.

        Raises as `backtest_result`.
        """
        response = forecast_service_pb2.ForecastBatchResponse.FromString(
            _response_of(operation, FORECAST_BATCH)
        )
        return _outcomes(response)

    def report_actuals(
        self,
        forecast_id: str,
        actuals: Iterable[float],
        *,
        offset: int = 0,
        start: TimeLike | None = None,
    ) -> ActualsReport:
        """Report observed values for horizon steps `offset`, `offset + 1`, ... of a forecast.

        `start` (instead of `offset`, for a forecast whose request had time)
        is the time of `actuals[0]`: one of the forecast's `timestamps`
        (a time as in `forecast`; naive = UTC). Returns the scores so far
        (the served version's, and any shadow's). NOT_FOUND if the forecast
        id is unknown or expired; INVALID_ARGUMENT if the actuals are empty,
        not finite, or do not fit in the horizon, or `start` is not a
        forecast step.
        """
        request = forecast_service_pb2.ReportActualsRequest(
            forecast_id=forecast_id, actuals=_floats(actuals), offset=offset
        )
        if start is not None:
            request.start.CopyFrom(to_timestamp(start, "start"))
        response = self._call(self._stub.ReportActuals, request)
        return ActualsReport(
            forecast_id=response.forecast_id,
            model=response.model,
            horizon=response.horizon,
            steps_received=response.steps_received,
            scores=tuple(
                VersionScore(
                    version=s.version,
                    role=_enum_label(forecast_pb2.ScoreRole.Name, s.role, "SCORE_ROLE_"),
                    steps_scored=s.steps_scored,
                    mae=s.mae,
                    smape=s.smape,
                    mase=s.mase,
                )
                for s in response.scores
            ),
        )

    def get_experiment(self, model: str, experiment: str = "") -> Experiment:
        """One experiment's A/B results ("" = the model's current experiment).

        NOT_FOUND if the gateway does not serve the model or holds no such experiment.
        """
        request = forecast_service_pb2.GetExperimentRequest(model=model, experiment=experiment)
        response = self._call(self._stub.GetExperiment, request)
        return Experiment(
            model=response.model,
            experiment=response.experiment,
            started_at=_seconds(response, "started_at"),
            forecasts=response.forecasts,
            versions=tuple(_version_experiment(v) for v in response.versions),
            comparisons=tuple(
                VersionComparison(
                    version_a=c.version_a,
                    version_b=c.version_b,
                    metric=c.metric,
                    test=c.test,
                    samples=c.samples,
                    mean_difference=c.mean_difference,
                    ci_low=c.ci_low,
                    ci_high=c.ci_high,
                    p_value=c.p_value,
                    significant=c.significant,
                    verdict=c.verdict,
                    conclusive=c.conclusive,
                    sequential_test=c.sequential_test,
                    sequential_p_value=c.sequential_p_value,
                    cs_low=c.cs_low,
                    cs_high=c.cs_high,
                )
                for c in response.comparisons
            ),
        )

    def list_experiments(self, model: str = "") -> list[ExperimentSummary]:
        """The experiments of a model ("" = every served model), newest first within a model."""
        request = forecast_service_pb2.ListExperimentsRequest(model=model)
        response = self._call(self._stub.ListExperiments, request)
        return [
            ExperimentSummary(
                model=e.model,
                experiment=e.experiment,
                started_at=_seconds(e, "started_at"),
                forecasts=e.forecasts,
                current=e.current,
            )
            for e in response.experiments
        ]

    def list_models(self) -> list[ModelInfo]:
        """List the served models, sorted by name."""
        response = self._call(self._stub.ListModels, forecast_service_pb2.ListModelsRequest())
        return [_model_info(model) for model in response.models]

    def get_model(self, name: str) -> ModelInfo:
        """Describe one model; NOT_FOUND if the gateway does not serve it."""
        request = forecast_service_pb2.GetModelRequest(name=name)
        return _model_info(self._call(self._stub.GetModel, request).model)

    def _call(
        self, method: Callable[..., _Response], request: object, *, timeout_s: float | None = None
    ) -> _Response:
        try:
            return method(request, timeout=timeout_s or self._timeout_s, metadata=self._metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error

    def _wait_once(self, name: str, wait_s: float) -> Operation:
        """One WaitOperation of at most `wait_s`, its deadline past the wait by the client's."""
        timeout = duration_pb2.Duration()
        timeout.FromNanoseconds(round(wait_s * 1e9))
        request = operations_pb2.WaitOperationRequest(name=name, timeout=timeout)
        method = self._operations.WaitOperation
        return operation_of(
            self._call_operations(method, request, timeout_s=wait_s + self._timeout_s)
        )

    def _call_operations(
        self, method: Callable[..., _Response], request: object, *, timeout_s: float | None = None
    ) -> _Response:
        """A google.longrunning.Operations call, retried here on the retry policy's codes.

        gRPC's own retries (the service config) cover forecast.v1.ForecastService
        only; these follow the same policy within the call's deadline.
        """
        deadline = time.monotonic() + (timeout_s or self._timeout_s)
        retry = 0
        while True:
            try:
                return method(
                    request,
                    timeout=max(0.0, deadline - time.monotonic()),
                    metadata=self._metadata,
                )
            except grpc.RpcError as error:
                failure = from_rpc_error(error)
                retry += 1
                pause = self._pause_before(retry, failure, deadline)
                if pause is None:
                    raise failure from error
            time.sleep(pause)

    def _pause_before(self, retry: int, failure: ForecastError, deadline: float) -> float | None:
        """The backoff before retry number `retry`; None when the policy says not to retry."""
        policy = self._retry_policy
        if policy is None or retry >= policy.max_attempts:
            return None
        if failure.code.name not in policy.retryable_codes:
            return None
        pause = policy.backoff_s(retry)
        return pause if time.monotonic() + pause < deadline else None


def _enum_label(name_of: Callable[[_Number], str], number: _Number, prefix: str) -> str:
    """Map e.g. ROUTING_DECISION_PINNED to "pinned"; an unknown number to its digits."""
    try:
        name = name_of(number)
    except ValueError:  # a value added to the contract after these stubs were generated
        return str(number)
    return name.removeprefix(prefix).lower()


def _floats(values: Iterable[float]) -> list[float]:
    return [float(value) for value in values]


def _forecast_request(
    *,
    model: str,
    history: Iterable[float | None],
    version: str = "",
    routing_key: str = "",
    horizon: int = 0,
    sequence_length: int = 0,
    interval_coverages: Iterable[float] = (),
    quantile_levels: Iterable[float] = (),
    start: TimeLike | None = None,
    frequency: str = "",
    timestamps: Iterable[TimeLike] | None = None,
    fill: str | int | None = None,
) -> forecast_service_pb2.ForecastRequest:
    return forecast_service_pb2.ForecastRequest(
        model=model,
        version=version,
        routing_key=routing_key,
        horizon=horizon,
        sequence_length=sequence_length,
        interval_coverages=_floats(interval_coverages),
        quantile_levels=_floats(quantile_levels),
        **series_fields(
            history, start=start, frequency=frequency, timestamps=timestamps, fill=fill
        ),
    )


def _series(
    series_id: str, history: BatchSeries, defaults: SeriesInput
) -> forecast_service_pb2.Series:
    """One Series of a batch: its own time fields (or its DatetimeIndex), else the batch's."""
    given = history if isinstance(history, SeriesInput) else SeriesInput(history)
    start, timestamps = given.start, given.timestamps
    if start is None and timestamps is None and datetime_index(given.history)[0] is None:
        start, timestamps = defaults.start, defaults.timestamps
    fields = series_fields(
        given.history,
        start=start,
        frequency=given.frequency or defaults.frequency,
        timestamps=timestamps,
        fill=given.fill if given.fill is not None else defaults.fill,
    )
    return forecast_service_pb2.Series(id=series_id, routing_key=given.routing_key, **fields)


def _forecast(response: forecast_service_pb2.ForecastResponse | forecast_pb2.Forecast) -> Forecast:
    return Forecast(
        forecast_id=response.forecast_id,
        model=response.model,
        version=response.version,
        values=list(response.values),
        routing_decision=_enum_label(
            forecast_pb2.RoutingDecision.Name, response.routing_decision, "ROUTING_DECISION_"
        ),
        horizon=response.horizon,
        sequence_length=response.sequence_length,
        **_bands(response),
        **_time(response),
    )


class _TimeFields(TypedDict):
    timestamps: tuple[datetime, ...]
    frequency: str
    filled_points: int


def _time(
    message: forecast_service_pb2.ForecastResponse
    | forecast_pb2.Forecast
    | forecast_service_pb2.VersionForecast,
) -> _TimeFields:
    """The forecast's timestamps (UTC datetimes), frequency and filled points."""
    return {
        "timestamps": tuple(from_timestamp(t) for t in message.timestamps),
        "frequency": message.frequency,
        "filled_points": message.filled_points,
    }


class _BandFields(TypedDict):
    intervals: tuple[Interval, ...]
    quantiles: tuple[QuantileForecast, ...]
    uncertainty: Uncertainty | None


def _bands(
    message: forecast_service_pb2.ForecastResponse
    | forecast_pb2.Forecast
    | forecast_service_pb2.VersionForecast,
) -> _BandFields:
    """The intervals, quantiles and uncertainty of any message that returns a forecast."""
    uncertainty = None
    if message.HasField("uncertainty"):
        u = message.uncertainty
        status_name = forecast_pb2.UncertaintyStatus.Name
        uncertainty = Uncertainty(
            status=_enum_label(status_name, u.status, "UNCERTAINTY_STATUS_"),
            method=u.method,
            calibration_scores=list(u.calibration_scores),
            detail=u.detail,
        )
    return {
        "intervals": tuple(
            Interval(i.coverage, list(i.lower), list(i.upper)) for i in message.intervals
        ),
        "quantiles": tuple(QuantileForecast(q.level, list(q.values)) for q in message.quantiles),
        "uncertainty": uncertainty,
    }


def _batch_request(
    model: str,
    series: Mapping[str, BatchSeries] | Iterable[tuple[str, BatchSeries]],
    *,
    version: str,
    horizon: int,
    sequence_length: int,
    interval_coverages: Iterable[float],
    quantile_levels: Iterable[float],
    start: TimeLike | None,
    frequency: str,
    timestamps: Iterable[TimeLike] | None,
    fill: str | int | None,
) -> forecast_service_pb2.ForecastBatchRequest:
    """The request of `forecast_batch` and `start_forecast_batch`."""
    pairs = series.items() if isinstance(series, Mapping) else series
    defaults = SeriesInput((), start, frequency, timestamps, fill)
    return forecast_service_pb2.ForecastBatchRequest(
        model=model,
        version=version,
        horizon=horizon,
        sequence_length=sequence_length,
        interval_coverages=_floats(interval_coverages),
        quantile_levels=_floats(quantile_levels),
        series=[_series(series_id, history, defaults) for series_id, history in pairs],
    )


def _outcomes(response: forecast_service_pb2.ForecastBatchResponse) -> list[SeriesOutcome]:
    return [
        SeriesOutcome(result.id, _forecast(result.forecast), None)
        if result.WhichOneof("outcome") == "forecast"
        else SeriesOutcome(result.id, None, from_proto_error(result.error))
        for result in response.results
    ]


def _backtest_request(
    model: str,
    series: Mapping[str, BatchSeries] | Iterable[tuple[str, BatchSeries]],
    *,
    horizon: int,
    n_windows: int,
    step: int,
    targets: Iterable[BacktestTarget],
    sequence_length: int,
    interval_coverages: Iterable[float],
    quantile_levels: Iterable[float],
    per_window: bool,
    start: TimeLike | None,
    frequency: str,
    timestamps: Iterable[TimeLike] | None,
    fill: str | int | None,
) -> forecast_service_pb2.BacktestRequest:
    """The request of `backtest` and `start_backtest`."""
    pairs = series.items() if isinstance(series, Mapping) else series
    defaults = SeriesInput((), start, frequency, timestamps, fill)
    return forecast_service_pb2.BacktestRequest(
        model=model,
        series=[_series(series_id, history, defaults) for series_id, history in pairs],
        horizon=horizon,
        n_windows=n_windows,
        step=step,
        targets=[_backtest_target(target) for target in targets],
        sequence_length=sequence_length,
        interval_coverages=_floats(interval_coverages),
        quantile_levels=_floats(quantile_levels),
        per_window=per_window,
    )


def _backtest_report(response: forecast_service_pb2.BacktestResponse) -> BacktestReport:
    return BacktestReport(
        model=response.model,
        horizon=response.horizon,
        n_windows=response.n_windows,
        step=response.step,
        scale=response.scale,
        results=tuple(_backtest_result(r) for r in response.results),
        comparisons=tuple(
            BacktestComparison(
                target_a=c.target_a,
                target_b=c.target_b,
                test=c.test,
                windows=c.windows,
                mase_a=c.mase_a,
                mase_b=c.mase_b,
                mean_difference=c.mean_difference,
                statistic=c.statistic,
                p_value=c.p_value,
                lag=c.lag,
                significant=c.significant,
                verdict=c.verdict,
            )
            for c in response.comparisons
        ),
    )


def _response_of(operation: Operation, kind: str) -> bytes:
    """The response bytes of a finished operation of `kind`; its error raised if it failed."""
    if not operation.done:
        raise ValueError(f"operation {operation.name} is not done (wait_operation waits for it)")
    if operation.error is not None:
        raise operation.error
    expected = RESPONSE_TYPES[kind]
    if operation.response_type != expected:
        held = operation.response_type or "no response"
        raise ValueError(f"operation {operation.name} holds {held}, not a {expected}")
    return operation.response


def _backtest_target(target: BacktestTarget) -> forecast_service_pb2.BacktestTarget:
    """A target as the request's: "model:version", "version" (of the request's model), a pair."""
    if isinstance(target, str):
        model, _, version = target.rpartition(":")
        return forecast_service_pb2.BacktestTarget(model=model, version=version)
    if isinstance(target, tuple) and len(target) == 2 and all(isinstance(t, str) for t in target):
        return forecast_service_pb2.BacktestTarget(model=target[0], version=target[1])
    raise TypeError(
        'targets: expected "model:version", "version" or a (model, version) pair of strings, '
        f"got {target!r}"
    )


def _backtest_result(result: forecast_service_pb2.BacktestResult) -> BacktestResult:
    status_name = forecast_pb2.UncertaintyStatus.Name
    return BacktestResult(
        model=result.model,
        version=result.version,
        windows=result.windows,
        mae=result.mae,
        smape=result.smape,
        mase=result.mase,
        rmse=result.rmse,
        steps=tuple(BacktestStep(s.step, s.mae, s.smape, s.mase) for s in result.steps),
        intervals=tuple(
            BacktestInterval(
                coverage=i.coverage,
                observed=i.observed,
                winkler=i.winkler,
                per_step_observed=tuple(i.per_step_observed),
                per_step_winkler=tuple(i.per_step_winkler),
                status=_enum_label(status_name, i.status, "UNCERTAINTY_STATUS_"),
            )
            for i in result.intervals
        ),
        quantiles=tuple(
            BacktestQuantile(level=q.level, pinball=q.pinball, per_step=tuple(q.per_step))
            for q in result.quantiles
        ),
        window_scores=tuple(
            BacktestWindow(
                series_id=w.series_id,
                window=w.window,
                origin=w.origin,
                mae=w.mae,
                smape=w.smape,
                mase=w.mase,
                origin_time=from_timestamp(w.origin_time) if w.HasField("origin_time") else None,
            )
            for w in result.window_scores
        ),
    )


def _version_experiment(version: forecast_service_pb2.VersionExperiment) -> VersionExperiment:
    errors, latency = version.errors, version.latency
    return VersionExperiment(
        version=version.version,
        requests_served=version.requests_served,
        requests_shadowed=version.requests_shadowed,
        actuals_received=version.actuals_received,
        errors=ErrorStats(errors.count, errors.mae_mean, errors.smape_mean, errors.mase_mean),
        latency=LatencyStats(latency.count, latency.p50_ms, latency.p95_ms, latency.p99_ms),
        interval_coverage=tuple(
            IntervalCoverage(
                nominal=c.nominal,
                steps=c.steps,
                coverage=c.coverage,
                coverage_low=c.coverage_low,
                coverage_high=c.coverage_high,
                mean_width=c.mean_width,
                winkler=c.winkler,
                undercovering=c.undercovering,
            )
            for c in version.interval_coverage
        ),
        quantile_losses=tuple(
            QuantileLoss(level=q.level, steps=q.steps, pinball=q.pinball, below=q.below)
            for q in version.quantile_losses
        ),
    )


def _model_info(model: forecast_pb2.Model) -> ModelInfo:
    return ModelInfo(
        name=model.name,
        description=model.description,
        default_version=model.default_version,
        default_horizon=model.default_horizon,
        max_horizon=model.max_horizon,
        versions=tuple(
            ModelVersionInfo(
                version=v.version,
                state=_enum_label(
                    forecast_pb2.ModelVersionState.Name, v.state, "MODEL_VERSION_STATE_"
                ),
                sequence_length=v.sequence_length,
                min_sequence_length=v.min_sequence_length,
                max_sequence_length=v.max_sequence_length,
                description=v.description,
                replicas_ready=v.replicas_ready,
                unavailable_reason=v.unavailable_reason,
                output_kind=v.output_kind,
                quantile_levels=tuple(v.quantile_levels),
                frequencies=tuple(v.frequencies),
            )
            for v in model.versions
        ),
    )


def _seconds(message: Any, field: str) -> float | None:
    """A Timestamp field as Unix seconds, None when unset."""
    if not message.HasField(field):
        return None
    return float(getattr(message, field).ToNanoseconds()) / 1e9
