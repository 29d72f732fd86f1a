"""The `forecast` command: forecast a series and list models from the shell.

    forecast predict --model lstm_timeseries --horizon 12 --history "1,2,3,..."
    forecast predict --model lstm_timeseries --csv sales.csv --column units
    forecast --json models
    forecast models lstm_timeseries

Output is a plain-text table, or with --json the response as JSON (proto JSON
names). Errors go to stderr; exit status 2 means the input was invalid
(including INVALID_ARGUMENT, NOT_FOUND and OUT_OF_RANGE from the gateway), 1
means the call failed otherwise (e.g. UNAVAILABLE, DEADLINE_EXCEEDED).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import grpc

from forecast_client.client import ForecastClient
from forecast_client.errors import FieldViolation, ForecastError
from forecast_client.render import (
    error_json,
    error_text,
    forecast_json,
    forecast_text,
    model_json,
    model_text,
    models_text,
)
from forecast_client.series_input import InputError, parse_csv, parse_history

DEFAULT_TARGET = "localhost:50051"
EXIT_FAILED = 1
EXIT_INVALID = 2
# What a command returns: the JSON object for --json and the plain-text rendering.
Output = tuple[object, str]
_INVALID_INPUT_CODES = frozenset(
    {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OUT_OF_RANGE}
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(json_errors="--json" in arguments).parse_args(arguments)
    try:
        result = _run(args)
    except InputError as error:
        violation = FieldViolation(error.field, error.description)
        return _fail(
            args,
            ForecastError(grpc.StatusCode.INVALID_ARGUMENT, "invalid input", None, (violation,)),
        )
    except ForecastError as error:
        return _fail(args, error)
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # the CLI promises a one-line error, never a traceback
        unexpected = ForecastError(grpc.StatusCode.UNKNOWN, f"{type(error).__name__}: {error}")
        return _fail(args, unexpected)
    if args.json:
        sys.stdout.write(json.dumps(result[0]) + "\n")
    else:
        sys.stdout.write(result[1])
    return 0


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors can be a JSON object, like the other errors."""

    json_errors = False

    def error(self, message: str) -> NoReturn:
        """Exit 2 with the usage error, as JSON when --json was given."""
        if not self.json_errors:
            super().error(message)
        error = ForecastError(grpc.StatusCode.INVALID_ARGUMENT, f"{self.prog}: {message}")
        self.exit(EXIT_INVALID, json.dumps(error_json(error)) + "\n")


def build_parser(*, json_errors: bool = False) -> argparse.ArgumentParser:
    """Return the parser; global options are accepted before or after the subcommand."""
    parser = _Parser(
        prog="forecast",
        description="Forecast time series with the Forecast Gateway (forecast.v1).",
        epilog="Exit status: 0 ok, 2 invalid input (usage, INVALID_ARGUMENT, NOT_FOUND, "
        "OUT_OF_RANGE), 1 any other failure (e.g. UNAVAILABLE).",
    )
    _add_global_options(parser, defaults=True)
    common = _Parser(add_help=False)
    _add_global_options(common, defaults=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    predict = commands.add_parser(
        "predict",
        parents=[common],
        help="forecast one series",
        description="Forecast one series. Negative first values need '=': --history=-1,2,3.",
    )
    predict.add_argument("--model", required=True, help="model name, e.g. lstm_timeseries")
    predict.add_argument("--version", default="", help="pin a version (default: gateway picks)")
    predict.add_argument("--routing-key", default="", help="series/customer key for routing")
    predict.add_argument("--horizon", type=int, default=0, help="steps (0: model default)")
    predict.add_argument(
        "--sequence-length", type=int, default=0, help="window (0: the version's own)"
    )
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--history", help='values, oldest first: "1,2,3" or "1 2 3"')
    source.add_argument("--csv", metavar="FILE", help="CSV file, oldest row first ('-': stdin)")
    predict.add_argument("--column", help="CSV column name (default: the last all-numeric column)")
    predict.set_defaults(handler=_predict)

    models = commands.add_parser(
        "models", parents=[common], help="list the models, or describe one"
    )
    models.add_argument("name", nargs="?", help="describe only this model")
    models.set_defaults(handler=_models)
    for each in (parser, predict, models):
        each.json_errors = json_errors
    return parser


def _add_global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    # The subcommands repeat these with SUPPRESS defaults, so `forecast predict
    # --json` works and an option given before the subcommand is not reset.
    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--target",
        default=default(os.environ.get("FORECAST_TARGET") or DEFAULT_TARGET),
        help=f"gateway host:port (default: $FORECAST_TARGET or {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=default(10.0),
        metavar="SECONDS",
        help="deadline of each call (default: 10)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print JSON (proto JSON names) instead of tables; errors as JSON on stderr",
    )


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _run(args: argparse.Namespace) -> Output:
    with ForecastClient(args.target, timeout_s=args.timeout) as client:
        result: Output = args.handler(client, args)
    return result


def _predict(client: ForecastClient, args: argparse.Namespace) -> Output:
    if args.column is not None and args.csv is None:
        raise InputError("--column", "only applies with --csv")
    history = parse_history(args.history) if args.csv is None else _read_csv(args.csv, args.column)
    forecast = client.forecast(
        args.model,
        history,
        version=args.version,
        routing_key=args.routing_key,
        horizon=args.horizon,
        sequence_length=args.sequence_length,
    )
    return forecast_json(forecast), forecast_text(forecast)


def _models(client: ForecastClient, args: argparse.Namespace) -> Output:
    if args.name is not None:
        model = client.get_model(args.name)
        return {"model": model_json(model)}, model_text(model)
    models = client.list_models()
    return {"models": [model_json(m) for m in models]}, models_text(models)


def _read_csv(path: str, column: str | None) -> list[float]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise InputError("--csv", f"cannot read {path}: {reason}") from None
    return parse_csv(text, column)


def _fail(args: argparse.Namespace, error: ForecastError) -> int:
    if args.json:
        sys.stderr.write(json.dumps(error_json(error)) + "\n")
    else:
        sys.stderr.write(error_text(error))
    return EXIT_INVALID if error.code in _INVALID_INPUT_CODES else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
