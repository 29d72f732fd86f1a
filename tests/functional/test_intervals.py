"""Calibrated intervals and quantiles through real gateways and Triton.

Every test here starts gateways of its own (module-scoped, each with a fresh
A/B store), because reported actuals change the calibration pools: the
session's shared gateway never gets actuals from this file.

The online tests mirror the gateway's pools on the client side (the same
held-out file scores, then every reported actual's score, newest `window`
kept) and require the returned bounds to equal split conformal over that
mirror: an end-to-end check of scoring, storage, refresh and bounds, and the
way to know the gateway has refreshed before the next origin's forecast.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from scipy.special import ndtr

from forecast.v1 import forecast_pb2, forecast_service_pb2_grpc
from forecast.v1 import forecast_service_pb2 as pb
from forecast_gateway.core.conformal import bound_table, sorted_pool
from forecast_gateway.numerics import Levels, naive_scale
from tests.conftest import ROOT, GatewayProcess, start_gateway, stop_process
from tests.polling import eventually, eventually_sync
from tools.embedded_triton import TritonProcess
from training.calibrate import Split, scaled_scores
from training.data import load_co2
from training.evaluate import naive_forecast

pytestmark = pytest.mark.functional

FloatArray = npt.NDArray[np.float64]
Stub = forecast_service_pb2_grpc.ForecastServiceStub
T = TypeVar("T")

COVERAGES = (0.8, 0.95)
QUANTILES = (0.1, 0.5, 0.9)
LEVELS = Levels(COVERAGES, QUANTILES)
CALIBRATED = forecast_pb2.UNCERTAINTY_STATUS_CALIBRATED
NOT_CALIBRATED = forecast_pb2.UNCERTAINTY_STATUS_NOT_CALIBRATED
REFRESH_S = 0.02
"""FORECAST_CALIBRATION_REFRESH_S of these gateways: the next origin waits for it."""
FRESH_TIMEOUT_S = 10.0
"""How long a forecast may take to reflect the actuals just reported (a deadline, not a speed)."""
CO2_WINDOW = 256
"""config/gateway.toml's calibration_window: the co2 gateway runs as shipped."""
SHIFT_WINDOW = 50


def gateway_with(
    triton: TritonProcess,
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    calibration_dir: str,
    window: int,
) -> GatewayProcess:
    """A gateway with its own fresh store, default routing only, a fast pool refresh."""
    log_path = tmp_path_factory.mktemp(name) / "gateway.log"
    return start_gateway(
        triton.grpc_url,
        log_path,
        FORECAST_ROUTING_FILE="",
        FORECAST_CALIBRATION_DIR=calibration_dir,
        FORECAST_CALIBRATION_WINDOW=str(window),
        FORECAST_CALIBRATION_REFRESH_S=str(REFRESH_S),
    )


@pytest.fixture(scope="module")
def co2_gateway(
    triton: TritonProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """The shipped calibration files and window, a fresh store."""
    repository = str(ROOT / "model_repository")
    process = gateway_with(triton, tmp_path_factory, "intervals-co2", repository, CO2_WINDOW)
    yield process
    stop_process(process.process)


@pytest.fixture(scope="module")
def cold_gateway(
    triton: TritonProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """No calibration files, a fresh store, a small window: only reported actuals calibrate."""
    process = gateway_with(triton, tmp_path_factory, "intervals-cold", "", SHIFT_WINDOW)
    yield process
    stop_process(process.process)


@pytest.fixture(scope="module")
def co2_stub(co2_gateway: GatewayProcess) -> Iterator[Stub]:
    with grpc.insecure_channel(co2_gateway.target) as channel:
        yield forecast_service_pb2_grpc.ForecastServiceStub(channel)


# -- the client-side mirror of a version's pools -------------------------------------------


class Pools:
    """Per horizon step: held-out scores, then reported ones; the newest `window` count."""

    def __init__(
        self, held_out: Sequence[Sequence[float]] | FloatArray, steps: int, window: int
    ) -> None:
        self.scores = [
            list(held_out[step]) if step < len(held_out) else [] for step in range(steps)
        ]
        self.window = window

    def table(self, levels: Levels) -> FloatArray:
        return bound_table([sorted_pool(s[-self.window :]) for s in self.scores], levels)

    def add(self, step: int, score: float) -> None:
        self.scores[step].append(score)

    def sizes(self) -> list[int]:
        return [min(len(s), self.window) for s in self.scores]


def reply_bounds(forecast: pb.ForecastResponse | forecast_pb2.Forecast) -> FloatArray:
    """The returned bounds as bound_table rows: lower, upper per interval, then quantiles."""
    rows = [row for i in forecast.intervals for row in (i.lower, i.upper)]
    rows += [q.values for q in forecast.quantiles]
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)


def matches(
    forecast: pb.ForecastResponse | forecast_pb2.Forecast,
    pools: Pools,
    scale: float,
    levels: Levels,
) -> bool:
    """Whether the gateway's bounds are split conformal over the mirrored pools."""
    if list(forecast.uncertainty.calibration_scores) != pools.sizes():
        return False
    expected = np.asarray(forecast.values) + scale * pools.table(levels)
    returned = reply_bounds(forecast)
    return returned.shape == expected.shape and bool(
        np.allclose(returned, expected, rtol=1e-12, atol=1e-9)
    )


async def once_fresh(call: Callable[[], Awaitable[T]], fresh: Callable[[T], bool]) -> tuple[T, int]:
    """`call()` again (REFRESH_S apart) until its answer reflects every reported actual.

    The answer and how many stale answers came first (refreshes waited for).
    """
    stale = 0

    async def check() -> tuple[T] | None:
        nonlocal stale
        answer = await call()
        if fresh(answer):
            return (answer,)
        stale += 1
        return None

    found = await eventually(
        check,
        timeout_s=FRESH_TIMEOUT_S,
        interval_s=REFRESH_S,
        message=lambda: f"the gateway's pools never matched the mirror ({stale} tries)",
    )
    assert found is not None
    return found[0], stale


# -- a. co2 held out: coverage online, against a naive forecast calibrated alike -----------


@dataclass(frozen=True)
class Served:
    """A model version under test; its requests read its default window."""

    model: str
    version: str
    window: int

    @property
    def name(self) -> str:
        return f"{self.model} v{self.version}"

    def held_out(self) -> list[list[float]]:
        path = ROOT / "model_repository" / self.model / self.version / "calibration.json"
        scores: list[list[float]] = json.loads(path.read_text())["scores"]
        return scores


LSTM_V2 = Served("lstm_timeseries", "2", 52)
MOVING_AVERAGE_V1 = Served("moving_average", "1", 10)
CO2_SERVED = (LSTM_V2, MOVING_AVERAGE_V1)
CO2_HORIZON = 12
CO2_HISTORY = 64
NOMINAL_TOLERANCE = {0.8: 0.10, 0.95: 0.05}
"""How far pooled coverage on 166 consecutive weekly origins may sit from nominal: whether a
12-step forecast covers is strongly autocorrelated across neighbouring origins, and a moving
block bootstrap (26-week blocks) puts the estimate within about +-0.10 (80%) and +-0.05 (95%)
(docs/models.md; `block_interval` below gives the same width on these runs)."""
QUANTILE_TOLERANCE = 0.10


@dataclass
class Scored:
    """Per origin: whether each interval covered each step, the Winkler scores, quantile hits."""

    covered: dict[float, list[npt.NDArray[np.bool_]]] = field(default_factory=dict)
    winkler: dict[float, list[FloatArray]] = field(default_factory=dict)
    below: dict[float, list[npt.NDArray[np.bool_]]] = field(default_factory=dict)

    def add(self, bounds: FloatArray, levels: Levels, actual: FloatArray, scale: float) -> None:
        """Score bound_table-shaped rows (in series units) against the actuals."""
        for index, coverage in enumerate(levels.coverages):
            lower, upper = bounds[2 * index], bounds[2 * index + 1]
            miss = np.maximum(lower - actual, 0.0) + np.maximum(actual - upper, 0.0)
            winkler = (upper - lower + 2.0 / (1.0 - coverage) * miss) / scale  # scale units
            self.covered.setdefault(coverage, []).append((lower <= actual) & (actual <= upper))
            self.winkler.setdefault(coverage, []).append(winkler)
        for index, level in enumerate(levels.quantiles):
            row = bounds[2 * len(levels.coverages) + index]
            self.below.setdefault(level, []).append(actual <= row)

    def coverage(self, coverage: float) -> float:
        return float(np.mean(self.covered[coverage]))

    def mean_winkler(self, coverage: float) -> float:
        return float(np.mean(self.winkler[coverage]))

    def below_rate(self, level: float) -> float:
        return float(np.mean(self.below[level]))


def block_interval(hits: list[npt.NDArray[np.bool_]], block: int = 26) -> tuple[float, float]:
    """95% moving-block-bootstrap interval of the pooled hit rate (blocks of origins)."""
    per_origin = np.asarray(hits, dtype=np.float64).mean(axis=1)
    rng = np.random.default_rng(0)
    origins, draws = per_origin.size, 2000
    starts = rng.integers(0, origins - block + 1, size=(draws, math.ceil(origins / block)))
    picked = (starts[:, :, None] + np.arange(block)).reshape(draws, -1)[:, :origins]
    low, high = np.percentile(per_origin[picked].mean(axis=1), [2.5, 97.5])
    return float(low), float(high)


@dataclass
class Co2Run:
    """Per version: the model's and the naive forecast's scores; the protocol's counts."""

    model: dict[str, Scored]
    naive: dict[str, Scored]
    origins: int
    reports: int
    refresh_waits: int
    seconds: float

    def summary(self, served: Served) -> str:
        model, naive = self.model[served.name], self.naive[served.name]
        cells = [
            f"{c:g}: coverage {model.coverage(c):.3f} (block bootstrap "
            + "{:.3f}-{:.3f}), Winkler {:.2f} vs naive {:.2f} (naive coverage {:.3f})".format(
                *block_interval(model.covered[c]),
                model.mean_winkler(c),
                naive.mean_winkler(c),
                naive.coverage(c),
            )
            for c in COVERAGES
        ]
        quantiles = ", ".join(f"P(y <= q{q:g}) {model.below_rate(q):.3f}" for q in QUANTILES)
        return (
            f"{served.name} over {self.origins} origins x {CO2_HORIZON} steps "
            f"({self.reports} reports, {self.refresh_waits} refresh waits, "
            f"{self.seconds:.0f} s): " + "; ".join(cells) + f"; {quantiles}"
        )


@dataclass
class Open:
    """A forecast awaiting actuals, and what its scores need."""

    origin: int
    forecast_id: str
    values: FloatArray
    scale: float
    last: float


async def run_co2(target: str) -> Co2Run:
    """Rolling origins over the held-out evaluation weeks, actuals reported as they become known.

    At each evaluation origin o (1997-2000, `training.calibrate.Split`: never
    a calibration week) each version forecasts from the points before o;
    then y[o] is known and reported to every forecast whose horizon covers
    it (origins o - 11 .. o, offset o - origin): no look-ahead. The naive
    baseline (last value) starts from its own scores on the same calibration
    origins, scaled by the same window, and takes the same actuals.
    """
    split = Split.of_co2()
    series = split.series
    origins = [int(o) for o in split.evaluation.origins]
    model = {s.name: Scored() for s in CO2_SERVED}
    naive = {s.name: Scored() for s in CO2_SERVED}
    pools = {s.name: Pools(s.held_out(), CO2_HORIZON, CO2_WINDOW) for s in CO2_SERVED}
    naive_pools = {
        s.name: Pools(
            scaled_scores(split.calibration, naive_forecast, s.window).T, CO2_HORIZON, CO2_WINDOW
        )
        for s in CO2_SERVED
    }
    awaiting: dict[str, list[Open]] = {s.name: [] for s in CO2_SERVED}
    reports = waits = 0
    started = time.perf_counter()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = forecast_service_pb2_grpc.ForecastServiceStub(channel)

        async def forecast(served: Served, origin: int) -> int:
            history = series[origin - CO2_HISTORY : origin]
            scale = naive_scale(history[-served.window :])
            request = pb.ForecastRequest(
                model=served.model,
                version=served.version,
                history=history.tolist(),
                horizon=CO2_HORIZON,
                interval_coverages=COVERAGES,
                quantile_levels=QUANTILES,
            )
            reply, tries = await once_fresh(
                lambda: stub.Forecast(request, timeout=10),
                lambda r: matches(r, pools[served.name], scale, LEVELS),
            )
            assert reply.version == served.version
            assert reply.uncertainty.status == CALIBRATED, reply.uncertainty.detail
            actual = series[origin : origin + CO2_HORIZON]
            model[served.name].add(reply_bounds(reply), LEVELS, actual, scale)
            naive_bounds = history[-1] + scale * naive_pools[served.name].table(Levels(COVERAGES))
            naive[served.name].add(naive_bounds, Levels(COVERAGES), actual, scale)
            values = np.asarray(reply.values)
            awaiting[served.name].append(
                Open(origin, reply.forecast_id, values, scale, float(history[-1]))
            )
            return tries

        async def report(forecast: Open, now: int) -> None:
            await stub.ReportActuals(
                pb.ReportActualsRequest(
                    forecast_id=forecast.forecast_id,
                    actuals=[float(series[now])],
                    offset=now - forecast.origin,
                ),
                timeout=10,
            )

        for origin in origins:
            waits += sum(await asyncio.gather(*(forecast(s, origin) for s in CO2_SERVED)))
            calls = []
            for served in CO2_SERVED:  # y[origin] is known now
                name = served.name
                awaiting[name] = [f for f in awaiting[name] if origin - f.origin < CO2_HORIZON]
                for f in awaiting[name]:
                    step, actual = origin - f.origin, float(series[origin])
                    pools[name].add(step, (actual - f.values[step]) / f.scale)
                    naive_pools[name].add(step, (actual - f.last) / f.scale)
                    calls.append(report(f, origin))
            await asyncio.gather(*calls)
            reports += len(calls)
    return Co2Run(model, naive, len(origins), reports, waits, time.perf_counter() - started)


@pytest.fixture(scope="module")
def co2_run(co2_gateway: GatewayProcess) -> Co2Run:
    return asyncio.run(run_co2(co2_gateway.target))


@pytest.mark.parametrize("served", CO2_SERVED, ids=lambda s: s.name)
@pytest.mark.parametrize("coverage", COVERAGES)
def test_co2_online_intervals_cover_near_nominal(
    co2_run: Co2Run, served: Served, coverage: float
) -> None:
    """Pooled coverage on the held-out weeks, calibration updated online as in production.

    Measured (window 256, the default; 166 origins x 12 steps):
    LSTM v2 0.728 (80%, block bootstrap 0.62-0.82) and 0.906 (95%, 0.85-0.95),
    up from 0.69 / 0.87 with the static calibration offline (docs/models.md):
    still short of nominal (its 1997-98 errors are larger than 1993-96's),
    within the tolerance. moving_average v1 0.820 / 0.958.
    """
    measured = co2_run.model[served.name].coverage(coverage)
    assert abs(measured - coverage) <= NOMINAL_TOLERANCE[coverage], co2_run.summary(served)


@pytest.mark.parametrize("served", CO2_SERVED, ids=lambda s: s.name)
def test_co2_online_quantiles_hold_their_levels(co2_run: Co2Run, served: Served) -> None:
    """P(y <= q) near each level. Measured: LSTM v2 0.109 / 0.538 / 0.833, MA v1 0.112 / 0.548 /
    0.927 for 0.1 / 0.5 / 0.9."""
    scored = co2_run.model[served.name]
    rates = [scored.below_rate(level) for level in QUANTILES]
    assert rates == sorted(rates), co2_run.summary(served)
    for level, rate in zip(QUANTILES, rates, strict=True):
        assert abs(rate - level) <= QUANTILE_TOLERANCE, co2_run.summary(served)


def test_co2_lstm_intervals_beat_the_naive_forecast(co2_run: Co2Run) -> None:
    """Mean Winkler score (scale units), online: LSTM v2 5.62 vs naive 14.64 (80%), 7.59 vs 19.06
    (95%). moving_average v1 does not beat naive (23.2 vs 16.7 / 28.0 vs 21.3), as offline."""
    model, naive = co2_run.model[LSTM_V2.name], co2_run.naive[LSTM_V2.name]
    for coverage in COVERAGES:
        assert model.mean_winkler(coverage) < naive.mean_winkler(coverage), co2_run.summary(LSTM_V2)


# -- b. cold start: no file, no actuals yet -----------------------------------------------

CO2 = load_co2()


def wait_for_scores(
    stub: Stub, request: pb.ForecastRequest, scores: list[int]
) -> pb.ForecastResponse:
    """The first answer whose pools hold `scores` per step (the refresh has run)."""
    last: list[pb.ForecastResponse] = []

    def check() -> pb.ForecastResponse | None:
        reply: pb.ForecastResponse = stub.Forecast(request, timeout=10)
        last[:] = [reply]
        return reply if list(reply.uncertainty.calibration_scores) == scores else None

    answer = eventually_sync(
        check,
        timeout_s=FRESH_TIMEOUT_S,
        interval_s=REFRESH_S,
        message=lambda: f"pools {last[0].uncertainty if last else None} never reached {scores}",
    )
    assert answer is not None
    return answer


def test_cold_start_is_not_calibrated_until_enough_actuals(cold_gateway: GatewayProcess) -> None:
    """lstm_timeseries v1, no calibration file: no range until 9 scores per step (80%)."""
    horizon = 3
    history = CO2[1000:1060]

    def request(coverages: Sequence[float], **fields: object) -> pb.ForecastRequest:
        return pb.ForecastRequest(
            model="lstm_timeseries",
            version="1",
            history=history.tolist(),
            horizon=horizon,
            interval_coverages=coverages,
            **fields,  # type: ignore[arg-type]
        )

    with grpc.insecure_channel(cold_gateway.target) as channel:
        stub = forecast_service_pb2_grpc.ForecastServiceStub(channel)
        cold = stub.Forecast(request(COVERAGES, quantile_levels=[0.5]), timeout=10)
        assert len(cold.values) == horizon  # the point forecast is still served
        assert cold.uncertainty.status == NOT_CALIBRATED
        assert list(cold.intervals) == [] and list(cold.quantiles) == []  # nothing invented
        assert list(cold.uncertainty.calibration_scores) == [0, 0, 0]
        detail = cold.uncertainty.detail
        assert "the 0.8 interval needs 9" in detail and "the 0.95 interval needs 39" in detail
        assert "the 0.5 quantile needs 1" in detail and "step 1 has 0" in detail

        def report_one(start: int) -> None:
            past = stub.Forecast(
                pb.ForecastRequest(
                    model="lstm_timeseries",
                    version="1",
                    history=CO2[start - 20 : start].tolist(),
                    horizon=horizon,
                ),
                timeout=10,
            )
            stub.ReportActuals(
                pb.ReportActualsRequest(
                    forecast_id=past.forecast_id, actuals=CO2[start : start + horizon].tolist()
                ),
                timeout=10,
            )

        for start in range(200, 200 + 8 * horizon, horizon):
            report_one(start)
        eight = wait_for_scores(stub, request([0.8], quantile_levels=[0.5]), [8, 8, 8])
        assert eight.uncertainty.status == NOT_CALIBRATED
        assert list(eight.intervals) == [] and [q.level for q in eight.quantiles] == [0.5]
        assert "the 0.8 interval needs 9 scores per horizon step, step 1 has 8" in (
            eight.uncertainty.detail
        )
        report_one(500)
        nine = wait_for_scores(stub, request([0.8]), [9, 9, 9])
        assert nine.uncertainty.status == CALIBRATED and nine.uncertainty.detail == ""
        [interval] = nine.intervals
        assert interval.coverage == 0.8
        assert all(lo <= hi for lo, hi in zip(interval.lower, interval.upper, strict=True))
        both = stub.Forecast(request(COVERAGES), timeout=10)
        assert both.uncertainty.status == NOT_CALIBRATED
        assert [i.coverage for i in both.intervals] == [0.8]  # what is calibrated is returned
        assert "the 0.95 interval needs 39" in both.uncertainty.detail
        assert "0.8 interval" not in both.uncertainty.detail


# -- c. a shift: the noise doubles, the small window follows --------------------------------

SHIFT_SERIES = 20
"""Series forecast at each time step (one ForecastBatch): 20 actuals per step."""
SHIFT_BEFORE, SHIFT_AFTER = 6, 12
"""Time steps before and after the noise doubles."""
SHIFT_READ = 200
"""sequence_length: the moving average and the scale read 200 points, so the scale lags."""


@dataclass
class Shifted:
    """Per time step and coverage: each interval's probability of holding its actual (known
    from the generating noise), and whether it held it."""

    probability: dict[float, list[list[float]]] = field(default_factory=dict)
    covered: dict[float, list[list[bool]]] = field(default_factory=dict)
    refresh_waits: int = 0

    def add(self, step: int, coverage: float, probability: float, covered: bool) -> None:
        steps = SHIFT_BEFORE + SHIFT_AFTER
        self.probability.setdefault(coverage, [[] for _ in range(steps)])[step].append(probability)
        self.covered.setdefault(coverage, [[] for _ in range(steps)])[step].append(covered)

    def mean_probability(self, coverage: float, steps: range) -> float:
        return float(np.mean([p for s in steps for p in self.probability[coverage][s]]))

    def hit_rate(self, coverage: float, steps: range) -> float:
        return float(np.mean([h for s in steps for h in self.covered[coverage][s]]))


@dataclass(frozen=True)
class NoisySeries:
    """[series, time] values: a level plus white noise whose sd doubles at the shift."""

    values: FloatArray
    level: FloatArray
    sd: FloatArray

    @classmethod
    def draw(cls, seed: int) -> NoisySeries:
        rng = np.random.default_rng(seed)
        length = SHIFT_READ + SHIFT_BEFORE + SHIFT_AFTER
        level = rng.uniform(50.0, 500.0, size=(SHIFT_SERIES, 1))
        doubled = np.where(np.arange(length) < SHIFT_READ + SHIFT_BEFORE, 1.0, 2.0)
        sd = rng.uniform(0.5, 5.0, size=(SHIFT_SERIES, 1)) * doubled
        return cls(level + sd * rng.normal(size=(SHIFT_SERIES, length)), level, sd)

    def probability(self, series: int, now: int, lower: float, upper: float) -> float:
        """P(lower <= y <= upper) for the series' value at `now`."""
        mean, sd = self.level[series, 0], self.sd[series, now]
        return float(ndtr((upper - mean) / sd) - ndtr((lower - mean) / sd))


async def run_shift(target: str, seed: int) -> Shifted:
    """moving_average v1 over 200 points, horizon 1, every series' actual reported each step."""
    data = NoisySeries.draw(seed)
    pools = Pools([], 1, SHIFT_WINDOW)
    result = Shifted()
    levels = Levels(COVERAGES)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = forecast_service_pb2_grpc.ForecastServiceStub(channel)
        for step in range(SHIFT_BEFORE + SHIFT_AFTER):
            now = SHIFT_READ + step
            histories = data.values[:, now - SHIFT_READ : now]
            scales = [naive_scale(h) for h in histories]
            request = pb.ForecastBatchRequest(
                model="moving_average",
                version="1",
                horizon=1,
                sequence_length=SHIFT_READ,
                interval_coverages=COVERAGES,
                series=[pb.Series(id=f"s{i}", history=h.tolist()) for i, h in enumerate(histories)],
            )

            def fresh(reply: pb.ForecastBatchResponse, scales: list[float] = scales) -> bool:
                return all(
                    matches(r.forecast, pools, scale, levels)
                    if r.forecast.uncertainty.status == CALIBRATED
                    else list(r.forecast.uncertainty.calibration_scores) == pools.sizes()
                    for r, scale in zip(reply.results, scales, strict=True)
                )

            reply, waits = await once_fresh(partial(stub.ForecastBatch, request, timeout=10), fresh)
            result.refresh_waits += waits
            for series, (r, scale) in enumerate(zip(reply.results, scales, strict=True)):
                forecast, actual = r.forecast, float(data.values[series, now])
                if forecast.uncertainty.status == CALIBRATED:
                    for interval in forecast.intervals:
                        lower, upper = interval.lower[0], interval.upper[0]
                        probability = data.probability(series, now, lower, upper)
                        result.add(step, interval.coverage, probability, lower <= actual <= upper)
                pools.add(0, (actual - forecast.values[0]) / scale)
                await stub.ReportActuals(
                    pb.ReportActualsRequest(forecast_id=forecast.forecast_id, actuals=[actual]),
                    timeout=10,
                )
    return result


SHIFT_SEED = 0
RECOVERY_ACTUALS = 40
"""Measured: the 80% interval is back within 0.05 of nominal once 40 actuals of the new regime
are in the window of 50 (seeds 0-3 alike); the 95% one after 20 (seeds 0, 1), 40 (2), 80 (3)."""


def test_a_shift_drops_coverage_until_the_window_holds_new_scores(
    cold_gateway: GatewayProcess,
) -> None:
    """The noise of 20 series doubles after 6 steps; calibration_window 50.

    The score divides by the naive MAE of the window the request reads, so a
    shift shows in the scores while that window is mostly older points: the
    moving average reads 200 (its scale grows by ~1/200 per step after the
    shift), and only the calibration window can follow. Coverage is each
    interval's probability of holding its actual, from the known noise (less
    noisy than 20 hits a step). Measured (seed 0), per step of 20 actuals
    after the shift, 80%: 0.45, 0.59, then 0.81, 0.85, 0.80 ...; 95%: 0.60,
    0.93, 0.93 ...; before it 0.81 and 0.96; hits in the first 40 actuals
    after it: 0.48 (80%).
    """
    shifted = asyncio.run(run_shift(cold_gateway.target, SHIFT_SEED))
    total = SHIFT_BEFORE + SHIFT_AFTER
    curves = {
        c: [
            shifted.mean_probability(c, range(s, s + 1)) if shifted.probability[c][s] else math.nan
            for s in range(total)
        ]
        for c in COVERAGES
    }
    report = "; ".join(
        f"{c:g}: " + " ".join(f"{p:.2f}" for p in curve) for c, curve in curves.items()
    )
    full = range(math.ceil(SHIFT_WINDOW / SHIFT_SERIES), SHIFT_BEFORE)  # pools of old scores only
    recovered = SHIFT_BEFORE + RECOVERY_ACTUALS // SHIFT_SERIES
    for coverage in COVERAGES:
        assert abs(shifted.mean_probability(coverage, full) - coverage) <= 0.05, report
        assert curves[coverage][SHIFT_BEFORE] <= coverage - 0.15, report  # the drop
        assert abs(curves[coverage][recovered] - coverage) <= 0.05, report
        after = shifted.mean_probability(coverage, range(recovered, total))
        assert abs(after - coverage) <= 0.05, report
    first = range(SHIFT_BEFORE, SHIFT_BEFORE + 2)
    assert shifted.hit_rate(0.8, first) <= 0.8 - 0.15, report
    assert shifted.hit_rate(0.8, range(recovered, total)) >= 0.8 - 0.05, report


# -- d. every RPC returns them; invalid coverages and levels are named ----------------------


def scaled_offsets(
    forecast: pb.ForecastResponse | forecast_pb2.Forecast, scale: float
) -> FloatArray:
    """(bound - forecast) / scale: the pool's ranked scores, the same for every series."""
    offsets: FloatArray = (reply_bounds(forecast) - np.asarray(forecast.values)) / scale
    return offsets


def unary(stub: Stub, history: FloatArray, version: str, **fields: object) -> pb.ForecastResponse:
    reply: pb.ForecastResponse = stub.Forecast(
        pb.ForecastRequest(
            model="lstm_timeseries",
            version=version,
            history=history.tolist(),
            horizon=6,
            interval_coverages=COVERAGES,
            quantile_levels=QUANTILES,
            **fields,  # type: ignore[arg-type]
        ),
        timeout=10,
    )
    return reply


def assert_well_formed(forecast: pb.ForecastResponse | forecast_pb2.Forecast) -> None:
    assert forecast.uncertainty.status == CALIBRATED, forecast.uncertainty.detail
    assert [i.coverage for i in forecast.intervals] == list(COVERAGES)
    assert [q.level for q in forecast.quantiles] == list(QUANTILES)
    eighty, ninety_five = forecast.intervals
    assert np.all(np.asarray(ninety_five.lower) <= np.asarray(eighty.lower))
    assert np.all(np.asarray(eighty.lower) <= np.asarray(eighty.upper))
    assert np.all(np.asarray(eighty.upper) <= np.asarray(ninety_five.upper))
    quantiles = np.asarray([q.values for q in forecast.quantiles])
    assert np.all(np.diff(quantiles, axis=0) >= 0)


def assert_same_bounds(
    forecast: pb.ForecastResponse | forecast_pb2.Forecast, alone: pb.ForecastResponse
) -> None:
    """The bounds a unary call of the same history gets: the same offsets around the forecast.

    Triton batches calls together, so the LSTM's values may differ in the last FP32 bits.
    """
    np.testing.assert_allclose(forecast.values, alone.values, rtol=1e-6)
    np.testing.assert_allclose(
        scaled_offsets(forecast, 1.0), scaled_offsets(alone, 1.0), rtol=1e-9, atol=1e-9
    )


BATCH_HISTORIES = {
    "co2-1980s": CO2[1500:1560],
    "co2-x10": CO2[1700:1760] * 10.0,
    "co2-1960s-plus-1000": CO2[300:360] + 1000.0,
}


def test_forecast_batch_gives_each_series_its_own_intervals(co2_stub: Stub) -> None:
    reply = co2_stub.ForecastBatch(
        pb.ForecastBatchRequest(
            model="lstm_timeseries",
            version="1",
            horizon=6,
            interval_coverages=COVERAGES,
            quantile_levels=QUANTILES,
            series=[pb.Series(id=k, history=h.tolist()) for k, h in BATCH_HISTORIES.items()],
        ),
        timeout=10,
    )
    offsets = []
    for result, (key, history) in zip(reply.results, BATCH_HISTORIES.items(), strict=True):
        assert result.id == key and result.WhichOneof("outcome") == "forecast"
        forecast = result.forecast
        assert_well_formed(forecast)
        offsets.append(scaled_offsets(forecast, naive_scale(history[-10:])))
        assert_same_bounds(forecast, unary(co2_stub, history, "1"))
    widths = [float(np.ptp(reply_bounds(r.forecast))) for r in reply.results]
    assert len({round(w, 6) for w in widths}) == 3  # each series' own scale
    for other in offsets[1:]:
        np.testing.assert_allclose(other, offsets[0], rtol=1e-9, atol=1e-9)  # one pool


def test_no_levels_no_intervals(co2_stub: Stub) -> None:
    reply = co2_stub.Forecast(
        pb.ForecastRequest(model="lstm_timeseries", version="1", history=CO2[:60].tolist()),
        timeout=10,
    )
    assert list(reply.intervals) == [] and list(reply.quantiles) == []
    assert not reply.HasField("uncertainty")


def test_stream_forecast_returns_intervals_and_errors_per_request(co2_stub: Stub) -> None:
    history = CO2[1800:1860]
    requests = {
        "both": pb.ForecastRequest(
            model="lstm_timeseries",
            version="1",
            history=history.tolist(),
            horizon=6,
            interval_coverages=COVERAGES,
            quantile_levels=QUANTILES,
        ),
        "bad": pb.ForecastRequest(
            model="lstm_timeseries",
            version="1",
            history=history.tolist(),
            interval_coverages=[0.8, 1.5],
        ),
        "quantiles": pb.ForecastRequest(
            model="lstm_timeseries",
            version="1",
            history=history.tolist(),
            horizon=6,
            quantile_levels=[0.9, 0.1],
        ),
    }
    answers = {
        answer.request_id: answer
        for answer in co2_stub.StreamForecast(
            iter(pb.StreamForecastRequest(request_id=k, request=r) for k, r in requests.items()),
            timeout=20,
        )
    }
    assert set(answers) == set(requests)
    both = answers["both"].forecast
    assert_well_formed(both)
    assert_same_bounds(both, unary(co2_stub, history, "1"))
    error = answers["bad"].error
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert [v.field for v in error.field_violations] == ["interval_coverages[1]"]
    quantiles = answers["quantiles"].forecast
    assert list(quantiles.intervals) == []
    assert [q.level for q in quantiles.quantiles] == [0.9, 0.1]  # request order
    assert np.all(np.asarray(quantiles.quantiles[1].values) <= quantiles.quantiles[0].values)


def test_compare_versions_gives_each_version_its_own(co2_stub: Stub) -> None:
    history = CO2[-100:]
    reply = co2_stub.CompareVersions(
        pb.CompareVersionsRequest(
            model="lstm_timeseries",
            versions=["1", "2"],
            history=history.tolist(),
            horizon=6,
            interval_coverages=COVERAGES,
            quantile_levels=QUANTILES,
        ),
        timeout=20,
    )
    offsets = {}
    for forecast in reply.forecasts:
        assert not forecast.HasField("error")
        assert_well_formed(forecast)  # type: ignore[arg-type]
        window = forecast.sequence_length
        assert_same_bounds(forecast, unary(co2_stub, history, forecast.version))  # type: ignore[arg-type]
        offsets[forecast.version] = scaled_offsets(forecast, naive_scale(history[-window:]))  # type: ignore[arg-type]
    assert set(offsets) == {"1", "2"}
    assert not np.allclose(offsets["1"], offsets["2"])  # two pools


def bad_request_fields(error: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status details"
    fields = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            fields += [v.field for v in bad_request.field_violations]
    return fields


INVALID = [
    pytest.param([1.0], [], ["interval_coverages[0]"], id="coverage-1"),
    pytest.param([0.8, 0.0], [], ["interval_coverages[1]"], id="coverage-0"),
    pytest.param([math.nan], [], ["interval_coverages[0]"], id="coverage-nan"),
    pytest.param([0.8, 0.8], [], ["interval_coverages"], id="repeated-coverage"),
    pytest.param([0.1 * i for i in range(1, 10)], [], ["interval_coverages"], id="nine-coverages"),
    pytest.param([], [-0.1], ["quantile_levels[0]"], id="negative-level"),
    pytest.param([], [0.5, 0.5], ["quantile_levels"], id="repeated-level"),
    pytest.param([], [0.05 * i for i in range(1, 18)], ["quantile_levels"], id="seventeen-levels"),
    pytest.param(
        [2.0], [0.1, 1.5], ["interval_coverages[0]", "quantile_levels[1]"], id="coverage-and-level"
    ),
]


@pytest.mark.parametrize(("coverages", "levels", "violated"), INVALID)
def test_invalid_levels_are_named_on_every_rpc(
    co2_stub: Stub, coverages: list[float], levels: list[float], violated: list[str]
) -> None:
    history = CO2[:60].tolist()
    with pytest.raises(grpc.RpcError) as forecast:
        co2_stub.Forecast(
            pb.ForecastRequest(
                model="lstm_timeseries",
                history=history,
                interval_coverages=coverages,
                quantile_levels=levels,
            ),
            timeout=10,
        )
    with pytest.raises(grpc.RpcError) as compare:
        co2_stub.CompareVersions(
            pb.CompareVersionsRequest(
                model="lstm_timeseries",
                history=history,
                interval_coverages=coverages,
                quantile_levels=levels,
            ),
            timeout=10,
        )
    for raised in (forecast, compare):
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert bad_request_fields(raised.value) == violated
    batch = co2_stub.ForecastBatch(  # request-wide fields, answered per series as horizon is
        pb.ForecastBatchRequest(
            model="lstm_timeseries",
            series=[pb.Series(id="a", history=history), pb.Series(id="b", history=history)],
            interval_coverages=coverages,
            quantile_levels=levels,
        ),
        timeout=10,
    )
    for result in batch.results:
        assert result.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert [v.field for v in result.error.field_violations] == violated


def test_the_most_coverages_and_levels_are_accepted(co2_stub: Stub) -> None:
    coverages = [0.1 * i for i in range(1, 9)]
    levels = [0.05 * i for i in range(1, 17)]
    reply = co2_stub.Forecast(
        pb.ForecastRequest(
            model="lstm_timeseries",
            version="1",
            history=CO2[:60].tolist(),
            interval_coverages=coverages,
            quantile_levels=levels,
        ),
        timeout=10,
    )
    assert [i.coverage for i in reply.intervals] == coverages
    assert [q.level for q in reply.quantiles] == levels
