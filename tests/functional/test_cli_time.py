"""The `forecast` command with dated CSV rows, through the real gateway and Triton.

A daily series whose CSV lacks two days inside the window the model reads:
with --fill linear the gateway fills them and answers with the next days'
dates; without a fill it refuses, naming the gap.
"""

from __future__ import annotations

import json
import math
from datetime import date, timedelta
from pathlib import Path

import pytest

from tests.functional.test_cli import forecast

pytestmark = pytest.mark.functional

FIRST = date(2024, 1, 1)
DAYS = 80
MISSING = (DAYS - 5, DAYS - 3)  # inside the last 10 points (moving_average v1's window)
HORIZON = 4


@pytest.fixture
def sales(tmp_path: Path) -> Path:
    rows = [
        f"{FIRST + timedelta(days=i)},{100 + 10 * math.sin(2 * math.pi * i / 7) + 0.2 * i:.2f}"
        for i in range(DAYS)
        if i not in MISSING
    ]
    path = tmp_path / "sales.csv"
    path.write_text("day,units\n" + "\n".join(rows) + "\n")
    return path


def predict(env: dict[str, str], sales: Path, *extra: str) -> list[str]:
    return ["predict", "--model", "moving_average", "--version", "1", "--horizon",
            str(HORIZON), "--csv", str(sales), "--date-column", "day", "--column", "units",
            *extra]  # fmt: skip


def test_linear_fill_answers_with_the_next_days(cli_env: dict[str, str], sales: Path) -> None:
    result = forecast(cli_env, "--json", *predict(cli_env, sales, "--fill", "linear"))
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    last = FIRST + timedelta(days=DAYS - 1)
    assert body["timestamps"] == [
        f"{last + timedelta(days=k)}T00:00:00Z" for k in range(1, HORIZON + 1)
    ]
    assert (body["frequency"], body["filledPoints"]) == ("D", 2)
    text = forecast(cli_env, *predict(cli_env, sales, "--fill", "linear"))
    assert text.returncode == 0, text.stderr
    assert "frequency D, 2 points filled" in text.stdout
    assert f"1     {last + timedelta(days=1)}" in text.stdout


def test_without_a_fill_the_gap_is_named(cli_env: dict[str, str], sales: Path) -> None:
    result = forecast(cli_env, *predict(cli_env, sales))
    assert result.returncode == 2, result.stdout
    assert result.stderr.startswith("error: INVALID_ARGUMENT: ")
    assert "reason: MISSING_VALUES" in result.stderr
    assert str(FIRST + timedelta(days=MISSING[0])) in result.stderr
    assert "hint: fill them with --fill linear|previous|zero" in result.stderr
