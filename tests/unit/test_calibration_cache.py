"""The calibration bounds cache is bounded: callers choose the levels, so its keys are unbounded."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from forecast_gateway.core.calibration import Calibration
from forecast_gateway.numerics import Levels


async def test_random_levels_from_callers_keep_the_cache_at_its_bound(tmp_path: Path) -> None:
    calibration = Calibration(None, str(tmp_path), 256, max_entries=16)
    await calibration.start()
    rng = random.Random(7)
    values = np.zeros(64)
    hot = Levels(coverages=(0.8,))
    hot_table = calibration.table("m", "1", hot, 64)
    for _ in range(2_000):
        levels = Levels(coverages=(rng.uniform(0.01, 0.99),), quantiles=(rng.random(),))
        calibration.uncertainty("m", "1", values, 1.0, levels)
        assert calibration.cached <= 16
        calibration.uncertainty("m", "1", values, 1.0, hot)  # used on every request
    assert calibration.cached == 16
    assert calibration.table("m", "1", hot, 64) is hot_table  # the recently used one stayed
    await calibration.close()


async def test_a_one_point_window_is_named_as_such_not_as_constant(tmp_path: Path) -> None:
    calibration = Calibration(None, str(tmp_path), 256)
    await calibration.start()
    levels = Levels(coverages=(0.8,))
    one = calibration.uncertainty("m", "1", np.zeros(3), 0.0, levels, window=1)
    flat = calibration.uncertainty("m", "1", np.zeros(3), 0.0, levels, window=10)
    assert "1 point" in one.detail and "constant" not in one.detail
    assert "constant" in flat.detail
    await calibration.close()
