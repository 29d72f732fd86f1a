"""forecast_gateway.core.calibration: pools from files and a real SQLite A/B store, bounds, status.

Online scores go through the real store: a forecast of zeros with naive
scale 1 is recorded and actuals are reported for it, so each reported actual
becomes exactly that score in its version's pool of that step.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from forecast_gateway.ab import TRACKED, ExperimentStore, Prediction, RecordedForecast, Role
from forecast_gateway.ab.storage import Bounds, CalibrationPools, open_storage
from forecast_gateway.core.calibration import (
    METHOD,
    Calibration,
    Status,
    load_directory,
    load_file,
)
from forecast_gateway.core.conformal import bound_table, sorted_pool
from forecast_gateway.numerics import Levels
from tests.polling import eventually

MODEL = "lstm_timeseries"
WINDOW = 20
"""calibration_window of these tests (the store keeps as many per step)."""
BOTH = Levels(coverages=(0.8, 0.95))
EIGHTY = Levels(coverages=(0.8,))


def write_file(
    directory: Path, model: str, version: str, scores: Sequence[Sequence[float]], **changes: object
) -> Path:
    """A calibration.json as training/calibrate.py writes it (`changes` override fields)."""
    path = directory / model / version / "calibration.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "format": 1,
        "model": model,
        "version": version,
        "score": "(actual - forecast) / naive_scale(window)",
        "window": 10,
        "data": "test",
        "scores": [list(step) for step in scores],
        **changes,
    }
    path.write_text(json.dumps(document))
    return path


def file_scores(steps: int, count: int, start: float = 1000.0) -> list[list[float]]:
    """`count` distinct scores per step, oldest first: start + 100 * step + i."""
    return [[start + 100.0 * step + i for i in range(count)] for step in range(steps)]


def make_store(path: str = ":memory:", window: int = WINDOW) -> ExperimentStore:
    return ExperimentStore(open_storage("", Bounds(10_000, 3600.0, window), default_path=path))


@pytest.fixture
async def store() -> AsyncIterator[ExperimentStore]:
    store = make_store()
    await store.start()
    yield store
    await store.close()


async def add_online(
    store: ExperimentStore,
    version: str,
    rows: Sequence[Sequence[float]],
    *,
    model: str = MODEL,
    offset: int = 0,
    horizon: int | None = None,
) -> None:
    """One forecast per row (zeros, scale 1) whose actuals from `offset` are the row: its scores."""
    for index, row in enumerate(rows):
        steps = horizon if horizon is not None else offset + len(row)
        forecast_id = f"{model}-{version}-{time.monotonic_ns()}-{index}"
        store.record(
            RecordedForecast(
                forecast_id=forecast_id,
                model=model,
                horizon=steps,
                naive_scale=1.0,
                created_at=time.time(),
                served=Prediction(version, Role.SERVED, (0.0,) * steps, 1.0),
            )
        )
        await store.report_actuals(forecast_id, list(row), offset)


async def started(calibration: Calibration) -> Calibration:
    await calibration.start()
    return calibration


# -- the training-time files --------------------------------------------------------------


def gauge(model: str, version: str) -> float | None:
    return REGISTRY.get_sample_value(
        "forecast_gateway_calibration_scores", {"model": model, "version": version}
    )


async def test_the_gauge_shows_each_versions_fewest_scores_per_step(
    tmp_path: Path, store: ExperimentStore
) -> None:
    write_file(tmp_path, "gauge_model", "1", [[1.0] * 30, [2.0] * 12])  # step 2 has 12
    calibration = await started(Calibration(store, str(tmp_path), WINDOW))
    try:
        assert gauge("gauge_model", "1") == 12
        await add_online(store, "1", [[5.0, 6.0]] * 3, model="gauge_model")
        await calibration.refresh()
        assert gauge("gauge_model", "1") == 15  # 12 from the file and 3 reported
    finally:
        await calibration.close()


def test_a_good_file_loads_one_array_per_step_oldest_first(tmp_path: Path) -> None:
    path = write_file(tmp_path, MODEL, "2", [[3.0, -1.0, 2.5], [0.5, 0.25]])
    steps = load_file(path, MODEL, "2")
    assert [step.tolist() for step in steps] == [[3.0, -1.0, 2.5], [0.5, 0.25]]
    assert all(step.dtype == np.float64 for step in steps)


def test_a_directory_holds_every_model_version(tmp_path: Path) -> None:
    write_file(tmp_path, MODEL, "1", file_scores(2, 3))
    write_file(tmp_path, MODEL, "2", file_scores(4, 3))
    write_file(tmp_path, "moving_average", "1", file_scores(1, 5))
    (tmp_path / MODEL / "3").mkdir()  # a version without a file: no calibration for it
    found = load_directory(tmp_path)
    assert sorted(found) == [(MODEL, "1"), (MODEL, "2"), ("moving_average", "1")]
    assert [len(found[key]) for key in sorted(found)] == [2, 4, 1]


def test_the_shipped_files_load(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2] / "model_repository"
    found = load_directory(root)
    assert {(MODEL, "1"), (MODEL, "2"), ("moving_average", "1"), ("moving_average", "2")} <= set(
        found
    )
    assert all(len(steps) == 64 and steps[0].size == 165 for steps in found.values())


async def test_a_missing_directory_is_no_calibration(tmp_path: Path) -> None:
    assert load_directory(tmp_path / "nowhere") == {}
    calibration = await started(Calibration(None, str(tmp_path / "nowhere"), WINDOW))
    result = calibration.uncertainty(MODEL, "2", np.zeros(3), 1.0, BOTH)
    assert result.status is Status.NOT_CALIBRATED
    assert result.intervals == () and result.scores == (0, 0, 0)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("{not json", "Expecting property name"),
        (json.dumps({"format": 2, "model": MODEL, "version": "2", "scores": [[1.0]]}), "format 2"),
        (json.dumps({"format": 1, "model": "other", "version": "2", "scores": [[1.0]]}), "other"),
        (json.dumps({"format": 1, "model": MODEL, "version": "7", "scores": [[1.0]]}), "version 7"),
        (json.dumps({"format": 1, "model": MODEL, "version": "2"}), "scores"),
        (json.dumps({"format": 1, "model": MODEL, "version": "2", "scores": []}), "finite"),
        (
            json.dumps({"format": 1, "model": MODEL, "version": "2", "scores": [[1.0, math.nan]]}),
            "finite",
        ),
        (json.dumps({"format": 1, "model": MODEL, "version": "2", "scores": [[[1.0]]]}), "list"),
        (json.dumps({"format": 1, "model": MODEL, "version": "2", "scores": [["x"]]}), "x"),
        (json.dumps({"format": 1, "model": MODEL, "version": "2", "scores": [None]}), "finite"),
        (json.dumps([1, 2]), "JSON object"),
    ],
)
async def test_a_malformed_file_stops_start_up_naming_it(
    tmp_path: Path, content: str, says: str
) -> None:
    write_file(tmp_path, MODEL, "1", file_scores(2, 3))
    path = tmp_path / MODEL / "2" / "calibration.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(ValueError, match="calibration file") as raised:
        await Calibration(None, str(tmp_path), WINDOW).start()
    assert str(path) in str(raised.value)
    assert says in str(raised.value)


# -- pools: the newest online scores, topped up from the file ------------------------------


async def test_the_file_alone_calibrates_a_fresh_gateway(
    tmp_path: Path, store: ExperimentStore
) -> None:
    write_file(tmp_path, MODEL, "2", file_scores(3, 30))
    calibration = await started(Calibration(store, str(tmp_path), WINDOW))
    try:
        pools = calibration.pools(MODEL, "2")
        assert [pool.size for pool in pools] == [WINDOW] * 3  # the newest WINDOW of 30
        assert pools[1].tolist() == file_scores(3, 30)[1][-WINDOW:]
    finally:
        await calibration.close()


async def test_online_scores_replace_the_oldest_file_scores_up_to_the_window(
    tmp_path: Path, store: ExperimentStore
) -> None:
    write_file(tmp_path, MODEL, "2", file_scores(3, 30))
    calibration = await started(Calibration(store, str(tmp_path), WINDOW, refresh_s=60.0))
    try:
        online = [[-1.0 - i, -2.0 - i, -3.0 - i] for i in range(7)]
        await add_online(store, "2", online)
        await calibration.refresh()
        pools = calibration.pools(MODEL, "2")
        for step in range(3):
            held_out = file_scores(3, 30)[step][-(WINDOW - 7) :]
            expected = sorted([row[step] for row in online] + held_out)
            assert pools[step].tolist() == expected
        more = [[-50.0 - i, -60.0 - i, -70.0 - i] for i in range(WINDOW + 5)]
        await add_online(store, "2", more)
        await calibration.refresh()
        for step, pool in enumerate(calibration.pools(MODEL, "2")):
            assert pool.size == WINDOW  # the window bound: no file score, oldest online gone
            assert pool.tolist() == sorted(row[step] for row in more[-WINDOW:])
    finally:
        await calibration.close()


async def test_steps_fill_on_their_own_and_past_the_file(
    tmp_path: Path, store: ExperimentStore
) -> None:
    write_file(tmp_path, MODEL, "2", file_scores(2, 5))
    calibration = await started(Calibration(store, str(tmp_path), WINDOW, refresh_s=60.0))
    try:
        await add_online(store, "2", [[7.0], [8.0]], offset=3, horizon=4)  # step 4 only
        await calibration.refresh()
        assert [pool.size for pool in calibration.pools(MODEL, "2")] == [5, 5, 0, 2]
        assert calibration.pools(MODEL, "2")[3].tolist() == [7.0, 8.0]
    finally:
        await calibration.close()


async def test_a_correction_adds_no_score_and_shadows_add_their_own(
    store: ExperimentStore,
) -> None:
    calibration = await started(Calibration(store, "", WINDOW, refresh_s=60.0))
    try:
        store.record(
            RecordedForecast(
                forecast_id="f1",
                model=MODEL,
                horizon=2,
                naive_scale=2.0,
                created_at=time.time(),
                served=Prediction("2", Role.SERVED, (10.0, 10.0), 1.0),
            )
        )
        store.record_shadow("f1", MODEL, Prediction("1", Role.SHADOW, (9.0, 12.0), 1.0, scale=4.0))
        await store.report_actuals("f1", [14.0], 0)
        await store.report_actuals("f1", [100.0], 0)  # a correction: scored, not a new score
        await store.report_actuals("f1", [16.0], 1)
        await calibration.refresh()
        assert [p.tolist() for p in calibration.pools(MODEL, "2")] == [[2.0], [3.0]]
        assert [p.tolist() for p in calibration.pools(MODEL, "1")] == [[1.25], [1.0]]
    finally:
        await calibration.close()


# -- refresh: another replica's scores, and the cached tables ------------------------------


async def test_refresh_picks_up_what_another_replica_reported(tmp_path: Path) -> None:
    """Another replica's reports reach our pools by the background refresh, whole reports only."""
    database = str(tmp_path / "shared" / "experiments.sqlite3")
    ours, theirs = make_store(database), make_store(database)
    await ours.start()
    await theirs.start()
    calibration = await started(Calibration(ours, "", WINDOW, refresh_s=0.05))
    try:
        assert calibration.pools(MODEL, "2") == []
        await add_online(theirs, "2", [[float(i), -float(i)] for i in range(12)])

        # Twelve reports, twelve transactions: the background refresh (every
        # refresh_s) may land between two of them and see 8 of the 12, which is
        # allowed; what it may never see is part of one report (a report's steps
        # are written in one transaction and read in one statement, see
        # ab.storage), so both steps always have the same count.
        def all_twelve() -> bool:
            sizes = [pool.size for pool in calibration.pools(MODEL, "2")]
            assert len(set(sizes)) <= 1, f"half a report refreshed: {sizes}"
            return sizes == [12, 12]

        await eventually(all_twelve, timeout_s=5.0, interval_s=0.02, message="all 12 reports")
        assert [pool.size for pool in calibration.pools(MODEL, "2")] == [12, 12]
        result = calibration.uncertainty(MODEL, "2", np.zeros(2), 1.0, Levels((0.8,)))
        assert result.status is Status.CALIBRATED
        assert result.intervals[0].lower.tolist() == [0.0, -11.0]  # ranks 1 and 12 of 12
        assert result.intervals[0].upper.tolist() == [11.0, 0.0]
    finally:
        await calibration.close()
        await ours.close()
        await theirs.close()


async def test_a_refresh_invalidates_the_changed_versions_tables_only(
    tmp_path: Path, store: ExperimentStore
) -> None:
    write_file(tmp_path, MODEL, "1", file_scores(2, WINDOW))
    write_file(tmp_path, MODEL, "2", file_scores(2, WINDOW))
    calibration = await started(Calibration(store, str(tmp_path), WINDOW, refresh_s=60.0))
    try:
        before = {v: calibration.table(MODEL, v, EIGHTY, 2) for v in ("1", "2")}
        assert calibration.table(MODEL, "2", EIGHTY, 2) is before["2"]  # cached
        await add_online(store, "2", [[-500.0, 5000.0]] * 3)
        stale = calibration.uncertainty(MODEL, "2", np.zeros(2), 1.0, EIGHTY)
        assert stale.intervals[0].lower.tolist() == before["2"][0].tolist()  # not re-read yet
        await calibration.refresh()
        after = calibration.table(MODEL, "2", EIGHTY, 2)
        assert after is not before["2"]
        assert after[0, 0] == -500.0 and after[1, 1] == 5000.0  # ranks 2 and 19 of 20
        fresh = calibration.uncertainty(MODEL, "2", np.zeros(2), 1.0, EIGHTY)
        assert fresh.intervals[0].lower[0] == -500.0
        assert calibration.table(MODEL, "1", EIGHTY, 2) is before["1"]
        await calibration.refresh()  # nothing changed: the new table stays
        assert calibration.table(MODEL, "2", EIGHTY, 2) is after
    finally:
        await calibration.close()


async def test_the_store_failing_at_start_leaves_the_files_serving(tmp_path: Path) -> None:
    class Unreachable(ExperimentStore):
        async def calibration_pools(
            self, known: dict[tuple[str, str], int]
        ) -> dict[tuple[str, str], CalibrationPools]:
            raise ConnectionError("down")

    store = Unreachable(open_storage("", Bounds(10, 60.0, WINDOW), default_path=":memory:"))
    write_file(tmp_path, MODEL, "2", file_scores(1, 40))
    calibration = await started(Calibration(store, str(tmp_path), 40, refresh_s=0.01))
    try:
        await asyncio.sleep(0.05)  # failing refreshes are logged, not raised
        result = calibration.uncertainty(MODEL, "2", np.zeros(1), 1.0, BOTH)
        assert result.status is Status.CALIBRATED
    finally:
        await calibration.close()


# -- uncertainty(): status, detail, values, order ------------------------------------------


async def test_too_few_scores_says_what_is_missing(tmp_path: Path) -> None:
    write_file(tmp_path, MODEL, "2", file_scores(3, 20))
    calibration = await started(Calibration(None, str(tmp_path), WINDOW))
    levels = Levels((0.8, 0.95), (0.5, 0.975))
    result = calibration.uncertainty(MODEL, "2", np.zeros(5), 1.0, levels)
    assert result.status is Status.NOT_CALIBRATED
    assert result.scores == (20, 20, 20, 0, 0)
    assert result.intervals == () and result.quantiles == ()  # steps 4-5: nothing at all
    assert result.detail == (
        f"too few calibration scores for {MODEL} version 2: the 0.8 interval needs 9; "
        "the 0.95 interval needs 39; the 0.5 quantile needs 1; the 0.975 quantile needs 39 "
        "scores per horizon step, step 4 has 0; reported actuals add scores"
    )
    partial = calibration.uncertainty(MODEL, "2", np.zeros(3), 1.0, levels)
    assert partial.status is Status.NOT_CALIBRATED
    assert [i.coverage for i in partial.intervals] == [0.8]  # what is calibrated is returned
    assert [q.level for q in partial.quantiles] == [0.5]
    assert "the 0.95 interval needs 39" in partial.detail
    assert "the 0.975 quantile needs 39" in partial.detail
    assert "0.8 interval" not in partial.detail and "step 1 has 20" in partial.detail
    assert partial.method == METHOD


async def test_a_cold_start_names_the_scores_an_80_interval_needs() -> None:
    calibration = await started(Calibration(None, "", WINDOW))
    result = calibration.uncertainty(MODEL, "1", np.ones(2), 1.0, Levels((0.8,)))
    assert result.status is Status.NOT_CALIBRATED
    assert "the 0.8 interval needs 9 scores per horizon step, step 1 has 0" in result.detail


@pytest.mark.parametrize("scale", [0.0, -1.0, math.nan, math.inf])
async def test_a_constant_window_is_not_calibrated(tmp_path: Path, scale: float) -> None:
    write_file(tmp_path, MODEL, "2", file_scores(2, 50))
    calibration = await started(Calibration(None, str(tmp_path), WINDOW))
    result = calibration.uncertainty(MODEL, "2", np.full(2, 5.0), scale, BOTH)
    assert result.status is Status.NOT_CALIBRATED
    assert result.intervals == () and result.quantiles == ()
    assert result.scores == (WINDOW, WINDOW)
    assert "constant" in result.detail and "scale" in result.detail


async def test_bounds_are_the_forecast_plus_scale_times_the_ranked_scores_in_request_order(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(3, 200)).round(4).tolist()
    write_file(tmp_path, MODEL, "2", scores)
    calibration = await started(Calibration(None, str(tmp_path), 199))
    levels = Levels((0.95, 0.5, 0.8), (0.9, 0.1, 0.5))
    values, scale = np.array([400.0, 401.0, 402.5]), 0.4
    result = calibration.uncertainty(MODEL, "2", values, scale, levels)
    assert result.status is Status.CALIBRATED and result.detail == ""
    assert result.scores == (199, 199, 199)
    assert [i.coverage for i in result.intervals] == [0.95, 0.5, 0.8]
    assert [q.level for q in result.quantiles] == [0.9, 0.1, 0.5]
    pools = [sorted_pool(step[-199:]) for step in scores]
    expected = values + scale * bound_table(pools, levels)
    for index, interval in enumerate(result.intervals):
        np.testing.assert_allclose(interval.lower, expected[2 * index])
        np.testing.assert_allclose(interval.upper, expected[2 * index + 1])
    for index, quantile in enumerate(result.quantiles):
        np.testing.assert_allclose(quantile.values, expected[6 + index])
    # n = 199, 95%: ranks floor(200 * 0.025) = 5 and ceil(200 * 0.975) = 195
    np.testing.assert_allclose(
        result.intervals[0].lower, values + scale * np.array([p[4] for p in pools])
    )
    np.testing.assert_allclose(
        result.intervals[0].upper, values + scale * np.array([p[194] for p in pools])
    )
    by_coverage = {i.coverage: i for i in result.intervals}
    assert (by_coverage[0.95].lower <= by_coverage[0.8].lower).all()
    assert (by_coverage[0.8].lower <= by_coverage[0.5].lower).all()
    assert (by_coverage[0.5].upper <= by_coverage[0.8].upper).all()
    assert (by_coverage[0.8].upper <= by_coverage[0.95].upper).all()


async def test_tracked_bounds_are_none_until_some_exist(tmp_path: Path) -> None:
    write_file(tmp_path, MODEL, "2", file_scores(2, 12))
    calibration = await started(Calibration(None, str(tmp_path), WINDOW))
    assert calibration.tracked(MODEL, "1", 2) is None
    tracked = calibration.tracked(MODEL, "2", 2)
    assert tracked is not None
    rows = 2 * len(TRACKED.coverages) + len(TRACKED.quantiles)
    assert tracked.shape == (rows, 2)
    assert np.isfinite(tracked[0:2]).all() and np.isnan(tracked[2:4]).all()  # 80% yes, 95% no


async def test_scores_from_another_frequency_do_not_call_a_series_calibrated(
    tmp_path: Path, store: ExperimentStore
) -> None:
    write_file(tmp_path, MODEL, "2", file_scores(3, 30), frequency="W-SAT")
    calibration = await started(Calibration(store, str(tmp_path), WINDOW))
    try:
        values = np.zeros(3)
        for frequency, status in (("", "calibrated"), ("W-SAT", "calibrated"), ("W", "calibrated")):
            answer = calibration.uncertainty(MODEL, "2", values, 1.0, EIGHTY, 10, frequency)
            assert answer.status.value == status and answer.detail == ""
        daily = calibration.uncertainty(MODEL, "2", values, 1.0, EIGHTY, 10, "D")
        assert daily.status.value == "not_calibrated"
        assert "come from W-SAT data, this series is D" in daily.detail
        assert len(daily.intervals) == 1  # the bounds are still given, flagged
    finally:
        await calibration.close()
