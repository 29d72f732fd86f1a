"""`make calibrate CSV=... COLUMN=... MODEL=...`: scores for any model from a user's CSV."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from forecast_gateway.core.calibration import load_file
from forecast_gateway.numerics import naive_scales
from tests.conftest import GatewayProcess
from training import calibrate_csv

pytestmark = pytest.mark.functional


def test_scores_come_from_the_served_forecasts_of_the_user_s_series(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    values = [200 + 30 * math.sin(2 * math.pi * i / 7) + 0.5 * i for i in range(80)]
    csv_path = tmp_path / "sales.csv"
    csv_path.write_text("day,units\n" + "\n".join(f"{i},{v:.3f}" for i, v in enumerate(values)))
    argv = ["--csv", str(csv_path), "--column", "units", "--model", "moving_average"]
    argv += ["--version", "1", "--target", gateway.target, "--horizon", "5", "--origins", "20"]
    assert calibrate_csv.main([*argv, "--repository", str(tmp_path)]) == 0
    scores = load_file(
        tmp_path / "moving_average" / "1" / "calibration.json", "moving_average", "1"
    )
    assert [s.shape[0] for s in scores] == [20] * 5
    # The first origin (80 - 5 - 19 = 56): moving_average v1 forecasts the mean of its 10 points.
    series = np.round(np.asarray(values), 3)
    window = series[46:56]
    expected = (series[56] - window.mean()) / naive_scales(window[None, :])[0]
    assert scores[0][0] == pytest.approx(expected, rel=1e-4)


def test_a_history_too_short_for_the_window_is_named() -> None:
    with pytest.raises(ValueError, match="too few"):
        calibrate_csv.origins_for(12, 10, 5, 20)
