"""Run a backtest: every window of every target through the core's plan and execute stages.

Each window is a pinned forecast of the history before its origin, planned
and executed exactly as a live one (validation, eligibility, normalization,
the backend); a target's windows go to the executor together, so windows of
one shape become multi-row backend requests chunked to the model's
max_batch_size. The record stage is never called: no experiment counts,
no calibration pools, no shadows.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from forecast_gateway.backtest.comparison import diebold_mariano, verdict
from forecast_gateway.backtest.results import (
    BacktestQuery,
    BacktestReport,
    Comparison,
    Target,
    TargetResult,
    Window,
)
from forecast_gateway.backtest.scores import (
    TargetWindows,
    score_target,
    seasonal_naive_scale,
    window_losses,
)
from forecast_gateway.backtest.windows import (
    MAX_TARGETS,
    Layout,
    layout_violations,
    short_series,
)
from forecast_gateway.core.calibration import Status
from forecast_gateway.core.catalog import ModelCatalog
from forecast_gateway.core.contract import season_length
from forecast_gateway.core.execute import Executor
from forecast_gateway.core.forecaster import Forecaster
from forecast_gateway.core.plan import Planner
from forecast_gateway.core.results import ForecastResult, Plan
from forecast_gateway.core.timeline import TimeInput
from forecast_gateway.core.validation import ForecastQuery, batch_violations, prepare_query
from forecast_gateway.errors import (
    FieldViolation,
    GatewayError,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from forecast_gateway.numerics import FloatArray, Levels

CHUNK_WINDOWS = 1024
"""Windows of one target sent to the executor at once (several backend requests each); an
operation's progress moves by chunks."""


@dataclass(frozen=True)
class _Series:
    """A series on its grid, ready to be cut into windows."""

    id: str
    query: ForecastQuery
    season: int


class Backtester:
    """Backtests targets with the core's planner and executor (never its recorder)."""

    def __init__(
        self,
        catalog: ModelCatalog,
        planner: Planner,
        executor: Executor,
        max_history_length: int,
        max_series: int,
    ) -> None:
        self.catalog = catalog
        self.planner = planner
        self.executor = executor
        self.max_history_length = max_history_length
        self.max_series = max_series

    @classmethod
    def of(cls, forecaster: Forecaster, max_series: int) -> Backtester:
        """A backtester on a forecaster's catalog, planner and executor."""
        planner = forecaster.planner
        return cls(
            forecaster.catalog, planner, forecaster.executor, planner.max_history_length, max_series
        )

    def check(self, query: BacktestQuery) -> int:
        """Raise what `run` would raise before inference; the forecasts it will make.

        Plans each series' first window (its shortest history) for every
        target, so a series too short for a version's window is refused here,
        not in the operation; missing points of later windows are found by `run`.
        """
        targets = self._targets(query)
        series = self._prepare(query)
        layout = query.layout
        first = [w for n, item in enumerate(series) for w in self._windows(n, item, layout, 1)]
        for target in targets:
            self._plan(query, target, series, first)
        return len(targets) * len(series) * query.layout.n_windows

    async def run(
        self, query: BacktestQuery, deadline: float, progress: Callable[[int], None] | None = None
    ) -> BacktestReport:
        """Score every target on every window; InvalidArgument, NotFound or the backend's error.

        `progress` (an operation's) learns of each chunk of windows done.
        """
        targets = self._targets(query)
        series = self._prepare(query)
        windows: list[Window] = []
        for number, item in enumerate(series):  # the loop stays free between series
            windows += self._windows(number, item, query.layout, query.layout.n_windows)
            await asyncio.sleep(0)
        results = await asyncio.gather(
            *(
                self._run_target(query, target, series, windows, deadline, progress)
                for target in targets
            )
        )
        groups = np.asarray([w.series for w in windows], dtype=np.int64)
        comparisons = tuple(
            self._compare(a, b, query.layout, groups) for a, b in itertools.combinations(results, 2)
        )
        return BacktestReport(
            model=query.model,
            layout=query.layout,
            scale=_scale_text(series),
            windows=tuple(windows),
            series_ids=tuple(s.id for s in series),
            results=tuple(result for result, _ in results),
            comparisons=comparisons,
        )

    def _targets(self, query: BacktestQuery) -> tuple[Target, ...]:
        violations = [
            *([] if query.model else [FieldViolation("model", "model is required")]),
            *layout_violations(query.layout.horizon, query.layout.n_windows, query.layout.step),
            *batch_violations([s.id for s in query.series], self.max_series),
        ]
        if len(query.targets) > MAX_TARGETS:
            violations.append(
                FieldViolation(
                    "targets", f"{len(query.targets)} targets; at most {MAX_TARGETS} per backtest"
                )
            )
        for index, target in enumerate(query.targets):
            if not target.version:
                violations.append(
                    FieldViolation(f"targets[{index}].version", "each target names a version")
                )
        duplicated = {t for t in query.targets if query.targets.count(t) > 1}
        if duplicated:
            labels = sorted(t.label for t in duplicated)
            violations.append(FieldViolation("targets", f"targets repeat: {', '.join(labels)}"))
        if violations:
            raise InvalidArgument.of(violations)
        if not query.targets:
            spec = self.catalog.get(query.model)
            ready = spec.ready_versions()
            if not ready:
                raise Unavailable(
                    f"no version of model {spec.name!r} is ready to backtest",
                    reason="NO_READY_VERSION",
                    metadata={"model": spec.name},
                )
            return tuple(Target(spec.name, version) for version in ready)
        for target in query.targets:
            spec = self.catalog.get(target.model)
            if target.version not in spec.versions:
                raise NotFound(
                    f"model {spec.name!r} has no version {target.version}",
                    reason="VERSION_NOT_FOUND",
                    metadata={"model": spec.name, "version": target.version},
                )
        return query.targets

    def _prepare(self, query: BacktestQuery) -> list[_Series]:
        """Every series on its grid (NaN at missing points); every violation at once."""
        prepared: list[_Series] = []
        violations: list[FieldViolation] = []
        for index, item in enumerate(query.series):
            series_query, found = prepare_query(
                replace(item.query, model=query.model), self.max_history_length
            )
            violations += [
                FieldViolation(f"series[{index}].{v.field}", v.description, v.reason) for v in found
            ]
            season = season_length(None, series_query.frequency)
            prepared.append(_Series(item.id, series_query, season))
        if not violations:
            violations = short_series(
                [s.id for s in prepared],
                [s.query.history.shape[0] for s in prepared],
                query.layout,
            )
        if violations:
            raise InvalidArgument.of(violations)
        return prepared

    def _windows(self, number: int, item: _Series, layout: Layout, count: int) -> list[Window]:
        """The first `count` windows of series number `number`, in order."""
        history = item.query.history
        axis = item.query.axis
        windows = []
        for index, origin in enumerate(layout.origins(history.shape[0])[:count]):
            times = axis.forecast_times(origin, 1) if axis is not None else None
            windows.append(
                Window(
                    series=number,
                    index=index,
                    origin=origin,
                    actuals=history[origin : origin + layout.horizon],
                    scale=seasonal_naive_scale(history[:origin], item.season),
                    origin_time=int(times[0]) if times is not None else None,
                )
            )
        return windows

    async def _run_target(
        self,
        query: BacktestQuery,
        target: Target,
        series: Sequence[_Series],
        windows: Sequence[Window],
        deadline: float,
        progress: Callable[[int], None] | None,
    ) -> tuple[TargetResult, FloatArray]:
        spec = self.catalog.get(target.model)
        outcomes = []
        # Planned a chunk at a time, each chunk executed before the next is
        # planned: the event loop (and with it an operation's lease renewals
        # and every other call) never waits for more than one chunk's planning.
        for start in range(0, len(windows), CHUNK_WINDOWS):
            await asyncio.sleep(0)
            chunk = self._plan(query, target, series, windows[start : start + CHUNK_WINDOWS], start)
            outcomes += await self.executor.run(spec, chunk, deadline)
            if progress is not None:
                progress(len(chunk))
        failures = [o for o in outcomes if isinstance(o, GatewayError)]
        if failures:
            raise failures[0]
        results = [o for o in outcomes if isinstance(o, ForecastResult)]
        target_windows = _target_windows(results, windows, query.levels)
        scores = score_target(target_windows)
        statuses = tuple(_status(results, coverage) for coverage in query.levels.coverages)
        return TargetResult(target, scores, statuses), window_losses(target_windows)

    def _plan(
        self,
        query: BacktestQuery,
        target: Target,
        series: Sequence[_Series],
        windows: Sequence[Window],
        first: int = 0,
    ) -> list[Plan]:
        """The pinned plans of `windows` (numbered from `first`); a violation names its window."""
        plans: list[Plan] = []
        for number, window in enumerate(windows, first):
            item = series[window.series]
            try:
                plans.append(
                    self.planner.plan_query(
                        number, self._window_query(query, target, item, window)
                    )[1]
                )
            except InvalidArgument as error:
                raise _named(error, target, item.id, window) from None
        return plans

    def _window_query(
        self, query: BacktestQuery, target: Target, item: _Series, window: Window
    ) -> ForecastQuery:
        axis = item.query.axis
        time = TimeInput(start=axis.start, frequency=axis.frequency) if axis is not None else None
        return replace(
            item.query,
            model=target.model,
            version=target.version,
            routing_key="",
            history=item.query.history[: window.origin],
            horizon=query.layout.horizon,
            sequence_length=query.sequence_length,
            levels=query.levels,
            time=time,
            axis=None,
            missing=0,
        )

    def _compare(
        self,
        first: tuple[TargetResult, FloatArray],
        second: tuple[TargetResult, FloatArray],
        layout: Layout,
        groups: npt.NDArray[np.int64],
    ) -> Comparison:
        (a, losses_a), (b, losses_b) = first, second
        test = diebold_mariano(
            losses_a, losses_b, groups=groups, horizon=layout.horizon, step=layout.step
        )
        both = np.isfinite(losses_a) & np.isfinite(losses_b)
        mase_a = float(losses_a[both].mean()) if both.any() else math.nan
        mase_b = float(losses_b[both].mean()) if both.any() else math.nan
        words = verdict(a.target.label, b.target.label, mase_a, mase_b, test)
        return Comparison(a.target, b.target, mase_a, mase_b, test, words)


def _named(
    error: InvalidArgument, target: Target, series_id: str, window: Window
) -> InvalidArgument:
    """A window's violations, saying which series, window and target they came from."""
    where = f"series[{window.series}]"
    return InvalidArgument.of(
        [
            FieldViolation(
                f"{where}.{v.field}",
                f"series {series_id!r}, window {window.index} (origin {window.origin}), "
                f"target {target.label}: {v.description}",
                v.reason,
            )
            for v in error.violations
        ]
    )


def _target_windows(
    results: Sequence[ForecastResult], windows: Sequence[Window], levels: Levels
) -> TargetWindows:
    """The target's forecasts as [windows, horizon] arrays; a bound it did not give is NaN."""
    horizon = windows[0].actuals.shape[0]
    shape = (len(windows), horizon)
    intervals = {c: (np.full(shape, np.nan), np.full(shape, np.nan)) for c in levels.coverages}
    quantiles = {q: np.full(shape, np.nan) for q in levels.quantiles}
    for row, result in enumerate(results):
        if result.uncertainty is None:
            continue
        for interval in result.uncertainty.intervals:
            if interval.coverage in intervals:
                intervals[interval.coverage][0][row] = interval.lower
                intervals[interval.coverage][1][row] = interval.upper
        for quantile in result.uncertainty.quantiles:
            if quantile.level in quantiles:
                quantiles[quantile.level][row] = quantile.values
    return TargetWindows(
        actuals=np.vstack([w.actuals for w in windows]),
        point=np.vstack([r.values for r in results]),
        scales=np.asarray([w.scale for w in windows], dtype=np.float64),
        intervals=intervals,
        quantiles=quantiles,
    )


def _status(results: Sequence[ForecastResult], coverage: float) -> Status:
    """CALIBRATED only if every window's interval of `coverage` was."""
    for result in results:
        uncertainty = result.uncertainty
        if (
            uncertainty is None
            or uncertainty.status is not Status.CALIBRATED
            or not any(i.coverage == coverage for i in uncertainty.intervals)
        ):
            return Status.NOT_CALIBRATED
    return Status.CALIBRATED


def _scale_text(series: Sequence[_Series]) -> str:
    """What MASE is scaled by, in words, as the response's `scale` says it."""
    seasons = sorted({(s.query.frequency, s.season) for s in series})
    parts = [
        f"seasonal naive, season {season} ({frequency})"
        if season > 1
        else (f"naive ({frequency}: no season)" if frequency else "naive (no frequency given)")
        for frequency, season in seasons
    ]
    return "in-sample MAE of each series' own history before each origin: " + "; ".join(parts)
