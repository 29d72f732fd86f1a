"""Rolling origins: where each backtest window starts, as statsforecast and Nixtla lay them.

With T points, window k (0-based, of n) has its origin at
T - horizon - step * (n - 1 - k): it forecasts the `horizon` points after
the origin from the points before it, and the last window ends at the last
point. `step` < `horizon` makes windows overlap (their errors correlate,
which the comparison's HAC variance accounts for).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from forecast_gateway.errors import FieldViolation

MAX_WINDOWS = 1000
"""Windows per series at most: a backtest is bounded like a batch is."""
MAX_TARGETS = 8
MAX_HORIZON = 10_000


@dataclass(frozen=True)
class Layout:
    """The windows of a backtest: horizon, count and distance between origins."""

    horizon: int
    n_windows: int
    step: int

    def origins(self, points: int) -> list[int]:
        """Each window's origin in a series of `points` points, earliest first."""
        last = points - self.horizon
        return [last - self.step * (self.n_windows - 1 - k) for k in range(self.n_windows)]

    def needed(self) -> int:
        """Points the windows themselves take: the held-out span of every window."""
        return self.horizon + self.step * (self.n_windows - 1)


def layout_violations(horizon: int, n_windows: int, step: int) -> list[FieldViolation]:
    """What is wrong with the layout fields, before any series is read."""
    violations = []
    if not 1 <= horizon <= MAX_HORIZON:
        violations.append(
            FieldViolation("horizon", f"horizon is {horizon}; give 1 to {MAX_HORIZON} points")
        )
    if not 1 <= n_windows <= MAX_WINDOWS:
        violations.append(
            FieldViolation("n_windows", f"n_windows is {n_windows}; give 1 to {MAX_WINDOWS}")
        )
    if step < 0:
        violations.append(
            FieldViolation("step", f"step is {step}; give a positive step, or 0 for the horizon")
        )
    return violations


def short_series(
    ids: Sequence[str], lengths: Sequence[int], layout: Layout, least_history: int = 1
) -> list[FieldViolation]:
    """One violation per series too short for the windows (and `least_history` before them)."""
    violations = []
    need = layout.needed() + least_history
    for index, (series_id, points) in enumerate(zip(ids, lengths, strict=True)):
        if points < need:
            violations.append(
                FieldViolation(
                    f"series[{index}].history",
                    f"series {series_id!r} has {points} points; {layout.n_windows} windows of "
                    f"{layout.horizon} points {layout.step} apart need at least {need} "
                    f"({layout.needed()} held out, {least_history} before the first origin)",
                )
            )
    return violations
