"""Fuzzing the real gateway process: thousands of generated requests, every answer documented.

Hypothesis draws ForecastRequest, ForecastBatchRequest, CompareVersionsRequest,
ReportActualsRequest and GetModelRequest/GetExperimentRequest from interesting
values (real and fake model names, odd versions, empty/huge/unicode strings,
histories of 0..12,000 points with NaN, infinities, huge and subnormal values,
int32 extremes) and sends them to the session's gateway, one at a time. Every
answer must be a forecast with finite values of the right length, or a
documented status (INVALID_ARGUMENT naming a real field, NOT_FOUND,
UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED) with google.rpc ErrorInfo;
never INTERNAL or UNKNOWN. The gateway process must stay up, its memory flat,
and no caller-chosen string may become a metric label.

About 2,800 cases in ~60 s on 2 cores (plus a 1,200-request warm-up).
FORECAST_FUZZ_SCALE=10 runs ten times as many (a longer hunt; not part of the
default suite).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forecast.v1 import forecast_pb2, forecast_service_pb2_grpc
from forecast.v1 import forecast_service_pb2 as pb
from tests.conftest import GatewayProcess, served_models

Stub = forecast_service_pb2_grpc.ForecastServiceStub

FUZZ_SCALE = float(os.environ.get("FORECAST_FUZZ_SCALE", "1"))
settings.register_profile(
    "gateway-fuzz",
    deadline=None,  # each case is a network round trip; timing is not the property
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
    print_blob=True,
)
FUZZ = settings.get_profile("gateway-fuzz")


def examples(count: int) -> int:
    return max(1, round(count * FUZZ_SCALE))


MAX_MESSAGE_BYTES = 1024 * 1024  # config/gateway.toml max_message_bytes
CALL_TIMEOUT_S = 30.0
# Growth of the gateway's RSS allowed between the end of the warm-up and the
# end of the fuzz run. Measured (2 cores, ~128 MB after warm-up): +10 to +14 MB
# over ~3,000 cases, and +8 MB over 11,200 cases (FORECAST_FUZZ_SCALE=4), where
# RSS sampled every 250 cases rose over the first ~1,500 and then stayed within
# 135-143 MB: allocator pools and SQLite's page cache settling, not a leak.
# Keeping one 12,000-point history (96 KB) per request would add ~270 MB over
# 2,800 requests, and a metric series per fake model name is caught by the label
# check below.
RSS_GROWTH_BOUND_MB = 32.0

MODELS = ("lstm_timeseries", "moving_average")
DOCUMENTED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
DOCUMENTED_CODES = {code.value[0] for code in DOCUMENTED}

# --- strategies ----------------------------------------------------------------------------

# Each field is drawn from plausible values most of the time and from odd ones
# otherwise: about a third of the requests are valid, the rest break one or
# more fields.
T = TypeVar("T")


def mostly(plausible: st.SearchStrategy[T], *odd: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """`plausible` 4 times in 5, else one of `odd` (one_of alone would weigh them evenly)."""

    @st.composite
    def pick(draw: st.DrawFn) -> T:
        if draw(st.integers(0, 4)) < 4:
            return draw(plausible)
        drawn: T = draw(st.one_of(*odd))
        return drawn

    return pick()


HUGE_TEXT = st.builds(
    lambda char, count: char * count,
    st.sampled_from(["x", "9", "é", "😀", "\u202e", "\x00"]),
    st.sampled_from([300, 3_000, 20_000, 120_000]),
)
ODD_NAMES = [
    "",
    "no_such_model",
    "LSTM_TIMESERIES",
    "lstm_timeseries ",
    " moving_average",
    "moving_average\x00",
    "../moving_average",
    "moving_average/1",
    "lstm_timeseries\n",
    "\uff4c\uff53\uff54\uff4d_timeseries",  # fullwidth "lstm"
]
REAL_NAMES = st.sampled_from(MODELS)
NAMES = mostly(REAL_NAMES, st.sampled_from(ODD_NAMES), st.text(max_size=24), HUGE_TEXT)
ODD_VERSIONS = ["99", "-1", "abc", "0", "01", "٢", "²", "2 ", "1e3", "9" * 19, "9" * 40]
REAL_VERSIONS = st.sampled_from(["", "", "1", "2"])
VERSIONS = mostly(REAL_VERSIONS, st.sampled_from(ODD_VERSIONS), st.text(max_size=6), HUGE_TEXT)
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INTERESTING_INTS = [0, 1, 2, 5, 9, 10, 11, 12, 51, 52, 53, 63, 64, 65, 1023, 1024, 1025, 10_000]
INT32 = st.one_of(
    st.sampled_from(INTERESTING_INTS),
    st.sampled_from([-1, -2, INT32_MIN, INT32_MIN + 1, INT32_MAX, INT32_MAX - 1]),
    st.integers(-3, 70),
    st.integers(INT32_MIN, INT32_MAX),
)
HORIZONS = mostly(st.integers(0, 64), INT32)
WINDOWS = mostly(st.just(0), st.integers(1, 60), INT32)
SPECIAL_VALUES = [
    math.nan,
    -math.nan,
    math.inf,
    -math.inf,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    1e300,
    1.0000000000000002e150,  # just over the gateway's MAX_ABS_VALUE
    1e150,
    -1e150,
    3.5e38,  # over float32's range
    5e-324,  # smallest subnormal
    -0.0,
    1e-45,
]
LENGTHS = [0, 1, 2, 9, 10, 11, 51, 52, 53, 1023, 1024, 1025, 9_999, 10_000, 10_001, 12_000]
SCALES = [1.0, 1.0, 1.0, 315.0, -1.0, 1e-300, 1e-9, 1e6, 1e38, 1e100, 1e148, -1e6]
SHAPES: dict[str, Callable[[np.random.Generator, int], npt.NDArray[np.float64]]] = {
    "walk": lambda rng, n: rng.normal(size=n).cumsum(),
    "noise": lambda rng, n: rng.normal(size=n),
    "constant": lambda rng, n: np.full(n, 1.0 + rng.random()),
    "zeros": lambda rng, n: np.zeros(n),
    "alternating": lambda rng, n: np.where(np.arange(n) % 2 == 0, 1.0, -1.0),
    "seasonal": lambda rng, n: np.sin(np.arange(n) * 2 * np.pi / 52) + 0.1 * rng.normal(size=n),
    "spiky": lambda rng, n: np.where(rng.random(n) < 0.01, 1e6, 1.0),
}
SPECIALS = st.lists(st.tuples(st.integers(0, 2**31), st.sampled_from(SPECIAL_VALUES)), max_size=3)


@st.composite
def histories(draw: st.DrawFn, max_length: int = 12_000) -> list[float]:
    """A series built from a few drawn parameters (cheap to draw even at 12,000 points)."""
    length = draw(
        mostly(
            st.integers(52, 400),
            st.sampled_from([n for n in LENGTHS if n <= max_length]),
            st.integers(0, 120),
            st.integers(0, max_length),
        )
    )
    shape = draw(st.sampled_from(sorted(SHAPES)))
    scale = draw(st.sampled_from(SCALES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = SHAPES[shape](rng, length) * scale + draw(st.sampled_from([0.0, 0.0, 315.0, -1e4]))
    if length:
        for index, value in draw(mostly(st.just([]), SPECIALS)):
            values[index % length] = value
    return [float(v) for v in values]


def forecast_requests() -> st.SearchStrategy[pb.ForecastRequest]:
    return st.builds(
        pb.ForecastRequest,
        model=NAMES,
        version=VERSIONS,
        routing_key=st.one_of(st.just(""), st.text(max_size=16), HUGE_TEXT),
        history=histories(),
        horizon=HORIZONS,
        sequence_length=WINDOWS,
    )


SERIES_IDS = mostly(st.text(min_size=1, max_size=8), st.sampled_from(["a", "b", ""]), HUGE_TEXT)


def batch_requests() -> st.SearchStrategy[pb.ForecastBatchRequest]:
    series = st.builds(
        pb.Series,
        id=SERIES_IDS,
        history=histories(),
        routing_key=st.one_of(st.just(""), st.text(max_size=8)),
    )
    return st.builds(
        pb.ForecastBatchRequest,
        model=NAMES,
        version=VERSIONS,
        horizon=HORIZONS,
        sequence_length=WINDOWS,
        series=mostly(
            st.lists(series, min_size=1, max_size=14, unique_by=lambda s: s.id),
            st.lists(series, max_size=14),
        ),
    )


def compare_requests() -> st.SearchStrategy[pb.CompareVersionsRequest]:
    return st.builds(
        pb.CompareVersionsRequest,
        model=NAMES,
        versions=mostly(st.just([]), st.lists(VERSIONS, max_size=4)),
        history=histories(),
        horizon=HORIZONS,
        sequence_length=WINDOWS,
    )


# --- the property ----------------------------------------------------------------------------


def error_details(
    error: grpc.RpcError,
) -> tuple[error_details_pb2.ErrorInfo | None, list[str]]:
    """The ErrorInfo (None if absent) and BadRequest fields of a failed call."""
    status = rpc_status.from_call(error)
    if status is None:
        return None, []
    info: error_details_pb2.ErrorInfo | None = None
    fields: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            fields += [v.field for v in bad_request.field_violations]
    return info, fields


def names_a_field(path: str, descriptors: tuple[Descriptor, ...]) -> bool:
    """Whether `path` (e.g. "series[3].id", "history") is a field path of one of the messages."""
    return any(_walk(path.split("."), descriptor) for descriptor in descriptors)


def _walk(parts: list[str], descriptor: Descriptor) -> bool:
    match = re.fullmatch(r"([a-z_]+)(\[\d+\])?", parts[0])
    if match is None or match.group(1) not in descriptor.fields_by_name:
        return False
    found = descriptor.fields_by_name[match.group(1)]
    if match.group(2) and not found.is_repeated:
        return False
    if len(parts) == 1:
        return True
    return found.message_type is not None and _walk(parts[1:], found.message_type)


@dataclass
class Tally:
    """Outcomes of the fuzz run, by RPC and code (printed with -s, checked at the end)."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    forecast_ids: list[str] = field(default_factory=list)
    calls: int = 0
    rss_samples: list[tuple[int, float]] = field(default_factory=list)  # (calls, MB)
    ran: set[str] = field(default_factory=set)
    """The fuzz tests that ran in this session (the final check runs the others itself)."""

    def add(self, rpc: str, code: str) -> None:
        per_rpc = self.counts.setdefault(rpc, {})
        per_rpc[code] = per_rpc.get(code, 0) + 1

    def called(self, pid: int) -> None:
        self.calls += 1
        if self.calls % 250 == 0:
            self.rss_samples.append((self.calls, rss_mb(pid)))


TALLY = Tally()


def assert_documented_error(error: grpc.RpcError, request: Message) -> str:
    """A failed call's status is documented and carries the details it must carry."""
    code = error.code()
    assert code in DOCUMENTED, f"{code.name}: {error.details()}"
    if request.ByteSize() > MAX_MESSAGE_BYTES:
        # Refused by gRPC's transport before any gateway code runs: no details.
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, code
        return "RESOURCE_EXHAUSTED(size)"
    info, fields = error_details(error)
    assert info is not None, f"{code.name} without ErrorInfo: {error.details()}"
    assert info.domain == "forecast.v1" and re.fullmatch(r"[A-Z][A-Z_]*", info.reason), info
    assert info.metadata["request_id"]
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        assert fields, f"INVALID_ARGUMENT without a field violation: {error.details()}"
        for path in fields:
            assert names_a_field(path, (cast(Descriptor, request.DESCRIPTOR),)), path
    return code.name


def assert_in_band_error(error: forecast_pb2.ForecastError, *messages: Descriptor) -> None:
    """A per-series / per-version error is documented too."""
    assert error.code in DOCUMENTED_CODES, f"in-band code {error.code}: {error.message}"
    assert re.fullmatch(r"[A-Z][A-Z_]*", error.reason), error.reason
    if error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]:
        assert error.field_violations, error.message
        for violation in error.field_violations:
            assert names_a_field(violation.field, messages), violation.field


def assert_finite(values: Any, length: int) -> None:
    assert len(values) == length > 0
    assert all(math.isfinite(v) for v in values), list(values)[:8]


def call(
    rpc: str, method: Callable[..., Any], request: Message, gateway: GatewayProcess
) -> Any | None:
    """Send one request; return the reply, or None after checking a documented error."""
    try:
        reply = method(request, timeout=CALL_TIMEOUT_S)
        TALLY.add(rpc, "OK")
        return reply
    except grpc.RpcError as error:
        TALLY.add(rpc, assert_documented_error(error, request))
        return None
    finally:
        assert gateway.process.poll() is None, "the gateway process died"
        TALLY.called(gateway.process.pid)


# --- fixtures ----------------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@dataclass
class Baseline:
    rss_mb: float
    requests: int
    log_offset: int


@dataclass(frozen=True)
class Catalog:
    models: dict[str, forecast_pb2.Model]

    def window(self, model: str, version: str) -> int:
        return next(v.sequence_length for v in self.models[model].versions if v.version == version)


@pytest.fixture(scope="module")
def catalog(stub: Stub) -> Catalog:
    listed = stub.ListModels(pb.ListModelsRequest(), timeout=10)
    return Catalog({m.name: m for m in listed.models})


def warm_up(stub: Stub) -> None:
    """Every kind of request the fuzz sends, incl. the largest, so allocator pools settle."""
    rng = np.random.default_rng(0)
    for i in range(300):
        length = [12, 60, 1_100, 10_000, 12_000][i % 5]
        history = (300 + rng.normal(size=length).cumsum()).tolist()
        model = MODELS[i % 2] if i % 7 else "x" * (i * 10)
        calls: list[tuple[Callable[..., Any], Message]] = [
            (stub.Forecast, pb.ForecastRequest(model=model, history=history, horizon=i % 70)),
            (
                stub.CompareVersions,
                pb.CompareVersionsRequest(model=model, history=history, horizon=i % 70),
            ),
            (stub.GetModel, pb.GetModelRequest(name=model)),
        ]
        if i % 10 == 0:
            series = [pb.Series(id=str(k), history=history[-10_000:]) for k in range(13)]
            calls.append((stub.ForecastBatch, pb.ForecastBatchRequest(model=model, series=series)))
        for method, request in calls:
            with contextlib.suppress(grpc.RpcError):
                method(request, timeout=CALL_TIMEOUT_S)


@pytest.fixture(autouse=True)
def note_ran(request: pytest.FixtureRequest) -> Iterator[None]:
    """Remember which fuzz tests ran (see test_fuzz_run_left_the_gateway_healthy)."""
    yield
    TALLY.ran.add(request.node.originalname)


@pytest.fixture(scope="module", autouse=True)
def baseline(stub: Stub, gateway: GatewayProcess) -> Iterator[Baseline]:
    """Warm up, then note RSS, the request count and the log's length; the gateway outlives all."""
    warm_up(stub)
    yield Baseline(rss_mb(gateway.process.pid), TALLY.calls, len(gateway.log_text()))
    assert gateway.process.poll() is None


# --- the fuzz tests ----------------------------------------------------------------------------


@settings(FUZZ, max_examples=examples(1400))
@given(request=forecast_requests())
def test_fuzz_forecast(
    stub: Stub, gateway: GatewayProcess, catalog: Catalog, request: pb.ForecastRequest
) -> None:
    reply = call("Forecast", stub.Forecast, request, gateway)
    if reply is None:
        return
    model = catalog.models[request.model]
    assert reply.model == request.model
    assert reply.horizon == (request.horizon or model.default_horizon)
    assert_finite(reply.values, reply.horizon)
    if request.version:
        assert reply.version == request.version
    assert reply.sequence_length == (
        request.sequence_length or catalog.window(request.model, reply.version)
    )
    TALLY.forecast_ids.append(reply.forecast_id)


@settings(FUZZ, max_examples=examples(250))
@given(request=batch_requests())
def test_fuzz_forecast_batch(
    stub: Stub, gateway: GatewayProcess, catalog: Catalog, request: pb.ForecastBatchRequest
) -> None:
    reply = call("ForecastBatch", stub.ForecastBatch, request, gateway)
    if reply is None:
        return
    assert [r.id for r in reply.results] == [s.id for s in request.series]
    horizon = request.horizon or catalog.models[request.model].default_horizon
    for result in reply.results:
        if result.WhichOneof("outcome") == "forecast":
            assert_finite(result.forecast.values, horizon)
            TALLY.add("ForecastBatch.series", "OK")
        else:
            assert_in_band_error(
                result.error, pb.ForecastBatchRequest.DESCRIPTOR, pb.Series.DESCRIPTOR
            )
            TALLY.add("ForecastBatch.series", f"code {result.error.code}")


@settings(FUZZ, max_examples=examples(350))
@given(request=compare_requests())
def test_fuzz_compare_versions(
    stub: Stub, gateway: GatewayProcess, catalog: Catalog, request: pb.CompareVersionsRequest
) -> None:
    reply = call("CompareVersions", stub.CompareVersions, request, gateway)
    if reply is None:
        return
    horizon = request.horizon or catalog.models[request.model].default_horizon
    for forecast in reply.forecasts:
        if forecast.HasField("error"):
            assert_in_band_error(forecast.error, pb.CompareVersionsRequest.DESCRIPTOR)
            TALLY.add("CompareVersions.version", f"code {forecast.error.code}")
        else:
            assert_finite(forecast.values, horizon)
            TALLY.add("CompareVersions.version", "OK")
    for difference in reply.differences:
        assert math.isfinite(difference.mean_absolute_difference)
        assert math.isfinite(difference.max_absolute_difference)


@st.composite
def report_requests(draw: st.DrawFn) -> pb.ReportActualsRequest:
    known = TALLY.forecast_ids
    forecast_id = draw(
        mostly(
            st.sampled_from(known) if known else st.just("00000000-0000-0000-0000-000000000000"),
            st.just(""),
            st.text(max_size=40),
            HUGE_TEXT,
        )
    )
    actuals = draw(
        mostly(
            st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=12),
            st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=70),
            st.lists(st.sampled_from([*SPECIAL_VALUES, 1.0, 315.2]), max_size=16),
            histories(max_length=2_000),
        )
    )
    offset = draw(mostly(st.integers(0, 11), INT32))
    return pb.ReportActualsRequest(forecast_id=forecast_id, actuals=actuals, offset=offset)


@pytest.fixture(scope="module")
def known_forecasts(stub: Stub) -> list[str]:
    """Real forecasts of every model and version, so ReportActuals is fuzzed on ids that exist.

    Whether or not test_fuzz_forecast ran first (its ids join these): the
    report fuzz never depends on the order. Not counted in the tally, like
    the warm-up.
    """
    history = [300.0 + (i % 12) for i in range(60)]
    for model in MODELS:
        for version in ("1", "2"):
            for horizon in (1, 6, 12):
                request = pb.ForecastRequest(
                    model=model, version=version, history=history, horizon=horizon
                )
                reply = stub.Forecast(request, timeout=CALL_TIMEOUT_S)
                TALLY.forecast_ids.append(reply.forecast_id)
    return TALLY.forecast_ids


@settings(FUZZ, max_examples=examples(500))
@given(request=report_requests())
def test_fuzz_report_actuals(
    stub: Stub,
    gateway: GatewayProcess,
    known_forecasts: list[str],
    request: pb.ReportActualsRequest,
) -> None:
    reply = call("ReportActuals", stub.ReportActuals, request, gateway)
    if reply is None:
        return
    assert reply.forecast_id == request.forecast_id
    assert 0 < reply.steps_received <= reply.horizon
    assert request.offset + len(request.actuals) <= reply.horizon
    for score in reply.scores:
        assert 0 < score.steps_scored <= reply.horizon


@settings(FUZZ, max_examples=examples(300))
@given(name=NAMES, experiment=st.booleans())
def test_fuzz_model_lookups(
    stub: Stub, gateway: GatewayProcess, catalog: Catalog, name: str, experiment: bool
) -> None:
    if experiment:
        request: Message = pb.GetExperimentRequest(model=name)
        reply = call("GetExperiment", stub.GetExperiment, request, gateway)
        if reply is not None:
            assert reply.model == name in catalog.models
        return
    request = pb.GetModelRequest(name=name)
    reply = call("GetModel", stub.GetModel, request, gateway)
    if reply is not None:
        assert reply.model.name == name in catalog.models


# --- after the run ---------------------------------------------------------------------------


def test_fuzz_run_left_the_gateway_healthy(
    stub: Stub,
    gateway: GatewayProcess,
    baseline: Baseline,
    catalog: Catalog,
    known_forecasts: list[str],
) -> None:
    """Memory, metric labels and the log after every fuzz case above.

    Run alone (or with only some of the fuzz tests selected), it runs the
    fuzz tests that have not run first, so its verdict never depends on
    which tests ran before it or in what order.
    """
    for fuzz in (test_fuzz_forecast, test_fuzz_forecast_batch, test_fuzz_compare_versions):
        if fuzz.__name__ not in TALLY.ran:
            fuzz(stub=stub, gateway=gateway, catalog=catalog)
    if test_fuzz_report_actuals.__name__ not in TALLY.ran:
        test_fuzz_report_actuals(stub=stub, gateway=gateway, known_forecasts=known_forecasts)
    if test_fuzz_model_lookups.__name__ not in TALLY.ran:
        test_fuzz_model_lookups(stub=stub, gateway=gateway, catalog=catalog)
    fuzzed = TALLY.calls - baseline.requests
    assert fuzzed >= 1000, f"only {fuzzed} fuzz cases reached the gateway"
    ok = stub.Forecast(
        pb.ForecastRequest(model="moving_average", history=[1.0, 2.0] * 30), timeout=10
    )
    assert len(ok.values) == ok.horizon
    growth = rss_mb(gateway.process.pid) - baseline.rss_mb
    with urllib.request.urlopen(f"http://127.0.0.1:{gateway.metrics_port}/metrics") as page:
        exposition = page.read().decode()
    labelled = set(re.findall(r'model="((?:[^"\\]|\\.)*)"', exposition))
    log = gateway.log_text()[baseline.log_offset :]
    print(f"\nfuzz: {fuzzed} cases, RSS growth {growth:+.1f} MB after warm-up")
    print(f"  RSS MB by cases: {[(n, round(mb, 1)) for n, mb in TALLY.rss_samples]}")
    for rpc, codes in sorted(TALLY.counts.items()):
        print(f"  {rpc}: {dict(sorted(codes.items()))}")
    assert growth < RSS_GROWTH_BOUND_MB, f"RSS grew {growth:.1f} MB over {fuzzed} cases"
    served = {*served_models(), ""}  # a fuzzed name never becomes a metric label
    assert labelled <= served, sorted(labelled - served)[:5]
    # The events, not the words: Hypothesis draws text from string constants in the
    # gateway's source, so a fuzzed model name can be "batch_group_failed" itself.
    assert '"event": "unhandled_error"' not in log
    assert '"event": "batch_group_failed"' not in log
    for rpc, codes in TALLY.counts.items():
        assert "INTERNAL" not in codes and "UNKNOWN" not in codes, rpc
