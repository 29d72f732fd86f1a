"""The `forecast` command: forecast, compare versions, score and plot from the shell.

    forecast predict --model lstm_timeseries --horizon 12 --history "1,2,3,..."
    forecast predict --model lstm_timeseries --csv sales.csv --column units
    forecast predict --model lstm_timeseries --csv sales.csv --interval 0.8 --quantile 0.9
    forecast predict --model lstm_timeseries --csv sales.csv --date-column day --column units \
        --frequency D --fill linear             # dated rows; gaps and empty cells filled
    forecast predict --model lstm_timeseries --history "1,2,..." --start 2024-01-01 --frequency D
    forecast --json models
    forecast models lstm_timeseries
    forecast compare --model lstm_timeseries --csv sales.csv --versions 1,2 --horizon 8
    forecast report --forecast-id 7d0c... --actuals "318.2,318.9" [--offset 2 | --start DATE]
    forecast experiment --model lstm_timeseries
    forecast plot --model lstm_timeseries --csv sales.csv --actuals "..." --output plot.png
    forecast plot --model lstm_timeseries --csv sales.csv --interval 0.8 --interval 0.95 \
        --output plot.png
    forecast backtest --model lstm_timeseries --csv sales.csv --date-column day --column units \
        --horizon 12 --windows 8 [--step 4] [--versions 1,2,moving_average:1] \
        [--intervals 0.8,0.95] [--per-window] [--plot mae.png]
    forecast backtest --model lstm_timeseries --csv stores.csv --id-column store \
        --date-column day --column units --horizon 12 --windows 8   # several series, one CSV
    forecast backtest ... --wait          # as an operation: a progress bar, no --timeout limit
    forecast backtest ... --detach        # print the operation's name and exit
    forecast operations list | get NAME | wait NAME | cancel NAME | delete NAME
    forecast --cacert ca.pem --token-file token models      # a gateway with TLS and tokens

Every command takes the connection options, named like grpcurl's: --cacert
(TLS, verifying the gateway with this CA), --tls (TLS with the system's
CAs), --cert/--key (a client certificate, mTLS), --token or --token-file
(sent as `authorization: Bearer <token>`), --plaintext (ignore the TLS
environment variables). Each has an environment variable used when the flag
is absent: FORECAST_CACERT, FORECAST_TLS, FORECAST_CERT, FORECAST_KEY,
FORECAST_TOKEN, FORECAST_TOKEN_FILE. No token is ever printed.

Time: --date-column sends each row's date (ISO 8601; UTC unless it has an
offset) as the series' timestamps, --start the time of the first value;
--frequency is the spacing as a pandas offset alias (D, h, 15min, W-SUN, MS,
...; inferred from the dates when left out); empty CSV cells are missing
values, and missing days are gaps: --fill linear|previous|zero fills them,
otherwise the gateway refuses those in the window the model reads. The
forecast then has a TIME column (JSON: timestamps), and `forecast plot`
dates on its x axis.

Output is a plain-text table, or with --json the response as JSON (proto JSON
names). Errors go to stderr; exit status 2 means the input was invalid
(including INVALID_ARGUMENT, NOT_FOUND and OUT_OF_RANGE from the gateway), 1
means the call failed otherwise (e.g. UNAVAILABLE, DEADLINE_EXCEEDED).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import NoReturn, TypedDict

import grpc

from forecast_client.cli_operations import add_operations_commands, wait_for
from forecast_client.client import BacktestTarget, Comparison, ForecastClient, SeriesInput
from forecast_client.connection import SettingError, read_token_file
from forecast_client.errors import FieldViolation, ForecastError
from forecast_client.render import (
    actuals_json,
    actuals_text,
    backtest_json,
    backtest_text,
    comparison_json,
    comparison_text,
    error_json,
    error_text,
    experiment_json,
    experiment_text,
    experiments_json,
    experiments_text,
    forecast_json,
    forecast_text,
    model_json,
    model_text,
    models_text,
    operation_json,
)
from forecast_client.series_input import (
    CsvSeries,
    InputError,
    parse_history,
    parse_names,
    parse_values,
    read_csv,
)
from forecast_client.times import FILL_METHODS, parse_time

DEFAULT_TARGET = "localhost:50051"
DEFAULT_PLOT_LAST = 104  # = forecast_client.plot.DEFAULT_LAST (not imported: matplotlib is slow)
EXIT_FAILED = 1
EXIT_INVALID = 2
# What a command returns: the JSON object for --json and the plain-text rendering.
Output = tuple[object, str]
_INVALID_INPUT_CODES = frozenset(
    {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OUT_OF_RANGE}
)
# Connection options: the flag, its environment variable, what it takes.
_CONNECTION_OPTIONS = (
    ("--cacert", "FORECAST_CACERT", "FILE", "PEM CA that signed the gateway's certificate (TLS)"),
    ("--cert", "FORECAST_CERT", "FILE", "PEM client certificate for mTLS (with --key)"),
    ("--key", "FORECAST_KEY", "FILE", "PEM private key of --cert"),
    ("--token", "FORECAST_TOKEN", "TOKEN", "bearer token (visible in `ps`: prefer --token-file)"),
    ("--token-file", "FORECAST_TOKEN_FILE", "FILE", "file holding the bearer token"),
)
_TLS_FILES = ("cacert", "cert", "key")


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
        description="Forecast one series, with prediction intervals (--interval) and "
        "quantiles (--quantile) if asked for. Negative first values need '=': --history=-1,2,3.",
    )
    predict.add_argument("--model", required=True, help="model name, e.g. lstm_timeseries")
    predict.add_argument("--version", default="", help="pin a version (default: gateway picks)")
    predict.add_argument("--routing-key", default="", help="series/customer key for routing")
    _add_request_options(predict)
    predict.set_defaults(handler=_predict)

    models = commands.add_parser(
        "models", parents=[common], help="list the models, or describe one"
    )
    models.add_argument("name", nargs="?", help="describe only this model")
    models.set_defaults(handler=_models)

    compare = commands.add_parser(
        "compare",
        parents=[common],
        help="run one series on several versions and compare the forecasts",
        description="Run the same request on several versions of a model (CompareVersions): "
        "each version's forecast and latency (and its own intervals and quantiles if asked for), "
        "and how far apart they are. Nothing is recorded for A/B scoring.",
    )
    _add_compare_options(compare)
    compare.set_defaults(handler=_compare)

    report = commands.add_parser(
        "report",
        parents=[common],
        help="report observed values for a forecast and print its scores",
        description="Report actuals for an earlier forecast (ReportActuals) and print the "
        "scores of the version that served it and of any shadow version. Negative first "
        "values need '=': --actuals=-1,2.",
    )
    report.add_argument(
        "--forecast-id", required=True, help="the forecastId of a predict (or batch) answer"
    )
    report.add_argument(
        "--actuals", required=True, help='observed values for consecutive steps: "1,2,3"'
    )
    first_step = report.add_mutually_exclusive_group()
    first_step.add_argument(
        "--offset",
        type=int,
        default=0,
        help="horizon step of the first actual (0: the first forecast step)",
    )
    first_step.add_argument(
        "--start",
        metavar="TIME",
        help="time of the first actual, one of the forecast's timestamps (ISO 8601, UTC "
        "unless it has an offset), instead of --offset",
    )
    report.set_defaults(handler=_report)

    experiment = commands.add_parser(
        "experiment",
        parents=[common],
        help="A/B results of a model: the verdict, traffic, accuracy, latency, tests",
        description="The verdict of each version pair first (always valid, however often you "
        "look), then per version: requests served and shadowed, forecasts with actuals, mean "
        "MAE/sMAPE/MASE, latency percentiles, how the intervals covered and the quantiles "
        "scored; then the tests of each version pair (GetExperiment). --list lists the "
        "model's experiments (ListExperiments).",
    )
    experiment.add_argument("--model", required=True, help="model name, e.g. lstm_timeseries")
    experiment.add_argument(
        "--experiment",
        default="",
        metavar="NAME",
        help="the experiment to report (default: the model's current one)",
    )
    experiment.add_argument(
        "--list", action="store_true", help="list the model's experiments instead (newest first)"
    )
    experiment.set_defaults(handler=_experiment)

    plot = commands.add_parser(
        "plot",
        parents=[common],
        help="draw the versions' forecasts of one series to a PNG",
        description="Call CompareVersions and draw one PNG: the last --last points of the "
        "history, each version's forecast continuing from its end with its --interval bands "
        "(lighter for wider), and the actuals if given.",
    )
    _add_compare_options(plot)
    actuals = plot.add_mutually_exclusive_group()
    actuals.add_argument("--actuals", help='observed values for steps 1, 2, ...: "1,2,3"')
    actuals.add_argument("--actuals-csv", metavar="FILE", help="CSV file with the actuals")
    plot.add_argument("--actuals-column", help="CSV column of --actuals-csv")
    plot.add_argument(
        "--last",
        type=_positive_int,
        default=DEFAULT_PLOT_LAST,
        metavar="N",
        help=f"history points to show (default: {DEFAULT_PLOT_LAST})",
    )
    plot.add_argument("--output", required=True, metavar="FILE", help="PNG file to write")
    plot.set_defaults(handler=_plot)

    backtest = commands.add_parser(
        "backtest",
        parents=[common],
        help="score versions on your own history: rolling-origin windows, compared",
        description="Backtest (rolling origin): cut each series into --windows windows of "
        "--horizon points, their origins --step points apart (default: --horizon), the last "
        "ending at the series' end; every version forecasts every window from the history "
        "before it. Prints one row per version (MAE, sMAPE, MASE, RMSE, and the coverage and "
        "Winkler score of each --intervals coverage), a Diebold-Mariano verdict per pair and "
        "what MASE is scaled by. Nothing is recorded for A/B scoring. A long run needs a "
        "longer --timeout, or --wait (an operation: --timeout is then per call).",
    )
    backtest.add_argument("--model", required=True, help="model name, e.g. lstm_timeseries")
    backtest.add_argument(
        "--versions",
        action="append",
        default=[],
        metavar="VERSIONS",
        help='versions to score: "1,2", each VERSION (of --model) or MODEL:VERSION (repeat for '
        "more; default: every ready version of --model). Not --target: that is the gateway",
    )
    backtest.add_argument(
        "--horizon", type=_positive_int, required=True, help="points each window forecasts"
    )
    backtest.add_argument(
        "--windows", type=_positive_int, required=True, metavar="N", help="windows per series"
    )
    backtest.add_argument(
        "--step",
        type=_non_negative_int,
        default=0,
        help="points between consecutive origins (default 0: --horizon, no overlap)",
    )
    backtest.add_argument(
        "--sequence-length", type=int, default=0, help="window read (0: each version's own)"
    )
    backtest.add_argument(
        "--intervals",
        "--interval",
        dest="interval",
        type=_levels,
        action="extend",
        default=[],
        metavar="COVERAGES",
        help='score prediction intervals of these coverages: "0.8,0.95" (columns covNN%% '
        "winklerNN)",
    )
    backtest.add_argument(
        "--quantiles",
        "--quantile",
        dest="quantile",
        type=_levels,
        action="extend",
        default=[],
        metavar="LEVELS",
        help='score quantiles at these levels: "0.1,0.9" (column pinballNN)',
    )
    backtest.add_argument(
        "--per-window", action="store_true", help="also print (and return) every window's scores"
    )
    _add_series_options(backtest)
    backtest.add_argument(
        "--id-column",
        metavar="NAME",
        help="CSV column of each row's series id: a long CSV holding several series, each "
        "backtested on its own rows (in file order)",
    )
    backtest.add_argument(
        "--plot", metavar="FILE", help="also draw --plot-metric by horizon step to this PNG"
    )
    backtest.add_argument(
        "--plot-metric",
        choices=("mae", "mase"),
        default="mae",
        help="the score --plot draws per step (default: mae)",
    )
    how = backtest.add_mutually_exclusive_group()
    how.add_argument(
        "--wait",
        action="store_true",
        help="run it as a long-running operation (StartBacktest): a progress bar on stderr "
        "(a terminal), the same output at the end, no --timeout limit on the wait; Ctrl-C "
        "leaves it running",
    )
    how.add_argument(
        "--detach",
        action="store_true",
        help="start it as an operation, print its name and exit (see `forecast operations`)",
    )
    backtest.set_defaults(handler=_backtest)
    operations = add_operations_commands(commands, common)

    for each in (parser, predict, models, compare, report, experiment, plot, backtest, *operations):
        each.json_errors = json_errors
    return parser


def _add_request_options(parser: argparse.ArgumentParser) -> None:
    """--horizon, --sequence-length, --interval, --quantile and the series: --history or --csv."""
    parser.add_argument("--horizon", type=int, default=0, help="steps (0: model default)")
    parser.add_argument(
        "--sequence-length", type=int, default=0, help="window (0: the version's own)"
    )
    parser.add_argument(
        "--interval",
        type=_level,
        action="append",
        default=[],
        metavar="COVERAGE",
        help="prediction interval of this coverage, e.g. 0.8 (repeat for more; columns loNN hiNN)",
    )
    parser.add_argument(
        "--quantile",
        type=_level,
        action="append",
        default=[],
        metavar="LEVEL",
        help="quantile forecast at this level, e.g. 0.9 (repeat for more; column qNN)",
    )
    _add_series_options(parser)


def _add_series_options(parser: argparse.ArgumentParser) -> None:
    """The series (--history, or --csv [--column] [--date-column]), --start, --frequency, --fill."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--history", help='values, oldest first: "1,2,3" or "1 2 3" ("nan": missing)'
    )
    source.add_argument(
        "--csv",
        metavar="FILE",
        help="CSV file, oldest row first ('-': stdin); empty cells are missing values",
    )
    parser.add_argument("--column", help="CSV column name (default: the last all-numeric column)")
    parser.add_argument(
        "--date-column",
        metavar="NAME",
        help="CSV column of each row's date or time (ISO 8601, UTC unless it has an offset), "
        "sent as the series' timestamps",
    )
    parser.add_argument(
        "--start", metavar="TIME", help="time of the first value (ISO 8601), with --frequency"
    )
    parser.add_argument(
        "--frequency",
        default="",
        metavar="ALIAS",
        help="spacing of the points as a pandas offset alias: D, h, 15min, W-SUN, MS, QS, "
        "YS, B, ... (default with --date-column: inferred from the dates)",
    )
    parser.add_argument(
        "--fill",
        choices=sorted(FILL_METHODS),
        help="fill missing values (empty cells, missing dates) this way (default: none; the "
        "gateway refuses any in the window the model reads)",
    )


def _add_compare_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model name, e.g. lstm_timeseries")
    parser.add_argument(
        "--versions", default="", help='versions to run, "1,2" (default: every ready version)'
    )
    _add_request_options(parser)


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
    for flag, variable, metavar, text in _CONNECTION_OPTIONS:
        parser.add_argument(
            flag, default=default(None), metavar=metavar, help=f"{text} [{variable}]"
        )
    transport = parser.add_mutually_exclusive_group()
    transport.add_argument(
        "--tls",
        action="store_true",
        default=default(False),
        help="TLS, verifying the gateway with the system's CAs (implied by --cacert) "
        "[FORECAST_TLS=1]",
    )
    transport.add_argument(
        "--plaintext",
        action="store_true",
        default=default(False),
        help="no TLS, whatever the FORECAST_CACERT/CERT/KEY/TLS variables say",
    )


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _level(text: str) -> float:
    """A number; whether it is a valid level (in (0, 1), distinct) is the gateway's call."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _levels(text: str) -> list[float]:
    """Levels as "0.8,0.95" or "0.8 0.95" (their validity is the gateway's call, as `_level`)."""
    try:
        return parse_values(text, "levels")
    except InputError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of numbers") from None


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _run(args: argparse.Namespace) -> Output:
    with _connect(args, os.environ) as client:
        result: Output = args.handler(client, args)
    return result


def _connect(args: argparse.Namespace, environ: Mapping[str, str]) -> ForecastClient:
    """The client for the connection options: each flag, else its environment variable.

    Records on `args` whether the channel is TLS and a token is sent, for the
    hints of `_fail`. A setting that cannot be used is an InputError naming
    the flag, or the variable it came from.
    """
    # option name (as in SettingError.option) -> (value, where it came from)
    chosen: dict[str, tuple[str | None, str]] = {}
    for flag, variable, _, _ in _CONNECTION_OPTIONS:
        value = getattr(args, flag[2:].replace("-", "_"))
        from_env = value is None and bool(environ.get(variable))
        chosen[flag[2:].replace("-", "_")] = (
            environ[variable] if from_env else value,
            variable if from_env else flag,
        )
    tls = args.tls or _env_flag(environ, "FORECAST_TLS")
    if args.plaintext:
        given = [chosen[o][1] for o in _TLS_FILES if chosen[o][0] and chosen[o][1][0] == "-"]
        if given or args.tls:
            raise InputError(
                "--plaintext", f"cannot be combined with {', '.join(given) or '--tls'}"
            )
        tls = False
        chosen.update({option: (None, f"--{option}") for option in _TLS_FILES})
    (cacert, _), (cert, _), (key, _) = (chosen[o] for o in _TLS_FILES)
    token, token_file = chosen["token"][0], chosen["token_file"][0]
    try:
        if token is None and token_file is not None:
            token = read_token_file(token_file)
            chosen["token"] = (token, chosen["token_file"][1])
        client = ForecastClient(
            args.target,
            timeout_s=args.timeout,
            tls=tls,
            cacert=cacert,
            cert=cert,
            key=key,
            token=token,
        )
    except SettingError as error:
        raise InputError(chosen[error.option][1], str(error)) from None
    args.secure, args.has_token = client.secure, token is not None
    return client


def _env_flag(environ: Mapping[str, str], variable: str) -> bool:
    value = environ.get(variable, "").strip().lower()
    if value in {"", "0", "false", "no", "off"}:
        return False
    if value in {"1", "true", "yes", "on"}:
        return True
    raise InputError(variable, f"expected 1 or 0, got {value!r}")


def _predict(client: ForecastClient, args: argparse.Namespace) -> Output:
    series = _history(args)
    forecast = client.forecast(
        args.model,
        series.values,
        version=args.version,
        routing_key=args.routing_key,
        horizon=args.horizon,
        sequence_length=args.sequence_length,
        interval_coverages=args.interval,
        quantile_levels=args.quantile,
        **_time_args(args, series),
    )
    return forecast_json(forecast), forecast_text(forecast)


def _models(client: ForecastClient, args: argparse.Namespace) -> Output:
    if args.name is not None:
        model = client.get_model(args.name)
        return {"model": model_json(model)}, model_text(model)
    models = client.list_models()
    return {"models": [model_json(m) for m in models]}, models_text(models)


def _compare(client: ForecastClient, args: argparse.Namespace) -> Output:
    comparison = _compare_versions(client, args, _history(args))
    return comparison_json(comparison), comparison_text(comparison)


def _report(client: ForecastClient, args: argparse.Namespace) -> Output:
    actuals = parse_values(args.actuals, "--actuals")
    start = _parse_time(args.start, "--start") if args.start is not None else None
    report = client.report_actuals(args.forecast_id, actuals, offset=args.offset, start=start)
    return actuals_json(report), actuals_text(report)


def _experiment(client: ForecastClient, args: argparse.Namespace) -> Output:
    if args.list:
        experiments = client.list_experiments(args.model)
        return experiments_json(experiments), experiments_text(experiments)
    experiment = client.get_experiment(args.model, args.experiment)
    return experiment_json(experiment), experiment_text(experiment)


def _plotting() -> ModuleType:
    """forecast_client.plot (matplotlib: only imported when plotting), or FAILED_PRECONDITION."""
    try:
        plot = importlib.import_module("forecast_client.plot")
    except ImportError as error:
        if error.name is None or error.name.split(".")[0] != "matplotlib":
            raise
        message = "plotting needs matplotlib: pip install 'forecast-client[plot]'"
        raise ForecastError(grpc.StatusCode.FAILED_PRECONDITION, message) from None
    return plot


def _plot(client: ForecastClient, args: argparse.Namespace) -> Output:
    forecast_png = _plotting().forecast_png
    series = _history(args)
    if args.actuals_column is not None and args.actuals_csv is None:
        raise InputError("--actuals-column", "only applies with --actuals-csv")
    actuals: list[float] = []
    if args.actuals is not None:
        actuals = parse_values(args.actuals, "--actuals")
    elif args.actuals_csv is not None:
        actuals = _read_csv(args.actuals_csv, args.actuals_column, field="--actuals-csv").values
    comparison = _compare_versions(client, args, series)
    png = forecast_png(
        comparison.model,
        series.values,
        comparison.forecasts,
        actuals=actuals,
        last=args.last,
        history_times=_history_times(args, series),
    )
    output = _write_png(args.output, png, "--output")
    return {"output": str(output), **comparison_json(comparison)}, f"{output}\n"


def _write_png(path: str, png: bytes, field: str) -> Path:
    output = Path(path)
    try:
        output.write_bytes(png)
    except OSError as error:
        raise InputError(field, f"cannot write {output}: {error.strerror}") from None
    return output


def _backtest(client: ForecastClient, args: argparse.Namespace) -> Output:
    if args.detach and args.plot is not None:
        raise InputError("--plot", "cannot be combined with --detach")
    backtest_png = _plotting().backtest_png if args.plot is not None else None
    series = _backtest_series(args)
    options = _backtest_options(args)
    if args.detach:
        operation = client.start_backtest(args.model, series, **options)
        return operation_json(operation), f"{operation.name}\n"
    if args.wait:
        started = client.start_backtest(args.model, series, **options)
        finished = wait_for(client, started.name, sys.stderr, json_lines=args.json)
        report = client.backtest_result(finished)
    else:
        report = client.backtest(args.model, series, **options)
    body, text = backtest_json(report), backtest_text(report)
    if backtest_png is not None:
        output = _write_png(args.plot, backtest_png(report, metric=args.plot_metric), "--plot")
        body = {**body, "plot": str(output)}
        text += f"\nplot: {output}\n"
    return body, text


class _BacktestOptions(TypedDict):
    horizon: int
    n_windows: int
    step: int
    targets: list[BacktestTarget]
    sequence_length: int
    interval_coverages: list[float]
    quantile_levels: list[float]
    per_window: bool
    start: datetime | None
    frequency: str
    fill: str | None


def _backtest_options(args: argparse.Namespace) -> _BacktestOptions:
    """The arguments of `backtest` and `start_backtest` besides the model and the series."""
    return {
        "horizon": args.horizon,
        "n_windows": args.windows,
        "step": args.step,
        "targets": [name for text in args.versions for name in parse_names(text)],
        "sequence_length": args.sequence_length,
        "interval_coverages": args.interval,
        "quantile_levels": args.quantile,
        "per_window": args.per_window,
        "start": _parse_time(args.start, "--start") if args.start is not None else None,
        "frequency": args.frequency,
        "fill": args.fill,
    }


def _backtest_series(args: argparse.Namespace) -> dict[str, SeriesInput]:
    """The series of --history or --csv: one, or one per id of --id-column, in file order.

    A single series is named after its file (its stem; "stdin" for '-') or
    "history"; each series keeps its rows' dates (--date-column).
    """
    if args.id_column is not None and args.csv is None:
        raise InputError("--id-column", "only applies with --csv")
    if args.id_column is None:
        series = _history(args)
        name = (
            "history" if args.csv is None else "stdin" if args.csv == "-" else Path(args.csv).stem
        )
        return {name: SeriesInput(series.values, timestamps=series.times)}
    if args.start is not None and args.date_column is not None:
        raise InputError(
            "--start", "cannot be combined with --date-column (the dates are the times)"
        )
    rows = _read_csv(args.csv, args.column, date_column=args.date_column, id_column=args.id_column)
    values: dict[str, list[float]] = {}
    times: dict[str, list[datetime]] = {}
    for index, series_id in enumerate(rows.ids or ()):
        values.setdefault(series_id, []).append(rows.values[index])
        if rows.times is not None:
            times.setdefault(series_id, []).append(rows.times[index])
    return {
        series_id: SeriesInput(history, timestamps=times.get(series_id))
        for series_id, history in values.items()
    }


def _compare_versions(
    client: ForecastClient, args: argparse.Namespace, series: CsvSeries
) -> Comparison:
    """CompareVersions; fails like `predict` (the first version's error) if no version ran.

    A version that fails while another runs is a row of the output, not an error.
    """
    comparison = client.compare_versions(
        args.model,
        series.values,
        versions=parse_names(args.versions),
        horizon=args.horizon,
        sequence_length=args.sequence_length,
        interval_coverages=args.interval,
        quantile_levels=args.quantile,
        **_time_args(args, series),
    )
    failed = [(f.version, f.error) for f in comparison.forecasts if f.error is not None]
    if failed and len(failed) == len(comparison.forecasts):
        version, error = failed[0]
        others = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise ForecastError(
            error.code,
            f"every version failed; version {version}{others}: {error.message}",
            error.reason,
            error.field_violations,
            domain=error.domain,
        )
    return comparison


def _history(args: argparse.Namespace) -> CsvSeries:
    """The series of --history, or of --csv [--column] [--date-column]."""
    for option in ("column", "date_column"):
        if getattr(args, option) is not None and args.csv is None:
            raise InputError(f"--{option.replace('_', '-')}", "only applies with --csv")
    if args.start is not None and args.date_column is not None:
        raise InputError(
            "--start", "cannot be combined with --date-column (the dates are the times)"
        )
    if args.csv is None:
        return CsvSeries(parse_history(args.history))
    return _read_csv(args.csv, args.column, date_column=args.date_column)


class _TimeArgs(TypedDict):
    start: datetime | None
    frequency: str
    timestamps: list[datetime] | None
    fill: str | None


def _time_args(args: argparse.Namespace, series: CsvSeries) -> _TimeArgs:
    """The client's time arguments: --start or the CSV's dates, --frequency, --fill."""
    start = _parse_time(args.start, "--start") if args.start is not None else None
    return {
        "start": start,
        "frequency": args.frequency,
        "timestamps": series.times,
        "fill": args.fill,
    }


def _parse_time(text: str, field: str) -> datetime:
    try:
        return parse_time(text, field)
    except ValueError as error:
        raise InputError(field, str(error).removeprefix(f"{field}: ")) from None


def _history_times(args: argparse.Namespace, series: CsvSeries) -> list[datetime] | None:
    """The history's times for the plot: the CSV's dates, or --start stepped by --frequency.

    Stepping a calendar frequency takes pandas (the `pandas` extra); without
    it, or with a frequency pandas does not know, the plot counts steps.
    """
    if series.times is not None or args.start is None or not args.frequency:
        return series.times
    try:
        import pandas
    except ImportError:
        return None
    try:
        start = _parse_time(args.start, "--start")
        index = pandas.date_range(start, periods=len(series.values), freq=args.frequency)
    except (ValueError, TypeError, InputError):
        return None
    return [moment.to_pydatetime() for moment in index]


def _read_csv(
    path: str,
    column: str | None,
    *,
    field: str = "--csv",
    date_column: str | None = None,
    id_column: str | None = None,
) -> CsvSeries:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise InputError(field, f"cannot read {path}: {reason}") from None
    try:
        return read_csv(text, column, date_column, id_column)
    except InputError as error:
        if field == "--csv":
            raise
        names = {"--csv": field, "--column": field.replace("-csv", "-column")}
        raise InputError(names.get(error.field, error.field), error.description) from None


def _fail(args: argparse.Namespace, error: ForecastError) -> int:
    hint = _hint(error, args)
    if args.json:
        sys.stderr.write(json.dumps(error_json(error, hint)) + "\n")
    else:
        sys.stderr.write(error_text(error, hint))
    return EXIT_INVALID if error.code in _INVALID_INPUT_CODES else EXIT_FAILED


def _hint(error: ForecastError, args: argparse.Namespace) -> str | None:
    """What to try for the errors of a secured gateway, where gRPC's own words are cryptic."""
    secure, has_token = getattr(args, "secure", False), getattr(args, "has_token", False)
    code = error.code
    if code is grpc.StatusCode.UNAUTHENTICATED and not has_token:
        return "this call needs a token: pass --token-file FILE (or --token, FORECAST_TOKEN)"
    if code is grpc.StatusCode.PERMISSION_DENIED and error.reason == "TOKEN_INVALID":
        return "the gateway does not accept this token"
    if error.reason == "MISSING_VALUES":
        return "fill them with --fill linear|previous|zero, or send the values"
    if code is not grpc.StatusCode.UNAVAILABLE or error.reason is not None:
        return None  # the gateway's own UNAVAILABLE (e.g. TRITON_UNAVAILABLE) explains itself
    if not secure:
        return (
            f"is a gateway listening on {args.target}? If it uses TLS, pass --cacert FILE "
            "(the CA that signed its certificate) or --tls"
        )
    return (
        f"is a gateway listening on {args.target} with TLS? --cacert must be the CA that "
        "signed its certificate, which must name the host you dial; a gateway that asks "
        "for client certificates needs --cert and --key"
    )


if __name__ == "__main__":
    sys.exit(main())
