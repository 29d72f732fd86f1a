"""`forecast backtest --wait/--detach` and `forecast operations ...` against the gateway in process.

The command runs in a worker thread (`asyncio.to_thread(main, ...)`) while
the gateway (tests.edge.serving, the fake backend) serves on the test's
loop; the gateway's log lines are captured for the whole test so that only
the command's output reaches capsys. stderr is not a terminal here, so no
progress bar is drawn, except in the test that gives the command a terminal
of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from forecast_client import ForecastClient
from forecast_client.cli import build_parser, main
from forecast_client.cli_operations import ProgressBar
from forecast_client.operations import Operation, OperationProgress
from tests.edge import MA, Edge, captured_logs, serving
from tests.unit.test_edge_auth import ROTATED, TOKEN, token_file

HISTORY = ",".join(str(10.0 + (i % 7) + 0.1 * i) for i in range(120))
BACKTEST = ("backtest", "--model", MA, f"--history={HISTORY}", "--horizon", "6", "--windows",
            "4", "--versions", "1,2")  # fmt: skip
WINDOWS = 4 * 2


class Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest_asyncio.fixture
async def edge(tmp_path: Path) -> AsyncIterator[Edge]:
    with captured_logs():
        async with serving(tmp_path) as started:
            yield started


async def forecast(
    edge: Edge, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    """`forecast --target <edge> ARGS`: exit status, stdout, stderr."""
    target = f"127.0.0.1:{edge.gateway.port}"
    status = await asyncio.to_thread(main, ["--target", target, *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def interrupted(self: ForecastClient, name: str, **options: Any) -> Operation:
    """ForecastClient.wait_operation as Ctrl-C ends it."""
    raise KeyboardInterrupt


def names(edge: Edge) -> list[str]:
    with ForecastClient(f"127.0.0.1:{edge.gateway.port}") as client:
        return [o.name for o in client.list_operations()]


async def test_wait_prints_what_the_synchronous_backtest_prints(
    edge: Edge, capsys: pytest.CaptureFixture[str]
) -> None:
    synchronous = await forecast(edge, capsys, *BACKTEST)
    waited = await forecast(edge, capsys, *BACKTEST, "--wait")
    synchronous_json = await forecast(edge, capsys, "--json", *BACKTEST, "--per-window")
    waited_json = await forecast(edge, capsys, "--json", *BACKTEST, "--per-window", "--wait")
    assert synchronous[0] == 0 and synchronous[1].startswith(f"{MA}: backtest of 2 target(s)")
    assert waited == synchronous  # status, table and an empty stderr (not a terminal)
    assert waited_json == synchronous_json
    assert len(await asyncio.to_thread(names, edge)) == 2  # the --wait ones ran as operations


async def test_detach_then_the_operations_commands(
    edge: Edge, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = await forecast(edge, capsys, *BACKTEST, "--detach")
    assert (status, err) == (0, "")
    name = out.strip()
    assert re.fullmatch(r"operations/\S+", name) and out == f"{name}\n"

    status, out, _ = await forecast(edge, capsys, "operations", "wait", name)
    assert (status, out) == (0, (await forecast(edge, capsys, *BACKTEST))[1])

    status, out, _ = await forecast(edge, capsys, "operations", "get", name, "--json")
    got: dict[str, Any] = json.loads(out)
    assert status == 0
    assert {k: got[k] for k in ("name", "kind", "done", "state", "attempt")} == {
        "name": name, "kind": "backtest", "done": True, "state": "succeeded", "attempt": 1,
    }  # fmt: skip
    assert got["progress"] == {"done": WINDOWS, "total": WINDOWS, "unit": "windows"}
    assert {"createTime", "updateTime", "expireTime"} <= set(got) and "error" not in got

    status, out, _ = await forecast(edge, capsys, "operations", "get", name)
    assert out.splitlines()[:4] == [
        f"operation {name}", "kind      backtest", "state     succeeded",
        f"progress  {WINDOWS}/{WINDOWS} windows",
    ]  # fmt: skip

    status, out, _ = await forecast(edge, capsys, "operations", "list")
    header, row = out.splitlines()
    assert header.split() == ["NAME", "KIND", "STATE", "PROGRESS", "CREATED"]
    assert row.split()[:5] == [name, "backtest", "succeeded", f"{WINDOWS}/{WINDOWS}", "windows"]

    assert await forecast(edge, capsys, "operations", "delete", name) == (
        0, f"deleted {name}\n", ""
    )  # fmt: skip
    status, out, err = await forecast(edge, capsys, "operations", "get", name)
    assert (status, out) == (2, "")
    assert err.startswith("error: NOT_FOUND: ") and "reason: OPERATION_NOT_FOUND" in err
    assert await forecast(edge, capsys, "operations", "list") == (0, "no operations\n", "")


async def test_detach_json_is_the_queued_operation(
    edge: Edge, capsys: pytest.CaptureFixture[str]
) -> None:
    edge.backend.gate = asyncio.Event()
    status, out, _ = await forecast(edge, capsys, "--json", *BACKTEST, "--detach")
    body: dict[str, Any] = json.loads(out)
    assert status == 0 and body["name"].startswith("operations/")
    assert (body["kind"], body["done"]) == ("backtest", False)
    assert body["progress"] == {"done": 0, "total": WINDOWS, "unit": "windows"}
    assert "expireTime" not in body  # unset until done


async def test_a_cancelled_operation_waits_to_its_error(
    edge: Edge, capsys: pytest.CaptureFixture[str]
) -> None:
    edge.gateway.operations.lease_s = 0.3  # renewals (and cancel checks) every 0.1 s
    gate = edge.backend.gate = asyncio.Event()
    name = (await forecast(edge, capsys, *BACKTEST, "--detach"))[1].strip()
    status, out, _ = await forecast(edge, capsys, "operations", "cancel", name)
    assert status == 0 and out.startswith(f"operation {name}\n")
    status, out, err = await forecast(edge, capsys, "operations", "wait", name)
    gate.set()
    assert (status, out) == (1, "")
    assert err.startswith("error: CANCELLED: ")
    status, out, _ = await forecast(edge, capsys, "operations", "get", name)
    assert "state     cancelled" in out.splitlines()
    assert "error: CANCELLED: " in out


async def test_ctrl_c_leaves_the_operation_running_and_names_it(
    edge: Edge, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ForecastClient, "wait_operation", interrupted)
    status, out, err = await forecast(edge, capsys, *BACKTEST, "--wait")
    monkeypatch.undo()
    assert (status, out) == (130, "")
    found = re.fullmatch(r"interrupted: operation (operations/\S+) keeps running; .*\n", err)
    assert found is not None
    name = found[1]
    assert f"`forecast operations wait {name}`" in err
    assert f"`forecast operations cancel {name}`" in err
    status, out, _ = await forecast(edge, capsys, "--json", "operations", "wait", name)
    assert status == 0 and json.loads(out)["model"] == MA  # not cancelled: it ran to the end


async def test_ctrl_c_with_json_says_it_as_json(
    edge: Edge, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ForecastClient, "wait_operation", interrupted)
    status, _, err = await forecast(edge, capsys, "--json", *BACKTEST, "--wait")
    assert status == 130
    body = json.loads(err)["interrupted"]
    assert body["operation"].startswith("operations/") and "keeps running" in body["message"]


async def test_a_terminal_gets_a_progress_bar(
    edge: Edge, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    status, out, _ = await forecast(edge, capsys, *BACKTEST, "--wait")
    monkeypatch.undo()
    drawn = terminal.getvalue()
    assert status == 0 and out.startswith(f"{MA}: backtest of 2 target(s)")
    assert drawn.startswith("\r[") and drawn.endswith("\n")
    last = drawn.rstrip("\n").split("\r")[-1]
    assert last == f"[{'#' * 30}]  {WINDOWS}/{WINDOWS} windows  succeeded\x1b[K"


async def test_operations_wait_prints_a_batch_per_series(
    edge: Edge, capsys: pytest.CaptureFixture[str]
) -> None:
    history = [10.0 + (i % 7) for i in range(40)]
    series = {"north": history, "south": [*history, float("nan")]}

    def start() -> str:
        with ForecastClient(f"127.0.0.1:{edge.gateway.port}") as client:
            return client.start_forecast_batch(MA, series, version="1", horizon=3).name

    name = await asyncio.to_thread(start)
    status, out, _ = await forecast(edge, capsys, "--json", "operations", "wait", name)
    results = json.loads(out)["results"]
    assert status == 0
    assert [r["id"] for r in results] == ["north", "south"]
    assert len(results[0]["forecast"]["values"]) == 3
    assert results[1]["error"]["reason"] == "MISSING_VALUES"
    status, out, _ = await forecast(edge, capsys, "operations", "wait", name)
    blocks = out.split("\n\n")
    assert blocks[0].startswith("series north\n")
    assert out.count("series ") == 2 and "series south\nerror: INVALID_ARGUMENT: " in out


async def test_a_token_gateway_shows_each_token_its_own_operations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with captured_logs():
        async with serving(tmp_path, auth_token_file=token_file(tmp_path)) as edge:
            started = await forecast(edge, capsys, "--token", TOKEN, *BACKTEST, "--detach")
            name = started[1].strip()
            mine = await forecast(edge, capsys, "--token", TOKEN, "operations", "wait", name)
            theirs = await forecast(edge, capsys, "--token", ROTATED, "operations", "get", name)
            anonymous = await forecast(edge, capsys, "operations", "list")
    assert started[0] == mine[0] == 0 and mine[1].startswith(f"{MA}: backtest")
    assert theirs[0] == 2 and "reason: OPERATION_NOT_FOUND" in theirs[2]
    assert anonymous[0] == 1 and anonymous[2].splitlines() == [
        "error: UNAUTHENTICATED: this call needs a token: send metadata "
        "'authorization: Bearer <token>'",
        "  reason: TOKEN_MISSING (domain forecast.v1)",
        "  hint: this call needs a token: pass --token-file FILE (or --token, FORECAST_TOKEN)",
    ]


async def test_usage_errors_are_local(edge: Edge, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = await forecast(edge, capsys, *BACKTEST, "--detach", "--plot", "p.png")
    assert (status, out) == (2, "")
    assert "field --plot: cannot be combined with --detach" in err
    with pytest.raises(SystemExit) as both:
        await forecast(edge, capsys, *BACKTEST, "--detach", "--wait")
    assert both.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        await forecast(edge, capsys, "operations", "get")  # NAME is required
    assert await asyncio.to_thread(names, edge) == []


def test_the_operations_commands_are_in_the_help() -> None:
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    operations = commands.choices["operations"]
    (actions,) = [a for a in operations._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(actions.choices) == {"list", "get", "wait", "cancel", "delete"}
    backtest_help = commands.choices["backtest"].format_help()
    assert "--wait" in backtest_help and "--detach" in backtest_help


def test_the_progress_bar_draws_nothing_off_a_terminal() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream)
    operation = Operation(
        name="operations/x", kind="backtest", done=False,
        progress=OperationProgress(1, 4, "windows"), attempt=1, create_time=None,
        update_time=None, expire_time=None, error=None,
    )  # fmt: skip
    bar.show(operation)
    bar.close()
    assert not bar.live and stream.getvalue() == ""
    terminal = Terminal()
    live = ProgressBar(terminal)
    live.show(operation)
    live.close()
    live.close()  # once only
    assert terminal.getvalue() == f"\r[{'#' * 8}{'-' * 22}]  1/4 windows  running\x1b[K\n"
