"""Calibrated intervals and quantiles for every served model version.

Each (model, version) has one pool of signed scaled errors per horizon step
(`conformal`). A pool is the version's most recent online scores from the
A/B store (every replica's reported actuals, served and shadow forecasts),
topped up to `window` with the newest held-out scores computed at training
time (`<calibration_dir>/<model>/<version>/calibration.json`), so a fresh
gateway is calibrated from its first request and drifts with the actuals.

The request path only reads: bound tables are cached per (model, version,
levels, horizon) and dropped when a background refresh sees a pool change in
the store, so asking for intervals costs a multiply-add per call.

A quantile model's CQR pools (per tracked coverage and step, `core.cqr`)
come from the store alone, read with the same refresh: `cqr` gives their
offsets, cached per (model, version, horizon) the same way.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from forecast_gateway import metrics
from forecast_gateway.ab import TRACKED, ExperimentStore
from forecast_gateway.core import conformal
from forecast_gateway.core.contract import frequencies_match
from forecast_gateway.core.cqr import CqrTable, offset_table
from forecast_gateway.numerics import FloatArray, Levels

log = structlog.get_logger(__name__)

METHOD = "split conformal (signed errors / naive MAE of the window)"
"""The coverages and levels every forecast is recorded at, for GetExperiment to score."""
FILE_NAME = "calibration.json"
FILE_FORMAT = 1


class Status(enum.Enum):
    """Mirrors forecast.v1.UncertaintyStatus."""

    CALIBRATED = "calibrated"
    NOT_CALIBRATED = "not_calibrated"


@dataclass(frozen=True)
class Interval:
    """A prediction interval in the units of the history."""

    coverage: float
    lower: FloatArray
    upper: FloatArray


@dataclass(frozen=True)
class Quantile:
    """A quantile forecast in the units of the history."""

    level: float
    values: FloatArray


@dataclass(frozen=True)
class Uncertainty:
    """The requested intervals and quantiles that are calibrated, and why any is missing."""

    status: Status
    intervals: tuple[Interval, ...]
    quantiles: tuple[Quantile, ...]
    scores: tuple[int, ...]
    """Calibration scores behind each horizon step."""
    detail: str = ""
    method: str = METHOD


class Calibration:
    """The pools of every (model, version), and their bounds (cached).

    `await start()` loads the training-time files and the store's pools and
    starts the refresh; `await close()` stops it.
    """

    def __init__(
        self,
        store: ExperimentStore | None,
        directory: str = "",
        window: int = 256,
        refresh_s: float = 1.0,
        max_entries: int = 4096,
    ) -> None:
        self.store = store
        self.window = window
        self.refresh_s = refresh_s
        self._directory = Path(directory) if directory else None
        self._bootstrap: dict[tuple[str, str], list[FloatArray]] = {}
        self._bootstrap_frequency: dict[tuple[str, str], str] = {}
        """The frequency of the data each file's scores come from ("" when it does not say)."""
        self._online: dict[tuple[str, str], dict[int, FloatArray]] = {}
        self._online_cqr: dict[tuple[str, str], dict[tuple[float, int], FloatArray]] = {}
        self._cqr: collections.OrderedDict[tuple[str, str, int], CqrTable] = (
            collections.OrderedDict()
        )
        self._revisions: dict[tuple[str, str], int] = {}
        self._pools: dict[tuple[str, str], list[FloatArray]] = {}
        self.max_entries = max_entries
        self._bounds: collections.OrderedDict[tuple[str, str, Levels, int], _Bounds] = (
            collections.OrderedDict()
        )
        """Least recently used first: callers choose the levels, so the keys are unbounded."""
        self._refresher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load the training-time scores and the store's pools; refresh in the background."""
        if self._directory is not None:
            self._bootstrap = load_directory(self._directory)
            self._bootstrap_frequency = load_frequencies(self._directory)
            log.info(
                "calibration_loaded",
                directory=str(self._directory),
                versions=sorted(f"{m}/{v}" for m, v in self._bootstrap),
            )
            self._publish(self._bootstrap)
        if self.store is not None:
            try:
                await self.refresh()
            except Exception as error:  # served from the files until the store answers
                log.warning("calibration_refresh_failed", error=type(error).__name__)
            self._refresher = asyncio.create_task(self._refresh_forever(), name="calibration")

    async def close(self) -> None:
        """Stop the background refresh."""
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
            self._refresher = None

    async def refresh(self) -> None:
        """Read the pools that changed in the store (any replica's actuals)."""
        assert self.store is not None
        changed = await self.store.calibration_pools(dict(self._revisions))
        for key, pools in changed.items():
            self._online[key] = pools.steps
            self._online_cqr[key] = pools.cqr
            self._revisions[key] = pools.revision
            self._pools.pop(key, None)
        if changed:
            for stale in [k for k in self._bounds if k[:2] in changed]:
                del self._bounds[stale]
            for gone in [k for k in self._cqr if k[:2] in changed]:
                del self._cqr[gone]
            self._publish(changed)

    def uncertainty(
        self,
        model: str,
        version: str,
        values: FloatArray,
        scale: float,
        levels: Levels,
        window: int = 2,
        frequency: str = "",
    ) -> Uncertainty:
        """The calibrated bounds of one forecast around `values`.

        `scale` is the naive MAE of the `window` points the model read. A
        series whose `frequency` differs from the data the held-out scores
        came from gets the bounds as NOT_CALIBRATED while those scores still
        fill its pool: they were never checked on data like it.
        """
        entry = self._entry(model, version, levels, values.shape[0])
        if not scale > 0 or not math.isfinite(scale):
            detail = SINGLE_POINT if window < 2 else CONSTANT_WINDOW
            return Uncertainty(Status.NOT_CALIBRATED, (), (), entry.scores, detail)
        bounds = values + scale * entry.table
        offset = 2 * len(levels.coverages)
        intervals = tuple(
            Interval(coverage, bounds[2 * i], bounds[2 * i + 1])
            for i, coverage in enumerate(levels.coverages)
            if entry.complete[i]
        )
        quantiles = tuple(
            Quantile(level, bounds[offset + i])
            for i, level in enumerate(levels.quantiles)
            if entry.complete[len(levels.coverages) + i]
        )
        detail = entry.detail or self._foreign(model, version, frequency)
        status = Status.NOT_CALIBRATED if detail else Status.CALIBRATED
        return Uncertainty(status, intervals, quantiles, entry.scores, detail)

    def _foreign(self, model: str, version: str, frequency: str) -> str:
        """Why the held-out scores do not calibrate a series of `frequency` ("" if they do)."""
        source = self._bootstrap_frequency.get((model, version), "")
        # Any anchor of the same base frequency counts (W-SAT scores calibrate W-SUN data).
        if not frequency or not source or frequencies_match(source.split("-")[0], frequency):
            return ""
        online = self._online.get((model, version), {}).get(0, _EMPTY)
        if online.size >= self.window:  # the file no longer contributes
            return ""
        return (
            f"{model} version {version}'s held-out scores come from {source} data, this series "
            f"is {frequency}: not calibrated for it until its own actuals are reported "
            f"({online.size} of {self.window} scores so far)"
        )

    def tracked(self, model: str, version: str, horizon: int) -> FloatArray | None:
        """The bounds at the TRACKED levels, in scale units [rows, horizon]; None if none exist."""
        entry = self._entry(model, version, TRACKED, horizon)
        return entry.table if entry.any else None

    def cqr(self, model: str, version: str, horizon: int) -> CqrTable:
        """The CQR offsets of a quantile version at the TRACKED coverages, steps 0..horizon - 1.

        From the newest `window` scores of each pool in the store (every
        replica's reported actuals); NaN where a pool has too few.
        """
        key = (model, version, horizon)
        found = self._cqr.get(key)
        if found is not None:
            self._cqr.move_to_end(key)
            return found
        online = self._online_cqr.get((model, version), {})
        pools = [
            [
                conformal.sorted_pool(online.get((coverage, step), _EMPTY)[-self.window :])
                for step in range(horizon)
            ]
            for coverage in TRACKED.coverages
        ]
        found = offset_table(TRACKED.coverages, pools)
        self._cqr[key] = found
        if len(self._cqr) > self.max_entries:
            self._cqr.popitem(last=False)
        return found

    def _entry(self, model: str, version: str, levels: Levels, horizon: int) -> _Bounds:
        """What every forecast of (model, version, levels, horizon) shares.

        The scaled bounds, which of them exist and the detail, until the
        version's pools change.
        """
        key = (model, version, levels, horizon)
        entry = self._bounds.get(key)
        if entry is not None:
            self._bounds.move_to_end(key)
        else:
            pools = self.pools(model, version)
            padded = list(pools[:horizon]) + [_EMPTY] * max(0, horizon - len(pools))
            table = conformal.bound_table(padded, levels)
            table.flags.writeable = False
            finite = np.isfinite(table)
            rows = finite.all(axis=1).tolist()
            covered = len(levels.coverages)
            complete = tuple(rows[2 * i] and rows[2 * i + 1] for i in range(covered))
            complete += tuple(rows[2 * covered :])
            scores = tuple(pool.size for pool in padded)
            detail = "" if all(complete) else _detail(model, version, levels, complete, scores)
            entry = _Bounds(table, complete, bool(finite.any()), scores, detail)
            self._bounds[key] = entry
            if len(self._bounds) > self.max_entries:
                self._bounds.popitem(last=False)
        return entry

    @property
    def cached(self) -> int:
        """How many bound tables are cached now (at most `max_entries`)."""
        return len(self._bounds)

    def table(self, model: str, version: str, levels: Levels, horizon: int) -> FloatArray:
        """Scaled bounds [rows, horizon] (`conformal.bound_table`), NaN past the pools."""
        return self._entry(model, version, levels, horizon).table

    def pools(self, model: str, version: str) -> list[FloatArray]:
        """The sorted pool of each horizon step: newest online scores, topped up from the file."""
        key = (model, version)
        pools = self._pools.get(key)
        if pools is None:
            pools = _merge(self._online.get(key, {}), self._bootstrap.get(key, []), self.window)
            self._pools[key] = pools
        return pools

    def _publish(self, versions: Iterable[tuple[str, str]]) -> None:
        """The gauge of each version's fewest scores per step (the first step to miss a bound)."""
        for model, version in versions:
            pools = self.pools(model, version)
            fewest = min((pool.size for pool in pools), default=0)
            metrics.CALIBRATION_SCORES.labels(model, version).set(fewest)

    async def _refresh_forever(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.refresh()
            except Exception as error:
                if not failing:
                    log.warning("calibration_refresh_failed", error=type(error).__name__)
                failing = True
            else:
                failing = False


CONSTANT_WINDOW = "the window is constant: there is no scale to express calibrated errors in"
SINGLE_POINT = (
    "the window has 1 point: the naive scale calibrated errors are expressed in needs at least 2"
)


@dataclass(frozen=True)
class _Bounds:
    """The scaled bounds of (model, version, levels, horizon) and which of them exist."""

    table: FloatArray
    complete: tuple[bool, ...]
    """Per coverage, then per quantile level: the bound(s) exist at every step."""
    any: bool
    scores: tuple[int, ...]
    detail: str
    """Empty when every requested bound exists."""


def _detail(
    model: str, version: str, levels: Levels, complete: tuple[bool, ...], scores: tuple[int, ...]
) -> str:
    """Which requested bounds are missing and how many scores they need."""
    covered = len(levels.coverages)
    missing = [
        f"the {coverage:g} interval needs {conformal.min_scores_for_interval(coverage)}"
        for coverage, ok in zip(levels.coverages, complete[:covered], strict=True)
        if not ok
    ] + [
        f"the {level:g} quantile needs {conformal.min_scores_for_quantile(level)}"
        for level, ok in zip(levels.quantiles, complete[covered:], strict=True)
        if not ok
    ]
    fewest = min(range(len(scores)), key=lambda step: scores[step])
    return (
        f"too few calibration scores for {model} version {version}: "
        f"{'; '.join(missing)} scores per horizon step, step {fewest + 1} has "
        f"{scores[fewest]}; reported actuals add scores"
    )


_EMPTY: FloatArray = np.empty(0)


def _merge(
    online: Mapping[int, FloatArray], bootstrap: Sequence[FloatArray], window: int
) -> list[FloatArray]:
    """Per step: the newest `window` online scores, then the newest file scores up to `window`."""
    steps = max([len(bootstrap), *(step + 1 for step in online)])
    pools: list[FloatArray] = []
    for step in range(steps):
        recent = online.get(step, _EMPTY)[-window:]
        room = window - recent.size
        held_out = bootstrap[step][-room:] if room > 0 and step < len(bootstrap) else _EMPTY
        pools.append(conformal.sorted_pool(np.concatenate([held_out, recent])))
    return pools


def load_directory(directory: Path) -> dict[tuple[str, str], list[FloatArray]]:
    """Every `<model>/<version>/calibration.json` under `directory`: per-step scores, oldest first.

    A missing directory is no calibration; a malformed file stops the gateway
    (ValueError naming it), as a bad config does.
    """
    found: dict[tuple[str, str], list[FloatArray]] = {}
    if not directory.is_dir():
        log.warning("calibration_directory_missing", directory=str(directory))
        return found
    for path in sorted(directory.glob(f"*/*/{FILE_NAME}")):
        model, version = path.parent.parent.name, path.parent.name
        found[(model, version)] = load_file(path, model, version)
    return found


def load_frequencies(directory: Path) -> dict[tuple[str, str], str]:
    """The `frequency` each calibration file says its scores come from (absent: "")."""
    found: dict[tuple[str, str], str] = {}
    for path in sorted(directory.glob(f"*/*/{FILE_NAME}")) if directory.is_dir() else []:
        document = json.loads(path.read_text())
        found[(path.parent.parent.name, path.parent.name)] = str(document.get("frequency", ""))
    return found


def load_file(path: Path, model: str, version: str) -> list[FloatArray]:
    """The per-step scores of one calibration file; ValueError if it is not one."""
    try:
        document = json.loads(path.read_text())
        if not isinstance(document, dict):
            raise ValueError("expected a JSON object")
        if document.get("format") != FILE_FORMAT:
            raise ValueError(f"format {document.get('format')!r}, expected {FILE_FORMAT}")
        if (document.get("model"), str(document.get("version"))) != (model, version):
            raise ValueError(f"it is for {document.get('model')} version {document.get('version')}")
        steps = [np.asarray(step, dtype=np.float64) for step in document["scores"]]
        if not steps or any(step.ndim != 1 or not np.isfinite(step).all() for step in steps):
            raise ValueError("scores must be one list of finite numbers per horizon step")
    except (OSError, KeyError, TypeError, json.JSONDecodeError, ValueError) as error:
        raise ValueError(f"calibration file {path}: {error}") from None
    return steps
