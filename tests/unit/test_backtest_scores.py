"""backtest.scores: one target's errors over its windows, against hand and direct computations."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from forecast_gateway.ab.scoring import score
from forecast_gateway.backtest.scores import (
    IntervalScore,
    QuantileScore,
    StepScore,
    TargetScores,
    TargetWindows,
    WindowScore,
    score_target,
    seasonal_naive_scale,
    window_losses,
)
from forecast_gateway.numerics import FloatArray, naive_scale

NAN = math.nan


@pytest.fixture(autouse=True)
def _no_warnings() -> Iterator[None]:
    """Scoring must not warn (empty means, overflow, 0/0): every undefined value is handled."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def _same(a: float, b: float, rel: float = 1e-12) -> bool:
    """Equal within `rel`, NaN equal to NaN."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == pytest.approx(b, rel=rel, abs=1e-300)


def _all_floats(scores: TargetScores) -> list[float]:
    values = [scores.mae, scores.smape, scores.mase, scores.rmse]
    for s in scores.per_step:
        values += [s.mae, s.smape, s.mase]
    for w in scores.per_window:
        values += [w.mae, w.smape, w.mase]
    for i in scores.intervals:
        values += [i.observed, i.winkler, *i.per_step_observed, *i.per_step_winkler]
    for q in scores.quantiles:
        values += [q.pinball, *q.per_step]
    return values


# -- a case computed by hand ----------------------------------------------------------------

ACTUALS = np.array([[1.0, 2.0, NAN], [3.0, 4.0, 5.0]])
POINT = np.array([[1.5, 2.0, 3.0], [2.0, 4.0, 7.0]])
HAND = TargetWindows(
    actuals=ACTUALS,
    point=POINT,
    scales=np.array([0.5, 0.0]),  # the second window has no scale
    intervals={0.8: (POINT - 1.0, POINT + 1.0)},
    quantiles={0.1: POINT - 1.0},
)


def test_hand_computed_point_scores() -> None:
    # Scored cells (window 0, step 3 has no actual): |e| = 0.5, 0 | 1, 0, 2.
    result = score_target(HAND)
    assert result.windows == 2
    assert result.mae == pytest.approx(3.5 / 5)
    assert result.rmse == pytest.approx(math.sqrt((0.25 + 1.0 + 4.0) / 5))
    # sMAPE ratios 2|e| / (|f| + |a|): 0.4, 0 | 0.4, 0, 4/12.
    assert result.smape == pytest.approx(100.0 * (0.4 + 0.4 + 1.0 / 3.0) / 5)
    # Only window 0 has a scale: its MAE 0.25 over 0.5.
    assert result.mase == pytest.approx(0.5)
    first, second = result.per_window
    assert isinstance(first, WindowScore)
    assert (first.window, first.mae, first.mase) == (0, 0.25, 0.5)
    assert first.smape == pytest.approx(20.0)
    assert (second.window, second.mae) == (1, 1.0)
    assert second.smape == pytest.approx(100.0 * (0.4 + 1.0 / 3.0) / 3)
    assert math.isnan(second.mase)
    steps = result.per_step
    assert [s.step for s in steps] == [1, 2, 3]
    assert [s.mae for s in steps] == pytest.approx([0.75, 0.0, 2.0])
    assert [s.smape for s in steps] == pytest.approx([40.0, 0.0, 100.0 / 3.0])
    # Step MASE: |e| / scale over the windows with a scale (window 0), none at step 3.
    assert steps[0].mase == pytest.approx(1.0)
    assert steps[1].mase == 0.0
    assert math.isnan(steps[2].mase)


def test_hand_computed_interval_and_quantile() -> None:
    result = score_target(HAND)
    (interval,) = result.intervals
    assert isinstance(interval, IntervalScore)
    assert interval.coverage == 0.8
    # Inside: 1 in [0.5, 2.5], 2 in [1, 3], 3 in [1, 3], 4 in [3, 5]; 5 not in [6, 8].
    assert interval.observed == pytest.approx(0.8)
    # Width 2 everywhere; the miss adds 2 / 0.2 * (6 - 5) = 10.
    assert interval.winkler == pytest.approx((4 * 2.0 + 12.0) / 5)
    assert interval.per_step_observed == pytest.approx((1.0, 1.0, 0.0))
    assert interval.per_step_winkler == pytest.approx((2.0, 2.0, 12.0))
    (quantile,) = result.quantiles
    assert isinstance(quantile, QuantileScore)
    # y - q = 0.5, 1 | 2, 1, -1: losses 0.05, 0.1 | 0.2, 0.1, 0.9.
    assert quantile.level == 0.1
    assert quantile.pinball == pytest.approx((0.05 + 0.1 + 0.2 + 0.1 + 0.9) / 5)
    assert quantile.per_step == pytest.approx((0.125, 0.1, 0.9))


def test_hand_computed_window_losses() -> None:
    losses = window_losses(HAND)
    assert losses.shape == (2,)
    assert losses[0] == pytest.approx(0.5)
    assert math.isnan(losses[1])  # no scale: NaN, not the unscaled MAE


def test_intervals_and_quantiles_keep_their_order() -> None:
    windows = TargetWindows(
        ACTUALS,
        POINT,
        np.ones(2),
        intervals={0.95: (POINT - 2.0, POINT + 2.0), 0.5: (POINT - 0.5, POINT + 0.5)},
        quantiles={0.9: POINT + 1.0, 0.1: POINT - 1.0, 0.5: POINT},
    )
    result = score_target(windows)
    assert [i.coverage for i in result.intervals] == [0.95, 0.5]
    assert [q.level for q in result.quantiles] == [0.9, 0.1, 0.5]


# -- against direct computations ------------------------------------------------------------


def _random_windows(seed: int, n_windows: int = 7, horizon: int = 5) -> TargetWindows:
    rng = np.random.default_rng(seed)
    actuals = rng.normal(10.0, 3.0, (n_windows, horizon))
    actuals[rng.random(actuals.shape) < 0.15] = NAN
    point = actuals + rng.normal(0.0, 2.0, actuals.shape)
    point[np.isnan(point)] = rng.normal(10.0, 3.0)
    spread = rng.uniform(0.5, 3.0, actuals.shape)
    scales = rng.uniform(0.5, 2.0, n_windows)
    scales[0] = 0.0
    return TargetWindows(
        actuals,
        point,
        scales,
        intervals={0.8: (point - spread, point + spread), 0.5: (point - spread / 3, point)},
        quantiles={0.1: point - spread, 0.5: point, 0.975: point + 2 * spread},
    )


@pytest.mark.parametrize("seed", range(5))
def test_point_scores_match_ab_scoring_per_window(seed: int) -> None:
    windows = _random_windows(seed)
    result = score_target(windows)
    for w, row in enumerate(result.per_window):
        expected = score(windows.point[w], windows.actuals[w], float(windows.scales[w]))
        assert row.window == w
        assert _same(row.mae, expected.mae)
        assert _same(row.smape, expected.smape)
        assert _same(row.mase, expected.mase)
    assert np.array_equal(
        window_losses(windows), [w.mase for w in result.per_window], equal_nan=True
    )


@pytest.mark.parametrize("seed", range(5))
def test_point_scores_match_direct_formulas(seed: int) -> None:
    windows = _random_windows(seed)
    a, f, scales = windows.actuals, windows.point, windows.scales
    e = np.abs(f - a)
    result = score_target(windows)
    assert result.mae == pytest.approx(np.nanmean(e), rel=1e-12)
    assert result.rmse == pytest.approx(math.sqrt(np.nanmean(e**2)), rel=1e-12)
    assert result.smape == pytest.approx(100 * np.nanmean(2 * e / (np.abs(f) + np.abs(a))))
    window_mase = [np.nanmean(e[w]) / scales[w] for w in range(len(scales)) if scales[w] > 0]
    assert result.mase == pytest.approx(np.mean(window_mase), rel=1e-12)
    for step in result.per_step:
        column = e[:, step.step - 1]
        assert step.mae == pytest.approx(np.nanmean(column), rel=1e-12)
        ratios = [column[w] / scales[w] for w in range(len(scales)) if scales[w] > 0]
        assert step.mase == pytest.approx(np.nanmean(ratios), rel=1e-12)


def _winkler(lower: float, upper: float, y: float, alpha: float) -> float:
    """The Winkler score as FPP3 5.9 writes it, case by case."""
    if y < lower:
        return (upper - lower) + 2 / alpha * (lower - y)
    if y > upper:
        return (upper - lower) + 2 / alpha * (y - upper)
    return upper - lower


def _pinball(q: float, y: float, tau: float) -> float:
    """The pinball loss written with its two cases."""
    return tau * (y - q) if y >= q else (1 - tau) * (q - y)


@pytest.mark.parametrize("seed", range(5))
def test_winkler_and_coverage_match_the_definition(seed: int) -> None:
    windows = _random_windows(seed)
    a = windows.actuals
    for interval in score_target(windows).intervals:
        lower, upper = windows.intervals[interval.coverage]
        alpha = 1 - interval.coverage
        cells = [(w, s) for w in range(a.shape[0]) for s in range(a.shape[1]) if a[w, s] == a[w, s]]
        scores = [_winkler(lower[w, s], upper[w, s], a[w, s], alpha) for w, s in cells]
        hits = [lower[w, s] <= a[w, s] <= upper[w, s] for w, s in cells]
        assert interval.winkler == pytest.approx(sum(scores) / len(scores), rel=1e-12)
        assert interval.observed == pytest.approx(sum(hits) / len(hits), rel=1e-12)
        for s in range(a.shape[1]):
            column = [(w, t) for w, t in cells if t == s]
            expected = [_winkler(lower[w, s], upper[w, s], a[w, s], alpha) for w, _ in column]
            assert interval.per_step_winkler[s] == pytest.approx(np.mean(expected), rel=1e-12)
            inside = [lower[w, s] <= a[w, s] <= upper[w, s] for w, _ in column]
            assert interval.per_step_observed[s] == pytest.approx(np.mean(inside), rel=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_pinball_matches_the_definition(seed: int) -> None:
    windows = _random_windows(seed)
    a = windows.actuals
    for quantile in score_target(windows).quantiles:
        q = windows.quantiles[quantile.level]
        losses = [
            _pinball(q[w, s], a[w, s], quantile.level)
            for w in range(a.shape[0])
            for s in range(a.shape[1])
            if not math.isnan(a[w, s])
        ]
        assert quantile.pinball == pytest.approx(np.mean(losses), rel=1e-12)
        for s in range(a.shape[1]):
            column = [_pinball(q[w, s], a[w, s], quantile.level) for w in range(a.shape[0])]
            assert quantile.per_step[s] == pytest.approx(np.nanmean(column), rel=1e-12)


def test_median_pinball_is_half_the_mae() -> None:
    windows = _random_windows(11)
    result = score_target(TargetWindows(*_core(windows), quantiles={0.5: windows.point}))
    assert result.quantiles[0].pinball == pytest.approx(result.mae / 2, rel=1e-12)


def _core(windows: TargetWindows) -> tuple[FloatArray, FloatArray, FloatArray]:
    return windows.actuals, windows.point, windows.scales


# -- undefined values -----------------------------------------------------------------------


def test_missing_actuals_are_skipped_everywhere() -> None:
    actuals = np.array([[NAN, 2.0], [NAN, 4.0], [NAN, NAN]])
    point = np.array([[1e9, 3.0], [-1e9, 4.0], [7.0, 8.0]])
    result = score_target(
        TargetWindows(
            actuals,
            point,
            np.ones(3),
            intervals={0.9: (point - 1.0, point + 1.0)},
            quantiles={0.5: point},
        )
    )
    assert result.mae == pytest.approx(0.5)
    assert result.mase == pytest.approx(0.5)  # windows 0 and 1; window 2 has no actual
    assert math.isnan(result.per_step[0].mae)
    assert math.isnan(result.per_step[0].mase)
    assert math.isnan(result.per_window[2].mae)
    assert math.isnan(result.per_window[2].mase)
    assert math.isnan(result.intervals[0].per_step_winkler[0])
    assert math.isnan(result.intervals[0].per_step_observed[0])
    assert result.intervals[0].observed == 1.0
    assert math.isnan(result.quantiles[0].per_step[0])
    losses = window_losses(TargetWindows(actuals, point, np.ones(3)))
    assert losses[:2] == pytest.approx([1.0, 0.0])
    assert math.isnan(losses[2])


def test_nan_forecast_is_not_hidden() -> None:
    actuals = np.array([[1.0, 2.0], [3.0, 4.0]])
    point = np.array([[1.0, NAN], [3.0, 5.0]])
    result = score_target(TargetWindows(actuals, point, np.ones(2)))
    for value in (result.mae, result.smape, result.mase, result.rmse):
        assert math.isnan(value)
    assert math.isnan(result.per_window[0].mase)
    assert result.per_window[1].mase == 0.5
    assert math.isnan(result.per_step[1].mae)
    assert result.per_step[0].mae == 0.0
    losses = window_losses(TargetWindows(actuals, point, np.ones(2)))
    assert math.isnan(losses[0]) and losses[1] == 0.5


def test_interval_and_quantile_cells_need_finite_bounds() -> None:
    actuals = np.array([[1.0, 2.0]])
    lower, upper = np.array([[0.0, -np.inf]]), np.array([[2.0, 3.0]])
    result = score_target(
        TargetWindows(
            actuals,
            actuals,
            np.ones(1),
            intervals={0.5: (lower, upper)},
            quantiles={0.9: np.array([[NAN, 2.5]])},
        )
    )
    assert result.intervals[0].winkler == 2.0
    assert result.intervals[0].per_step_observed[0] == 1.0
    assert math.isnan(result.intervals[0].per_step_observed[1])
    assert result.quantiles[0].pinball == pytest.approx(0.1 * 0.5)


@pytest.mark.parametrize("scale", [0.0, NAN, -1.0, math.inf])
def test_undefined_scale_leaves_mase_out(scale: float) -> None:
    actuals = np.array([[1.0, 2.0], [3.0, 4.0]])
    point = actuals + 1.0
    result = score_target(TargetWindows(actuals, point, np.array([scale, 2.0])))
    assert result.mase == 0.5
    assert result.mae == 1.0  # MAE and sMAPE still count the window
    assert math.isnan(result.per_window[0].mase)
    only_undefined = score_target(TargetWindows(actuals, point, np.array([scale, scale])))
    assert math.isnan(only_undefined.mase)
    assert all(math.isnan(s.mase) for s in only_undefined.per_step)


def test_zero_over_zero_smape_counts_as_zero() -> None:
    result = score_target(TargetWindows(np.zeros((2, 2)), np.zeros((2, 2)), np.ones(2)))
    assert (result.mae, result.smape, result.mase, result.rmse) == (0.0, 0.0, 0.0, 0.0)


def test_no_windows() -> None:
    result = score_target(TargetWindows(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0)))
    assert result.windows == 0
    assert result.per_window == ()
    assert len(result.per_step) == 3
    assert all(math.isnan(v) for v in _all_floats(result))
    assert window_losses(TargetWindows(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0))).size == 0


def test_overflow_is_nan_not_inf() -> None:
    big = np.finfo(np.float64).max
    actuals = np.array([[big, 1.0], [-big, 2.0]])
    point = np.array([[-big, 1.0], [big, 2.0]])
    result = score_target(
        TargetWindows(
            actuals,
            point,
            np.array([1.0, 1e-300]),
            intervals={0.8: (point - 1.0, point + 1.0)},
            quantiles={0.3: point},
        )
    )
    values = _all_floats(result)
    assert not any(math.isinf(v) for v in values)
    assert math.isnan(result.mae) and math.isnan(result.rmse) and math.isnan(result.mase)
    assert result.per_step[1].mae == 0.0
    assert math.isnan(result.intervals[0].winkler)
    assert math.isnan(result.quantiles[0].pinball)
    # A tiny scale overflows the ratio: NaN, not inf.
    tiny = TargetWindows(np.array([[1e10]]), np.array([[0.0]]), np.array([1e-300]))
    assert math.isnan(window_losses(tiny)[0])
    assert math.isnan(score_target(tiny).mase)


def test_rmse_does_not_overflow_where_the_errors_do_not() -> None:
    actuals = np.array([[1e200, -1e200]])
    result = score_target(TargetWindows(actuals, np.zeros((1, 2)), np.ones(1)))
    assert result.rmse == pytest.approx(1e200, rel=1e-14)
    assert result.mae == pytest.approx(1e200, rel=1e-14)


def test_shapes_and_levels_are_checked() -> None:
    good = np.zeros((2, 3))
    with pytest.raises(ValueError, match="point"):
        score_target(TargetWindows(good, np.zeros((2, 2)), np.ones(2)))
    with pytest.raises(ValueError, match="scales"):
        score_target(TargetWindows(good, good, np.ones(3)))
    with pytest.raises(ValueError, match="actuals"):
        window_losses(TargetWindows(np.zeros(3), np.zeros(3), np.ones(1)))
    with pytest.raises(ValueError, match="upper bound"):
        score_target(TargetWindows(good, good, np.ones(2), intervals={0.8: (good, good[:1])}))
    with pytest.raises(ValueError, match="coverage"):
        score_target(TargetWindows(good, good, np.ones(2), intervals={1.0: (good, good)}))
    with pytest.raises(ValueError, match="quantile level"):
        score_target(TargetWindows(good, good, np.ones(2), quantiles={0.0: good}))


# -- seasonal_naive_scale -------------------------------------------------------------------


def test_seasonal_naive_scale_by_hand() -> None:
    history = [1.0, 2.0, 4.0, 8.0, 3.0]
    assert seasonal_naive_scale(history, 1) == pytest.approx((1 + 2 + 4 + 5) / 4)
    assert seasonal_naive_scale(history, 2) == pytest.approx((3 + 6 + 1) / 3)
    assert seasonal_naive_scale(history, 4) == pytest.approx(2.0)
    # At most `season` points: the naive (season 1) scale.
    assert seasonal_naive_scale(history, 5) == seasonal_naive_scale(history, 1)
    assert seasonal_naive_scale(history, 12) == seasonal_naive_scale(history, 1)


def test_seasonal_naive_scale_matches_numpy() -> None:
    rng = np.random.default_rng(3)
    history = rng.normal(100.0, 10.0, 60)
    for season in (1, 7, 12, 24):
        expected = np.mean(np.abs(history[season:] - history[:-season]))
        assert seasonal_naive_scale(history, season) == pytest.approx(expected, rel=1e-13)


@pytest.mark.parametrize(
    "history",
    [[], [5.0], [3.0, 3.0, 3.0, 3.0], [1e6, 1e6 + 1e-6, 1e6, 1e6 + 1e-6], [1.0, NAN, 2.0, 3.0]],
)
def test_seasonal_naive_scale_undefined_is_zero(history: list[float]) -> None:
    assert seasonal_naive_scale(history, 2) == 0.0
    assert seasonal_naive_scale(history, 1) == 0.0


def test_seasonal_repeats_have_zero_seasonal_scale() -> None:
    # A series that repeats its season exactly has nothing for the seasonal naive to miss.
    assert seasonal_naive_scale([1.0, 5.0, 2.0] * 4, 3) == 0.0
    assert seasonal_naive_scale([1.0, 5.0, 2.0] * 4, 1) > 0


@pytest.mark.parametrize("season", [0, -1, 1.5, True])
def test_seasonal_naive_scale_rejects_bad_seasons(season: int) -> None:
    with pytest.raises(ValueError, match="season"):
        seasonal_naive_scale([1.0, 2.0, 3.0], season)


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.float64,
        st.integers(0, 30),
        elements=st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False),
    )
)
def test_season_one_is_exactly_naive_scale(history: FloatArray) -> None:
    assert seasonal_naive_scale(history, 1) == naive_scale(history)


# -- properties -----------------------------------------------------------------------------

cells = st.floats(-1e4, 1e4, allow_nan=False, allow_subnormal=False)


@st.composite
def target_windows(draw: st.DrawFn) -> TargetWindows:
    shape = (draw(st.integers(1, 5)), draw(st.integers(1, 4)))
    actuals = draw(hnp.arrays(np.float64, shape, elements=cells | st.just(NAN)))
    point = draw(hnp.arrays(np.float64, shape, elements=cells))
    spread = draw(hnp.arrays(np.float64, shape, elements=st.floats(0.0, 1e3)))
    # No tiny scales: an overflowing ratio is NaN (tested above), not what this checks.
    scale = st.just(0.0) | st.floats(1e-3, 1e3)
    scales = draw(hnp.arrays(np.float64, shape[:1], elements=scale))
    level = draw(st.floats(0.01, 0.99))
    return TargetWindows(
        actuals,
        point,
        scales,
        intervals={level: (point - spread, point + spread)},
        quantiles={level: point - spread},
    )


@settings(max_examples=60, deadline=None)
@given(target_windows())
def test_properties(windows: TargetWindows) -> None:
    result = score_target(windows)
    assert not any(math.isinf(v) for v in _all_floats(result))
    scored = ~np.isnan(windows.actuals)
    if not scored.any():
        assert math.isnan(result.mae)
        return
    assert 0.0 <= result.mae <= result.rmse * (1 + 1e-12)
    assert 0.0 <= result.smape <= 200.0 * (1 + 1e-12)
    for row in result.per_window:
        expected = score(windows.point[row.window], windows.actuals[row.window], 1.0)
        assert _same(row.mae, expected.mae) and _same(row.smape, expected.smape)
    (interval,) = result.intervals
    lower, upper = next(iter(windows.intervals.values()))
    assert 0.0 <= interval.observed <= 1.0
    width = float(np.mean((upper - lower)[scored]))
    assert interval.winkler >= width * (1 - 1e-12)
    (quantile,) = result.quantiles
    assert quantile.pinball >= 0.0
    # MASE is the mean of the defined window losses.
    losses = window_losses(windows)
    defined = losses[~np.isnan(losses)]
    if defined.size:
        assert _same(result.mase, float(np.mean(defined)), rel=1e-9)
    else:
        assert math.isnan(result.mase)


def test_step_scores_are_numbered_from_one() -> None:
    result = score_target(_random_windows(1, horizon=4))
    assert [s.step for s in result.per_step] == [1, 2, 3, 4]
    assert all(isinstance(s, StepScore) for s in result.per_step)
