"""The A/B store's record types: what the request path records and what reads return."""

from __future__ import annotations

import enum
import hashlib
import math
import os
import time
import uuid
from dataclasses import dataclass

from forecast_gateway.names import EXPERIMENT_NAME_RULE, is_experiment_name
from forecast_gateway.numerics import FloatArray

DEFAULT_EXPERIMENT = "default"
"""The experiment of forecasts served under no named experiment."""

ARM_SEPARATOR = ":"
"""Between the model and the version of an arm of another model: "seasonal_naive:1"."""


def arm_label(model: str, version: str, own: str = "") -> str:
    """The label an experiment of model `own` keys a version of `model` by.

    A version of the experiment's own model (or `model` "") is its number,
    "2"; a version of another model is "<model>:<version>", "seasonal_naive:1".
    """
    return version if not model or model == own else f"{model}{ARM_SEPARATOR}{version}"


def arm_parts(label: str) -> tuple[str, str]:
    """(model, version) of an arm label; model "" for a version of the experiment's own model."""
    model, separator, version = label.rpartition(ARM_SEPARATOR)
    return (model, version) if separator else ("", label)


def arm_of(model: str, label: str) -> tuple[str, str]:
    """The real (model, version) behind `label` in an experiment of `model`."""
    other, version = arm_parts(label)
    return other or model, version


def new_forecast_id() -> str:
    """A time-ordered UUID (version 7, RFC 9562): 48 bits of Unix milliseconds, 74 random bits.

    The store's keys are forecast ids: ids that grow with time append to the
    B-tree instead of rewriting pages all over it (docs/benchmarks.md), and
    their timestamp tells a replica that an unknown id is still being written.
    """
    random_bits = int.from_bytes(os.urandom(10), "big")
    value = (
        (time.time_ns() // 1_000_000) << 80
        | 0x7 << 76
        | (random_bits >> 68) << 64
        | 0b10 << 62
        | random_bits & ((1 << 62) - 1)
    )
    return str(uuid.UUID(int=value))


def forecast_id_time(forecast_id: str) -> float | None:
    """The Unix time (seconds) a version-7 forecast id was made at; None for other ids."""
    try:
        parsed = uuid.UUID(forecast_id)
    except ValueError:
        return None
    return (parsed.int >> 80) / 1000.0 if parsed.version == 7 else None


class Role(enum.Enum):
    """Whether a prediction was returned to the caller (mirrors forecast.v1.ScoreRole)."""

    SERVED = "served"
    SHADOW = "shadow"


@dataclass(frozen=True)
class Prediction:
    """One version's forecast of a request, in the units of the history.

    `bounds`: the calibrated bounds at the gateway's tracked coverages and
    quantile levels when it was made, in scale units (`Calibration.tracked`),
    so GetExperiment can score them; None when none was calibrated.
    `scale`: the naive MAE of the window this version read (NaN: the
    forecast's, the served version's window).
    `native`: `bounds` are the version's own quantiles (a quantile model's,
    `core.native.tracked_table`), so its reported actuals add CQR scores
    (`ab.pools.add_cqr_scores`); False for calibrated bounds or none.
    """

    version: str
    role: Role
    values: tuple[float, ...]
    latency_ms: float
    bounds: FloatArray | None = None
    scale: float = math.nan
    native: bool = False


@dataclass(frozen=True)
class RecordedForecast:
    """A served forecast, recorded so that actuals reported later can score it.

    `naive_scale` is `scoring.naive_scale` of the request's window;
    `created_at` is wall-clock seconds (`time.time()`), the clock the age
    bound is checked against, also across restarts and replicas.
    `comparable`: the split drew its version among all the split's versions
    (not pinned, not a fallback or default, not restricted to the versions
    that could serve it), so it may enter the two-sample comparison.
    `unit`: the routing key of a sticky draw, "" for a random one: the key,
    not the forecast, is what the split randomised, so the comparison takes
    one value per key (stored as `unit_digest`, never the key itself).
    """

    forecast_id: str
    model: str
    horizon: int
    naive_scale: float
    created_at: float
    served: Prediction
    experiment: str = DEFAULT_EXPERIMENT
    comparable: bool = True
    unit: str = ""
    first_step_ns: int | None = None
    """The time of the first forecast step (ns since the epoch, UTC); None: no time."""
    frequency: str = ""
    """The series' frequency (a `timegrid` alias) when the request had time, else ""."""


def unit_digest(routing_key: str) -> str:
    """The stored name of a routing key's unit: 128 bits of BLAKE2b, hex (no key in the store)."""
    return hashlib.blake2b(routing_key.encode(), digest_size=16).hexdigest()


@dataclass(frozen=True)
class ShadowRecord:
    """A shadow prediction of a recorded forecast, queued for the writer."""

    forecast_id: str
    model: str
    prediction: Prediction
    recorded_at: float
    experiment: str = DEFAULT_EXPERIMENT


Record = RecordedForecast | ShadowRecord


@dataclass(frozen=True)
class VersionScore:
    """One version's accuracy on one forecast (mirrors forecast.v1.VersionScore)."""

    version: str
    role: Role
    steps_scored: int
    mae: float
    smape: float
    mase: float


@dataclass(frozen=True)
class ActualsReport:
    """What has been scored for a forecast so far; scores: served first, then shadows."""

    forecast_id: str
    model: str
    horizon: int
    steps_received: int
    scores: list[VersionScore]


@dataclass(frozen=True)
class ErrorStats:
    """Means over a version's scored forecasts; NaN when there is nothing to average.

    `mase_mean` leaves out forecasts whose MASE is undefined (constant window).
    """

    count: int
    mae_mean: float
    smape_mean: float
    mase_mean: float


NO_ERRORS = ErrorStats(count=0, mae_mean=math.nan, smape_mean=math.nan, mase_mean=math.nan)


@dataclass(frozen=True)
class LatencyStats:
    """Latency percentiles in ms over a version's recorded predictions (NaN when none)."""

    count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float


NO_LATENCY = LatencyStats(count=0, p50_ms=math.nan, p95_ms=math.nan, p99_ms=math.nan)


@dataclass(frozen=True)
class IntervalStats:
    """How one version's intervals at one nominal coverage held.

    Mirrors forecast.v1.IntervalCoverage. Over the scored horizon steps (an
    actual and a calibrated interval), in scale units; `coverage_low` and
    `coverage_high` bound the Wilson 95% score interval of `coverage`,
    counting steps as independent.
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
class QuantileStats:
    """How one version's quantiles at one level held (mirrors forecast.v1.QuantileLoss)."""

    level: float
    steps: int
    pinball: float
    below: float


@dataclass(frozen=True)
class VersionSummary:
    """One version's traffic, accuracy and latency (mirrors forecast.v1.VersionExperiment).

    `intervals` and `quantiles`: one entry per tracked coverage (level) with
    scored steps, in increasing coverage (level).
    """

    version: str
    requests_served: int
    requests_shadowed: int
    actuals_received: int
    errors: ErrorStats
    latency: LatencyStats
    intervals: tuple[IntervalStats, ...] = ()
    quantiles: tuple[QuantileStats, ...] = ()
    model: str = ""
    """The model whose version this is: the experiment's own, or another one's for an arm
    labelled "<model>:<version>" (`version` is then that label)."""


@dataclass(frozen=True)
class VersionComparison:
    """`scoring.Comparison` of two versions' MASE (mirrors forecast.v1.VersionComparison)."""

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
    model_a: str = ""
    model_b: str = ""
    """The models of `version_a` and `version_b` (`VersionSummary.model`)."""


@dataclass(frozen=True)
class ExperimentReport:
    """One experiment's A/B results: versions in version order, a comparison per scored pair."""

    model: str
    versions: list[VersionSummary]
    comparisons: list[VersionComparison]
    experiment: str = DEFAULT_EXPERIMENT
    started_at: float | None = None
    forecasts: int = 0


@dataclass(frozen=True)
class ExperimentInfo:
    """An experiment: when its first forecast came (None: none yet) and how many it has."""

    model: str
    experiment: str
    started_at: float | None
    forecasts: int


def version_key(version: str) -> tuple[int, int, str]:
    """Numeric versions in numeric order, then any others (arms of other models) by name."""
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


def check_prediction(prediction: Prediction, role: Role) -> None:
    """Raise ValueError for a malformed prediction (a caller bug, caught before queueing)."""
    if prediction.role is not role:
        raise ValueError(f"expected a prediction with role {role.name}, got {prediction.role.name}")
    if not (math.isfinite(prediction.latency_ms) and prediction.latency_ms >= 0):
        raise ValueError(f"latency_ms must be finite and >= 0, got {prediction.latency_ms}")


def check_experiment(name: str) -> None:
    """Raise ValueError unless `name` is a valid experiment name."""
    if not is_experiment_name(name):
        raise ValueError(f"experiment name {name[:80]!r} must be {EXPERIMENT_NAME_RULE}")


def check_forecast(forecast: RecordedForecast) -> None:
    """Raise ValueError for a malformed served record, so a bad row never fails a batch."""
    check_prediction(forecast.served, Role.SERVED)
    if forecast.horizon < 1 or len(forecast.served.values) != forecast.horizon:
        raise ValueError(
            f"{len(forecast.served.values)} values for a horizon of {forecast.horizon}"
        )
    if not (math.isfinite(forecast.naive_scale) and forecast.naive_scale >= 0):
        raise ValueError(f"naive_scale must be finite and >= 0, got {forecast.naive_scale}")
    check_experiment(forecast.experiment)


@dataclass(frozen=True)
class Bounds:
    """How much the store keeps.

    At most `max_forecasts`, none older than `max_age_s`, and the most recent
    `calibration_window` calibration scores per (model, version, step).
    """

    max_forecasts: int
    max_age_s: float
    calibration_window: int = 256

    def __post_init__(self) -> None:
        if self.max_forecasts <= 0 or self.max_age_s <= 0 or self.calibration_window <= 0:
            raise ValueError("max_forecasts, max_age_s and calibration_window must be > 0")
