"""The `forecast operations` commands, and waiting for an operation from the shell.

    forecast operations list                 # the caller's operations, oldest first
    forecast operations get operations/4f1c...
    forecast operations wait operations/4f1c...   # prints what the command that started it would
    forecast operations cancel operations/4f1c...
    forecast operations delete operations/4f1c...

`wait_for` is the wait of `forecast backtest --wait` and of `operations
wait`: a progress bar on stderr when it is a terminal (nothing otherwise, so
logs and captured output hold only the command's own output), no limit on
the wait (the --timeout of the command is per call), and on Ctrl-C a line
saying that the operation keeps running, with its name: it is not cancelled.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO, TypeVar

from forecast_client.client import ForecastClient
from forecast_client.operations import BACKTEST, FORECAST_BATCH, RESPONSE_TYPES, Operation
from forecast_client.render import (
    backtest_json,
    backtest_text,
    operation_json,
    operation_text,
    operations_text,
    outcomes_json,
    outcomes_text,
)

__all__ = ["ProgressBar", "add_operations_commands", "result_output", "wait_for"]

Output = tuple[object, str]
"""What a command returns: the JSON object for --json and the plain-text rendering."""
BAR_WIDTH = 30
_Parser = TypeVar("_Parser", bound=argparse.ArgumentParser)


class ProgressBar:
    """One terminal line, redrawn in place: "[#####-----]  4/10 windows  running".

    `live` is False (and nothing is drawn) when the stream is not a terminal.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self._drawn = False

    def show(self, operation: Operation) -> None:
        """Draw the operation's progress over the previous drawing."""
        if not self.live:
            return
        progress = operation.progress
        filled = round(progress.fraction * BAR_WIDTH)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        counts = f"{progress.done}/{progress.total} {progress.unit}".rstrip()
        self.stream.write(f"\r[{bar}]  {counts}  {operation.state}\x1b[K")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """End the bar's line, so that what follows starts on a line of its own."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def wait_for(client: ForecastClient, name: str, stream: TextIO, *, json_lines: bool) -> Operation:
    """Wait for the operation, drawing its progress on `stream` (a terminal); return it done.

    On Ctrl-C, says on `stream` (as JSON with `json_lines`) that the
    operation keeps running and how to wait again or cancel it, then lets
    the KeyboardInterrupt end the command.
    """
    bar = ProgressBar(stream)
    try:
        return client.wait_operation(name, on_progress=bar.show if bar.live else None)
    except KeyboardInterrupt:
        bar.close()
        message = (
            f"interrupted: operation {name} keeps running; `forecast operations wait {name}` "
            f"waits for it again, `forecast operations cancel {name}` cancels it"
        )
        line = json.dumps({"interrupted": {"operation": name, "message": message}})
        stream.write((line if json_lines else message) + "\n")
        raise
    finally:
        bar.close()


def result_output(client: ForecastClient, operation: Operation) -> Output:
    """What the command that started a finished operation prints; its error raised if it failed.

    A backtest prints as `forecast backtest`, a batch as one forecast per
    series; an operation of a kind this client does not know, as `get`.
    """
    if operation.error is not None:
        raise operation.error
    if operation.response_type == RESPONSE_TYPES[BACKTEST]:
        report = client.backtest_result(operation)
        return backtest_json(report), backtest_text(report)
    if operation.response_type == RESPONSE_TYPES[FORECAST_BATCH]:
        outcomes = client.forecast_batch_result(operation)
        return outcomes_json(outcomes), outcomes_text(outcomes)
    return operation_json(operation), operation_text(operation)


def add_operations_commands(
    commands: argparse._SubParsersAction[_Parser], common: _Parser
) -> list[_Parser]:
    """Add `operations list|get|wait|cancel|delete`; return the parsers added."""
    operations = commands.add_parser(
        "operations",
        parents=[common],
        help="long-running operations (backtest --detach): list, get, wait, cancel, delete",
        description="The operations you started (StartBacktest, StartForecastBatch; with "
        "tokens, those of your token), through google.longrunning.Operations. "
        "A finished operation is kept until its expire time.",
    )
    actions = operations.add_subparsers(dest="action", required=True, metavar="ACTION")
    parsers = [operations]
    for action, handler, text in (
        ("list", _list, "list your operations, oldest first"),
        ("get", _get, "show an operation's state, progress and error"),
        ("wait", _wait, "wait for an operation, then print its result (or its error)"),
        ("cancel", _cancel, "ask to cancel an operation (it ends CANCELLED); show it"),
        ("delete", _delete, "forget an operation and its result (a running one stops)"),
    ):
        parser = actions.add_parser(action, parents=[common], help=text, description=text + ".")
        if action != "list":
            parser.add_argument("name", metavar="NAME", help='the operation, "operations/..."')
        parser.set_defaults(handler=handler)
        parsers.append(parser)
    return parsers


def _list(client: ForecastClient, args: argparse.Namespace) -> Output:
    operations = list(client.list_operations())
    return {"operations": [operation_json(o) for o in operations]}, operations_text(operations)


def _get(client: ForecastClient, args: argparse.Namespace) -> Output:
    operation = client.get_operation(args.name)
    return operation_json(operation), operation_text(operation)


def _wait(client: ForecastClient, args: argparse.Namespace) -> Output:
    return result_output(client, wait_for(client, args.name, sys.stderr, json_lines=args.json))


def _cancel(client: ForecastClient, args: argparse.Namespace) -> Output:
    client.cancel_operation(args.name)
    operation = client.get_operation(args.name)
    return operation_json(operation), operation_text(operation)


def _delete(client: ForecastClient, args: argparse.Namespace) -> Output:
    client.delete_operation(args.name)
    return {"deleted": args.name}, f"deleted {args.name}\n"
