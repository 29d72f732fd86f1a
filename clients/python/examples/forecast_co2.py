"""Forecast the Mauna Loa CO2 series with both LSTM versions and compare with the truth.

Holds out the last 12 weeks of statsmodels' weekly co2 data set, sends the
year (52 weeks) before them as the history, and prints each version's
forecast next to the actual values, with the mean absolute error.

    python clients/python/examples/forecast_co2.py [host:port]

The target defaults to $FORECAST_TARGET, then localhost:50051.
"""

from __future__ import annotations

import os
import sys

import statsmodels.api as sm

from forecast_client import Forecast, ForecastClient, ForecastError

HORIZON = 12
HISTORY_WEEKS = 52  # one year: version 2's window; version 1 reads the last 10
VERSIONS = ("1", "2")


def main() -> None:
    """Run the comparison and print the table."""
    target = (
        sys.argv[1] if len(sys.argv) > 1 else os.environ.get("FORECAST_TARGET", "localhost:50051")
    )
    co2 = sm.datasets.co2.load_pandas().data["co2"].interpolate()
    history, actual = co2.iloc[-HORIZON - HISTORY_WEEKS : -HORIZON], co2.iloc[-HORIZON:]

    try:
        with ForecastClient(target) as client:
            forecasts = {
                version: client.forecast(
                    "lstm_timeseries", history.tolist(), version=version, horizon=HORIZON
                )
                for version in VERSIONS
            }
    except ForecastError as error:
        sys.exit(f"error: {error.code.name}: {error.message}")

    sys.stdout.write(_table(actual.index.strftime("%Y-%m-%d").tolist(), actual.tolist(), forecasts))


def _table(weeks: list[str], actual: list[float], forecasts: dict[str, Forecast]) -> str:
    labels = [f"v{version} (w{f.sequence_length})" for version, f in forecasts.items()]
    columns = [actual, *(f.values for f in forecasts.values())]
    lines = [f"{'week':<10} {'actual':>10} " + " ".join(f"{label:>10}" for label in labels)]
    for step, week in enumerate(weeks):
        lines.append(f"{week:<10} " + " ".join(f"{column[step]:>10.2f}" for column in columns))
    errors = [
        sum(abs(p - a) for p, a in zip(f.values, actual, strict=True)) / len(actual)
        for f in forecasts.values()
    ]
    lines.append(f"{'MAE':<10} {'':>10} " + " ".join(f"{e:>10.3f}" for e in errors))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
