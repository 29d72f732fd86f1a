"""Bad input below the message level, against the real gateway process and Triton.

Raw bytes through a channel without serializers (undecodable messages, unknown
fields, other encodings of valid messages), every field at its limit,
oversized metadata, a stream that turns to garbage halfway, calls abandoned
mid-flight and non-gRPC bytes on the socket. After each test the gateway must
still answer a normal forecast. Repeated batch ids are covered in
test_batch_stream.py.
"""

from __future__ import annotations

import contextlib
import queue
import re
import socket
import struct
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.descriptor import FieldDescriptor

from forecast.v1 import forecast_service_pb2 as pb
from forecast.v1 import forecast_service_pb2_grpc
from tests.conftest import GatewayProcess, start_gateway, stop_process
from tests.functional.test_bad_input import details
from tools.embedded_triton import TritonProcess

Stub = forecast_service_pb2_grpc.ForecastServiceStub
SERVICE = "/forecast.v1.ForecastService/"
HISTORY = [315.0 + (i % 52) * 0.1 for i in range(60)]
MAX_MESSAGE_BYTES = 1024 * 1024  # config/gateway.toml max_message_bytes

# --- protobuf wire format, by hand ------------------------------------------------------------

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
    return tag(number, LEN) + varint(len(payload)) + payload


def raw_unary(channel: grpc.Channel, rpc: str) -> grpc.UnaryUnaryMultiCallable[bytes, bytes]:
    return channel.unary_unary(SERVICE + rpc, request_serializer=None, response_deserializer=None)


@pytest.fixture(scope="module")
def raw_channel(gateway: GatewayProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(
        gateway.target, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    ) as channel:
        yield channel


@pytest.fixture(autouse=True)
def still_serving_afterwards(stub: Stub, gateway: GatewayProcess) -> Iterator[None]:
    yield
    assert gateway.process.poll() is None
    ok = stub.Forecast(pb.ForecastRequest(model="moving_average", history=HISTORY), timeout=10)
    assert len(ok.values) == ok.horizon > 0


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(key)


def metric(gateway: GatewayProcess, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{gateway.metrics_port}/metrics") as page:
        text = page.read().decode()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, name
    return float(match.group(1))


# --- undecodable bytes ---------------------------------------------------------------------------

VALID = pb.ForecastRequest(model="moving_average", history=HISTORY).SerializeToString()
UNDECODABLE = {
    "random": bytes(range(255, 155, -1)),
    "overlong varint tag": b"\xff" * 11,
    "field number 0": b"\x00\x01",
    "end group without start": b"\x0c",
    "wire type 6": b"\x0e",
    "length past the end": b"\x0a\xff\xff\xff\xff\x0f",
    "truncated valid message": VALID[:-5],
    "invalid UTF-8 in a string": length_delimited(1, b"\xc3\x28"),
    "an HTTP request": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "JSON": b'{"model": "moving_average", "history": [1, 2, 3]}',
}
RPCS = ["Forecast", "ForecastBatch", "CompareVersions", "ReportActuals", "GetModel"]


@pytest.mark.parametrize("payload", list(UNDECODABLE.values()), ids=list(UNDECODABLE))
@pytest.mark.parametrize("rpc", RPCS)
def test_undecodable_message_is_invalid_argument(
    raw_channel: grpc.Channel, rpc: str, payload: bytes
) -> None:
    # Without the interceptor's lenient parse, grpc.aio answers UNKNOWN with
    # "Unexpected <class 'google.protobuf.message.DecodeError'>: ..." and no details.
    with pytest.raises(grpc.RpcError) as raised:
        raw_unary(raw_channel, rpc)(payload, timeout=10)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    info, violations = details(raised.value)
    assert info.reason == "MALFORMED_REQUEST" and info.domain == "forecast.v1"
    assert violations == []
    assert "DecodeError" not in (raised.value.details() or "")


def test_undecodable_messages_are_not_logged_as_errors(
    raw_channel: grpc.Channel, gateway: GatewayProcess
) -> None:
    before = len(gateway.log_text())
    for payload in UNDECODABLE.values():
        with pytest.raises(grpc.RpcError):
            raw_unary(raw_channel, "Forecast")(payload, timeout=10)
    logged = gateway.log_text()[before:]
    assert "MALFORMED_REQUEST" in logged  # the canonical request line says why
    assert "unhandled_error" not in logged and "Traceback" not in logged


def test_empty_message_is_a_valid_empty_request(raw_channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        raw_unary(raw_channel, "Forecast")(b"", timeout=10)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    _, violations = details(raised.value)
    assert violations == ["model", "history"]


# --- other encodings of valid messages ------------------------------------------------------------


def forecast_values(raw_channel: grpc.Channel, payload: bytes) -> list[float]:
    reply = pb.ForecastResponse.FromString(raw_unary(raw_channel, "Forecast")(payload, timeout=10))
    return list(reply.values)


UNKNOWN_FIELDS = {
    "varint field 99": tag(99, VARINT) + varint(12345),
    "length-delimited field 1000": length_delimited(1000, b"\xff\xfe not a message \x00"),
    "fixed32 field 2047": tag(2047, I32) + b"\x01\x02\x03\x04",
    "fixed64 at the highest field number": tag(2**29 - 1, I64) + b"\x00" * 8,
    "group field 111": tag(111, SGROUP) + tag(1, VARINT) + b"\x01" + tag(111, EGROUP),
    "wrong wire type for model": tag(1, VARINT) + varint(7),
    "wrong wire type for history": tag(4, I32) + b"\x00\x00\x80\x3f",
}


@pytest.mark.parametrize("extra", list(UNKNOWN_FIELDS.values()), ids=list(UNKNOWN_FIELDS))
def test_unknown_fields_are_ignored(raw_channel: grpc.Channel, extra: bytes) -> None:
    # proto3 keeps unknown fields (a field with a wire type other than its
    # declared one counts as unknown) and the gateway never reads them.
    expected = forecast_values(raw_channel, VALID)
    assert forecast_values(raw_channel, extra + VALID) == expected
    assert forecast_values(raw_channel, VALID + extra) == expected


def test_unknown_fields_in_other_requests(raw_channel: grpc.Channel) -> None:
    extra = tag(77, VARINT) + varint(1) + length_delimited(78, b"x" * 100)
    reply = raw_unary(raw_channel, "GetModel")(
        pb.GetModelRequest(name="lstm_timeseries").SerializeToString() + extra, timeout=10
    )
    assert pb.GetModelResponse.FromString(reply).model.name == "lstm_timeseries"
    series = pb.Series(id="a", history=HISTORY).SerializeToString() + extra
    batch = length_delimited(1, b"moving_average") + length_delimited(5, series) + extra
    reply = raw_unary(raw_channel, "ForecastBatch")(batch, timeout=10)
    (result,) = pb.ForecastBatchResponse.FromString(reply).results
    assert result.id == "a" and result.WhichOneof("outcome") == "forecast"


def test_the_only_request_enums_are_fill_methods() -> None:
    # An unknown enum value in a request is tested for these below; this
    # fails if a request grows another enum field, which then needs its own.
    service = pb.DESCRIPTOR.services_by_name["ForecastService"]
    seen: set[str] = set()

    def enums(descriptor: object) -> list[str]:
        found: list[str] = []
        for field in descriptor.fields:  # type: ignore[attr-defined]
            if field.type == FieldDescriptor.TYPE_ENUM:
                found.append(field.full_name)
            elif field.message_type is not None and field.message_type.full_name not in seen:
                seen.add(field.message_type.full_name)
                found += enums(field.message_type)
        return found

    found = {e for m in service.methods for e in enums(m.input_type)}
    assert found == {
        "forecast.v1.ForecastRequest.fill",
        "forecast.v1.Series.fill",
        "forecast.v1.CompareVersionsRequest.fill",
    }


def test_an_unknown_fill_method_is_invalid_argument(raw_channel: grpc.Channel) -> None:
    payload = VALID + tag(12, VARINT) + varint(7)  # ForecastRequest.fill = 7
    with pytest.raises(grpc.RpcError) as raised:
        raw_unary(raw_channel, "Forecast")(payload, timeout=10)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert details(raised.value)[1] == ["fill"]


def test_other_valid_encodings_mean_the_same(raw_channel: grpc.Channel) -> None:
    expected = forecast_values(raw_channel, VALID)
    unpacked = b"".join(tag(4, I64) + struct.pack("<d", v) for v in HISTORY)
    # Repeated scalars may come unpacked, or split over several packed runs.
    split = b"".join(
        length_delimited(4, struct.pack(f"<{len(part)}d", *part))
        for part in (HISTORY[:7], HISTORY[7:30], HISTORY[30:])
    )
    model = length_delimited(1, b"moving_average")
    assert forecast_values(raw_channel, model + unpacked) == expected
    assert forecast_values(raw_channel, split + model) == expected
    # A singular field sent twice: the last one wins.
    twice = length_delimited(1, b"no_such_model") + model + unpacked
    assert forecast_values(raw_channel, twice) == expected
    # int32 from a 10-byte varint (-1) is read as -1, and rejected by name.
    with pytest.raises(grpc.RpcError) as raised:
        raw_unary(raw_channel, "Forecast")(VALID + tag(5, VARINT) + varint(-1), timeout=10)
    assert details(raised.value)[1] == ["horizon"]
    # A varint over 32 bits keeps its low 32 bits (proto3 rule): 2**32 + 3 is horizon 3.
    reply = raw_unary(raw_channel, "Forecast")(VALID + tag(5, VARINT) + varint(2**32 + 3))
    assert pb.ForecastResponse.FromString(reply).horizon == 3


# --- limits ----------------------------------------------------------------------------------


def test_every_field_at_its_limit(stub: Stub) -> None:
    model = stub.GetModel(pb.GetModelRequest(name="moving_average"), timeout=10).model
    v1 = next(v for v in model.versions if v.version == "1")
    history = (300.0 + np.random.default_rng(3).normal(size=10_000).cumsum()).tolist()
    request = pb.ForecastRequest(
        model="moving_average",
        version="1",
        routing_key="k" * 200_000,
        history=history,
        horizon=model.max_horizon,
        sequence_length=v1.max_sequence_length,
    )
    reply = stub.Forecast(request, timeout=30)
    assert len(reply.values) == reply.horizon == model.max_horizon == 64
    assert reply.sequence_length == v1.max_sequence_length == 1024
    assert reply.values[0] == pytest.approx(np.mean(history[-1024:]), rel=1e-5)
    lstm = stub.GetModel(pb.GetModelRequest(name="lstm_timeseries"), timeout=10).model
    reply = stub.Forecast(
        pb.ForecastRequest(model="lstm_timeseries", history=history, horizon=lstm.max_horizon),
        timeout=30,
    )
    assert len(reply.values) == lstm.max_horizon and all(np.isfinite(reply.values))
    # One past each limit is INVALID_ARGUMENT on that field.
    for field, value in [
        ("history", [*history, 1.0]),
        ("horizon", model.max_horizon + 1),
        ("sequence_length", v1.max_sequence_length + 1),
    ]:
        too_far = pb.ForecastRequest()
        too_far.CopyFrom(request)
        if field == "history":
            too_far.ClearField("history")
            too_far.history.extend(value)  # type: ignore[arg-type]
        else:
            setattr(too_far, field, value)
        with pytest.raises(grpc.RpcError) as raised:
            stub.Forecast(too_far, timeout=30)
        assert details(raised.value)[1] == [field]


def test_message_size_limit_is_exact(stub: Stub) -> None:
    base = pb.ForecastRequest(model="moving_average", history=HISTORY)

    def of_size(size: int) -> pb.ForecastRequest:
        request = pb.ForecastRequest()
        request.CopyFrom(base)
        request.routing_key = "k" * (size - base.ByteSize() - 4)  # 4: tag + 3-byte length
        assert request.ByteSize() == size
        return request

    assert len(stub.Forecast(of_size(MAX_MESSAGE_BYTES), timeout=30).values) == 12
    with pytest.raises(grpc.RpcError) as raised:
        stub.Forecast(of_size(MAX_MESSAGE_BYTES + 1), timeout=30)
    assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in (raised.value.details() or "")


def test_full_batch_at_the_horizon_limit_is_answered(stub: Stub) -> None:
    # 4,096 series x 64 steps is a ~2.4 MB answer: it must not hit the 1 MiB
    # request limit (it did while that limit was applied to sends too).
    series = [pb.Series(id=f"s{i}", history=[float(i % 13)] * 12) for i in range(4096)]
    reply = stub.ForecastBatch(
        pb.ForecastBatchRequest(model="moving_average", version="1", horizon=64, series=series),
        timeout=60,
    )
    assert len(reply.results) == 4096
    assert all(len(r.forecast.values) == 64 for r in reply.results)


def test_long_strings_are_not_echoed_whole(stub: Stub) -> None:
    # Error texts travel in HTTP/2 trailers; a client drops trailers over 8 KiB.
    for name in ("m" * 200_000, "é" * 5_000, "😀" * 3_000):
        with pytest.raises(grpc.RpcError) as raised:
            stub.Forecast(pb.ForecastRequest(model=name, history=HISTORY), timeout=10)
        assert raised.value.code() is grpc.StatusCode.NOT_FOUND
        info, _ = details(raised.value)
        assert info.reason == "MODEL_NOT_FOUND"
        assert "lstm_timeseries" in (raised.value.details() or "")  # the useful tail survives
        assert len((raised.value.details() or "").encode()) <= 512
    for version in ("9" * 300_000, "x" * 300_000):
        with pytest.raises(grpc.RpcError) as raised:
            stub.Forecast(
                pb.ForecastRequest(model="moving_average", version=version, history=HISTORY),
                timeout=10,
            )
        assert details(raised.value)[1] == ["version"]


def test_batch_does_not_multiply_a_long_string(stub: Stub, gateway: GatewayProcess) -> None:
    # One 300 KB version shared by 4,096 series: each series' error used to
    # quote it whole (gateway RSS peaked at 9-17 GB, 30-40 s on the event loop).
    series = [pb.Series(id=str(i), history=[1.0] * 12) for i in range(4096)]
    before = rss_mb(gateway.process.pid)
    started = time.monotonic()
    for version in ("9" * 300_000, "\u00e9" * 300_000):
        request = pb.ForecastBatchRequest(model="moving_average", version=version, series=series)
        assert request.ByteSize() < MAX_MESSAGE_BYTES
        reply = stub.ForecastBatch(request, timeout=60)
        assert {r.error.field_violations[0].field for r in reply.results} == {"version"}
    assert time.monotonic() - started < 10.0
    assert rss_mb(gateway.process.pid, "VmHWM") - before < 300


# --- metadata --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [20_000, 1_000_000])
def test_oversized_metadata_is_refused_by_grpc(stub: Stub, size: int) -> None:
    # The server's HTTP/2 layer refuses the headers (soft limit 8 KiB, hard
    # limit 16 KiB) before any gateway code runs: RESOURCE_EXHAUSTED, no details.
    request = pb.ForecastRequest(model="moving_average", history=HISTORY)
    with pytest.raises(grpc.RpcError) as raised:
        stub.Forecast(request, metadata=(("x-big", "a" * size),), timeout=10)
    assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "metadata size exceeds" in (raised.value.details() or "")


def test_many_small_headers_are_refused_by_grpc(stub: Stub) -> None:
    request = pb.ForecastRequest(model="moving_average", history=HISTORY)
    many = tuple((f"x-h{i}", "v" * 40) for i in range(400))  # ~20 KB in all
    with pytest.raises(grpc.RpcError) as raised:
        stub.Forecast(request, metadata=many, timeout=10)
    assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_metadata_under_the_limit_is_accepted(stub: Stub) -> None:
    request = pb.ForecastRequest(model="moving_average", history=HISTORY)
    reply = stub.Forecast(request, metadata=(("x-big", "a" * 6_000),), timeout=10)
    assert reply.values


# --- streams and abandoned calls -------------------------------------------------------------


def stream_item(request_id: str) -> bytes:
    return pb.StreamForecastRequest(
        request_id=request_id,
        request=pb.ForecastRequest(model="moving_average", history=HISTORY, horizon=3),
    ).SerializeToString()


def test_stream_that_turns_to_garbage_ends_with_a_status(raw_channel: grpc.Channel) -> None:
    stream: grpc.StreamStreamMultiCallable[bytes, bytes] = raw_channel.stream_stream(
        SERVICE + "StreamForecast", request_serializer=None, response_deserializer=None
    )
    outgoing: queue.Queue[bytes | None] = queue.Queue()
    for i in range(5):
        outgoing.put(stream_item(f"r{i}"))

    def requests() -> Iterator[bytes]:
        while (item := outgoing.get(timeout=20)) is not None:
            yield item

    answers: list[pb.StreamForecastResponse] = []
    with pytest.raises(grpc.RpcError) as raised:
        for raw in stream(requests(), timeout=30):
            answers.append(pb.StreamForecastResponse.FromString(raw))
            if len(answers) == 5:  # every earlier answer is in; now the garbage
                outgoing.put(b"\xff" * 11)
                outgoing.put(stream_item("after-garbage"))
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert details(raised.value)[0].reason == "MALFORMED_REQUEST"
    assert sorted(a.request_id for a in answers) == [f"r{i}" for i in range(5)]
    assert all(len(a.forecast.values) == 3 for a in answers)
    outgoing.put(None)


def test_abandoned_calls_release_their_slots(stub: Stub, gateway: GatewayProcess) -> None:
    request = pb.ForecastRequest(model="lstm_timeseries", history=HISTORY * 100)
    futures = [stub.Forecast.future(request, timeout=30) for _ in range(200)]
    for future in futures:
        future.cancel()
    streams = []
    for _ in range(5):
        items = iter(
            [pb.StreamForecastRequest(request_id=str(i), request=request) for i in range(50)]
        )
        call = stub.StreamForecast(items, timeout=30)
        next(call)
        streams.append(call)
    for call in streams:
        call.cancel()
    deadline = time.monotonic() + 10
    while metric(gateway, "forecast_gateway_in_flight_requests") != 0:
        assert time.monotonic() < deadline, "calls still counted in flight after cancel"
        time.sleep(0.1)


def test_bytes_that_are_not_grpc_are_dropped(gateway: GatewayProcess) -> None:
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    garbage_frame = struct.pack(">I", 0xFFFFFF)[1:] + b"\xee\x00\x00\x00\x00\x01" + b"\x00" * 64
    for payload, closed in (
        (bytes(range(256)) * 4, True),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True),
        (preface + garbage_frame, True),
        (preface, False),  # then nothing: open for now (closed once idle, see below)
    ):
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
            sock.sendall(payload)
            sock.settimeout(1)
            ended = False
            with contextlib.suppress(TimeoutError):
                while sock.recv(65536):
                    pass
                ended = True
            assert ended is closed, payload[:30]


def test_idle_connections_are_closed_and_clients_reconnect(
    triton: TritonProcess, tmp_path: Path
) -> None:
    gateway = start_gateway(
        triton.grpc_url,
        tmp_path / "gateway.log",
        FORECAST_ROUTING_FILE="",
        FORECAST_IDLE_TIMEOUT_S="1",
    )
    request = pb.ForecastRequest(model="moving_average", history=HISTORY)
    try:
        states: list[grpc.ChannelConnectivity] = []
        with grpc.insecure_channel(gateway.target) as channel:
            channel.subscribe(states.append)
            stub = forecast_service_pb2_grpc.ForecastServiceStub(channel)
            stub.Forecast(request, timeout=10)
            deadline = time.monotonic() + 15
            # Connectivity callbacks arrive on another thread: wait for READY, then IDLE.
            while grpc.ChannelConnectivity.READY not in states:
                assert time.monotonic() < deadline, f"never READY: {states}"
                time.sleep(0.05)
            ready_at = states.index(grpc.ChannelConnectivity.READY)
            while grpc.ChannelConnectivity.IDLE not in states[ready_at:]:
                assert time.monotonic() < deadline, f"never closed when idle: {states}"
                time.sleep(0.1)
            assert len(stub.Forecast(request, timeout=10).values) > 0  # reconnects by itself
        # A socket that never sends a request is closed as well.
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=15) as sock:
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            while sock.recv(65536):  # TimeoutError (test fails) if never closed within 15 s
                pass
    finally:
        stop_process(gateway.process)
