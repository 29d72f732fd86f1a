"""`forecast backtest --wait/--detach` and `forecast operations`: the real gateway and Triton.

The console script in a subprocess, as a user runs it (`cli_env`): a
backtest run as an operation prints what the synchronous backtest prints,
whether waited for at once or detached and waited for by name.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.functional.test_cli import forecast, forecast_json

pytestmark = pytest.mark.functional

HISTORY = ",".join(str(round(100 + (i % 7) * 2.5 + 0.1 * i, 3)) for i in range(150))
BACKTEST = ("backtest", "--model", "moving_average", f"--history={HISTORY}", "--horizon", "7",
            "--windows", "6", "--versions", "1,2", "--per-window")  # fmt: skip


def test_a_backtest_operation_prints_what_the_synchronous_backtest_prints(
    cli_env: dict[str, str],
) -> None:
    synchronous = forecast_json(cli_env, *BACKTEST)
    assert forecast_json(cli_env, *BACKTEST, "--wait") == synchronous
    detached = forecast(cli_env, *BACKTEST, "--detach")
    assert (detached.returncode, detached.stderr) == (0, "")
    name = detached.stdout.strip()
    assert re.fullmatch(r"operations/\S+", name)
    assert forecast_json(cli_env, "operations", "wait", name) == synchronous
    operation = forecast_json(cli_env, "operations", "get", name)
    assert (operation["state"], operation["progress"]["unit"]) == ("succeeded", "windows")
    assert operation["progress"]["done"] == operation["progress"]["total"] == 2 * 6
    assert name in [o["name"] for o in forecast_json(cli_env, "operations", "list")["operations"]]
    deleted = forecast(cli_env, "operations", "delete", name)
    assert (deleted.returncode, deleted.stdout) == (0, f"deleted {name}\n")
    gone = forecast(cli_env, "--json", "operations", "get", name)
    assert gone.returncode == 2
    assert json.loads(gone.stderr)["error"]["reason"] == "OPERATION_NOT_FOUND"
