"""The multi-frequency corpus of the global quantile model: real series plus synthetic ones.

Real series are those the statsmodels wheel ships (public-domain data, read
offline). No PyPI package ships hourly or daily business series, so those
frequencies (and more of every other) come from a generator of known
structure: trend, level shifts, one or two seasonal cycles, noise, positive
and count series. Evaluation never sees training data: each real series
keeps its last `n_windows * horizon` points out of training, and the
synthetic evaluation series are whole series drawn from other seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import numpy.typing as npt
from scipy.signal import lfilter

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Frequency:
    """A pandas alias with its natural season (points) and the evaluation horizon for it."""

    alias: str
    season: int
    horizon: int
    windows: int  # rolling evaluation windows per series (step = horizon)


# Horizons follow the M4 competition's (yearly 6, quarterly 8, monthly 18,
# weekly 13), capped by the model's 28 steps: daily 28 (four weeks), hourly 24.
FREQUENCIES = {
    f.alias: f
    for f in (
        Frequency("h", 24, 24, 3),
        Frequency("D", 7, 28, 3),
        Frequency("W", 52, 13, 8),
        Frequency("MS", 12, 18, 4),
        Frequency("QS", 4, 8, 4),
        Frequency("YS", 1, 6, 3),
    )
}


@dataclass(frozen=True)
class Series:
    """One series of the corpus: its values (oldest first), frequency, origin and held-out tail."""

    name: str
    frequency: str
    values: FloatArray
    source: str
    held_out: int  # the last `held_out` points are evaluation data, never trained on

    @property
    def training_part(self) -> FloatArray:
        """The points a model may be trained on."""
        return self.values[: self.values.shape[0] - self.held_out]

    @property
    def season(self) -> int:
        """The natural season of the series' frequency, in points."""
        return FREQUENCIES[self.frequency].season


# --- real series (statsmodels, public domain) --------------------------------------------


def _statsmodels_frames() -> dict[str, tuple[str, FloatArray]]:
    """Each usable statsmodels series: name -> (frequency alias, values oldest first)."""
    from statsmodels.datasets import (
        co2,
        elec_equip,
        elnino,
        interest_inflation,
        macrodata,
        nile,
        sunspots,
    )

    found: dict[str, tuple[str, FloatArray]] = {
        "co2": ("W", co2.load_pandas().data["co2"].interpolate().to_numpy()),
        "elnino": ("MS", elnino.load_pandas().data.iloc[:, 1:13].to_numpy().ravel()),
        "elec_equip": ("MS", elec_equip.load().data.iloc[:, 0].to_numpy()),
        "sunspots": ("YS", sunspots.load_pandas().data["SUNACTIVITY"].to_numpy()),
        "nile": ("YS", nile.load_pandas().data["volume"].to_numpy()),
    }
    macro = macrodata.load_pandas().data.drop(columns=["year", "quarter"])
    for column in macro.columns:
        found[f"macrodata.{column}"] = ("QS", macro[column].to_numpy())
    inflation = interest_inflation.load_pandas().data
    for column in ("Dp", "R"):
        found[f"interest_inflation.{column}"] = ("QS", inflation[column].to_numpy())
    return {name: (alias, np.asarray(v, dtype=np.float64)) for name, (alias, v) in found.items()}


@cache
def real_series() -> tuple[Series, ...]:
    """The statsmodels series, each with its last windows * horizon points held out."""
    series = []
    for name, (alias, values) in _statsmodels_frames().items():
        if np.isnan(values).any():
            raise ValueError(f"statsmodels {name} has NaN")
        frequency = FREQUENCIES[alias]
        held_out = frequency.windows * frequency.horizon
        series.append(Series(name, alias, values, f"statsmodels {name.split('.')[0]}", held_out))
    return tuple(series)


# --- synthetic series --------------------------------------------------------------------

# Seasonal cycles (in points) each synthetic frequency may carry, and its length range.
SYNTHETIC_CYCLES: dict[str, tuple[float, ...]] = {
    "h": (24.0, 168.0),
    "D": (7.0, 365.25),
    "W": (52.18,),
    "MS": (12.0,),
    "QS": (4.0,),
    "YS": (),
}
SYNTHETIC_LENGTHS: dict[str, tuple[int, int]] = {
    "h": (24 * 7 * 5, 24 * 7 * 10),
    "D": (365, 3 * 365),
    "W": (150, 600),
    "MS": (90, 360),
    "QS": (70, 200),
    "YS": (70, 200),
}


def seasonal_profile(length: int, period: float, rng: np.random.Generator) -> FloatArray:
    """One seasonal cycle of unit scale: a random Fourier series, or a free shape for short periods.

    A free shape (one random value per position, e.g. a weekend dip) is what
    daily retail and hourly load series look like; smooth harmonics are what
    climate and yearly cycles look like.
    """
    t = np.arange(length, dtype=np.float64)
    if period == int(period) and period <= 24 and rng.random() < 0.5:
        shape = rng.normal(size=int(period))
        free: FloatArray = shape[(t % period).astype(np.int64)] / (np.std(shape) + 1e-9)
        return free
    harmonics = int(rng.integers(1, 5))
    wave = np.zeros(length)
    for k in range(1, harmonics + 1):
        phase = rng.uniform(0, 2 * np.pi)
        wave += rng.normal() / k * np.sin(2 * np.pi * k * t / period + phase)
    return wave / (np.std(wave) + 1e-9)


def trend(length: int, rng: np.random.Generator) -> FloatArray:
    """A piecewise-linear trend (changepoints), sometimes plus a random-walk level, unit-free."""
    t = np.arange(length, dtype=np.float64) / length
    slope = rng.normal(0, 1.0) * (rng.random() < 0.7)
    path = slope * t
    for _ in range(int(rng.poisson(1.0))):
        at = rng.uniform(0.2, 0.9)
        path += rng.normal(0, 1.0) * np.maximum(t - at, 0.0)
    if rng.random() < 0.3:
        path += np.cumsum(rng.normal(0, 0.05, length)) / np.sqrt(length) * 8
    return path


def level_shifts(length: int, rng: np.random.Generator) -> FloatArray:
    """A few permanent steps of random size (a price change, a new store), unit-free."""
    shifts = np.zeros(length)
    for _ in range(int(rng.poisson(0.6))):
        shifts[int(rng.integers(length // 5, length)) :] += rng.normal(0, 0.6)
    return shifts


def noise(length: int, rng: np.random.Generator) -> FloatArray:
    """Unit-scale AR(1) noise, Gaussian or heavy-tailed (Student t, 3 degrees of freedom)."""
    shocks = (
        rng.standard_t(3, length) / np.sqrt(3) if rng.random() < 0.3 else rng.normal(0, 1, length)
    )
    phi = rng.uniform(0.0, 0.8) if rng.random() < 0.6 else 0.0
    correlated: FloatArray = lfilter([1.0], [1.0, -phi], shocks)
    return np.asarray(correlated * np.sqrt(1 - phi * phi), dtype=np.float64)


def structure(frequency: str, length: int, rng: np.random.Generator) -> FloatArray:
    """Trend + shifts + seasonal cycles + noise, in arbitrary units, mean about zero."""
    cycles = SYNTHETIC_CYCLES[frequency]
    season = np.zeros(length)
    for index, period in enumerate(cycles):
        weight = rng.uniform(0.2, 1.5) if index == 0 else rng.uniform(0.0, 0.8)
        season += weight * seasonal_profile(length, period, rng)
    if frequency == "YS" and rng.random() < 0.3:  # a business / sunspot-like cycle
        season += rng.uniform(0.3, 1.5) * seasonal_profile(length, rng.uniform(6, 14), rng)
    path = trend(length, rng) * rng.uniform(0.0, 3.0) + level_shifts(length, rng)
    return path + season + rng.uniform(0.1, 1.0) * noise(length, rng)


def additive_series(frequency: str, length: int, rng: np.random.Generator) -> FloatArray:
    """Structure at any level and sign (temperatures, rates, balances)."""
    scale = 10 ** rng.uniform(-1, 3)
    return rng.normal(0, 5) * scale + scale * structure(frequency, length, rng)


def positive_series(frequency: str, length: int, rng: np.random.Generator) -> FloatArray:
    """Multiplicative structure around a positive level (sales, demand, load)."""
    level = 10 ** rng.uniform(0.5, 4)
    relative = rng.uniform(0.03, 0.3)
    values: FloatArray = level * np.exp(relative * structure(frequency, length, rng))
    return values


def count_series(frequency: str, length: int, rng: np.random.Generator) -> FloatArray:
    """Poisson counts of a positive intensity: small sellers, with zeros when it is low."""
    intensity = positive_series(frequency, length, rng)
    intensity *= 10 ** rng.uniform(-0.7, 1.5) / np.mean(intensity)
    return rng.poisson(intensity).astype(np.float64)


KINDS: tuple[tuple[float, Callable[[str, int, np.random.Generator], FloatArray]], ...] = (
    (0.35, additive_series),
    (0.45, positive_series),
    (0.20, count_series),
)


def synthetic_values(frequency: str, rng: np.random.Generator) -> FloatArray:
    """One synthetic series of `frequency`, of a random kind and length."""
    low, high = SYNTHETIC_LENGTHS[frequency]
    length = int(rng.integers(low, high + 1))
    weights = np.array([w for w, _ in KINDS])
    kind = KINDS[int(rng.choice(len(KINDS), p=weights / weights.sum()))][1]
    return kind(frequency, length, rng)


def synthetic_series(frequency: str, count: int, seed: int, held_out: int = 0) -> list[Series]:
    """`count` synthetic series of `frequency` from `seed` (distinct seeds: distinct series)."""
    rng = np.random.default_rng([seed, list(FREQUENCIES).index(frequency)])
    return [
        Series(
            f"synthetic.{frequency}.{seed}.{i}",
            frequency,
            synthetic_values(frequency, rng),
            "synthetic",
            held_out,
        )
        for i in range(count)
    ]


def retail_daily(length: int, rng: np.random.Generator) -> FloatArray:
    """Daily sales around ~300: weekly pattern, a yearly swell, slow trend, promotions, noise."""
    t = np.arange(length, dtype=np.float64)
    weekly = np.array([0.9, 0.85, 0.88, 0.95, 1.1, 1.3, 1.02])[(t % 7).astype(np.int64)]
    yearly = 1 + 0.08 * np.sin(2 * np.pi * t / 365.25 + rng.uniform(0, 2 * np.pi))
    growth = 1 + rng.uniform(-0.1, 0.2) * t / length
    promotions = 1 + 0.4 * (rng.random(length) < 0.02)
    mean = 300 * weekly * yearly * growth * promotions
    return np.asarray(rng.poisson(mean), dtype=np.float64)


# --- the corpora -------------------------------------------------------------------------

TRAINING_SEED = 1
EVALUATION_SEED = 1000  # never used for training series
TRAINING_COUNTS = {"h": 400, "D": 400, "W": 250, "MS": 400, "QS": 400, "YS": 300}
EVALUATION_COUNTS = {"h": 12, "D": 16}
RETAIL_DAYS = 730


def training_corpus(seed: int = TRAINING_SEED) -> list[Series]:
    """What the model trains on: each real series' training part and the synthetic series."""
    real = [Series(s.name, s.frequency, s.training_part, s.source, 0) for s in real_series()]
    synthetic = [
        series
        for alias, count in TRAINING_COUNTS.items()
        for series in synthetic_series(alias, count, seed)
    ]
    rng = np.random.default_rng([seed, 99])
    retail = [
        Series(f"retail.{seed}.{i}", "D", retail_daily(RETAIL_DAYS, rng), "synthetic", 0)
        for i in range(40)
    ]
    return real + synthetic + retail


def evaluation_corpus() -> list[Series]:
    """What the model is judged on: real series (held-out tails) and unseen synthetic ones.

    Real series exist for weekly, monthly, quarterly and yearly data; hourly
    and daily are synthetic series from evaluation seeds (whole series held
    out), daily including positive retail-like sales around 300.
    """
    synthetic = []
    for alias, count in EVALUATION_COUNTS.items():
        frequency = FREQUENCIES[alias]
        held = frequency.windows * frequency.horizon
        synthetic += synthetic_series(alias, count, EVALUATION_SEED, held)
    rng = np.random.default_rng([EVALUATION_SEED, 99])
    daily = FREQUENCIES["D"]
    retail = [
        Series(
            f"retail.eval.{i}",
            "D",
            retail_daily(RETAIL_DAYS, rng),
            "synthetic",
            daily.windows * daily.horizon,
        )
        for i in range(4)
    ]
    return [*real_series(), *synthetic, *retail]
