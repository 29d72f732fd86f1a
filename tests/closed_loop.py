"""Closed-loop Forecast callers for the drain and worker tests: every call seen from the caller.

Each caller sends its next call as soon as the last is answered; every call's
send and answer time and status code are kept, so a test can say which calls
were in flight at a signal and what the ones sent after it got.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from dataclasses import dataclass, field

import grpc

from forecast.v1 import forecast_service_pb2 as pb
from forecast.v1 import forecast_service_pb2_grpc

HISTORY = [float(i % 17) for i in range(60)]
RETRY_ON_UNAVAILABLE = {
    "name": [{"service": "forecast.v1.ForecastService"}],
    "retryPolicy": {
        "maxAttempts": 5,
        "initialBackoff": "0.05s",
        "maxBackoff": "1s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    },
}
"""The standard retry policy of an ordinary gRPC client: UNAVAILABLE is retried."""


def service_config(*, round_robin: bool = False) -> str:
    """A channel's service config: the retry policy, and round_robin over the addresses."""
    config: dict[str, object] = {"methodConfig": [RETRY_ON_UNAVAILABLE]}
    if round_robin:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
    return json.dumps(config)


Options = list[tuple[str, str | int]]


@dataclass
class ClosedLoop:
    """`callers` callers spread over one channel per entry of `channels` (its options)."""

    target: str
    callers: int
    channels: list[Options] = field(default_factory=lambda: [[]])
    pause_after_error_s: float = 0.01
    calls: list[tuple[float, float, str, str]] = field(default_factory=list)
    """(sent, answered, code, forecast_id), monotonic seconds."""

    async def run(self, until: asyncio.Event) -> None:
        """Send until `until` is set."""
        channels = [grpc.aio.insecure_channel(self.target, options=o) for o in self.channels]
        try:
            stubs = [forecast_service_pb2_grpc.ForecastServiceStub(c) for c in channels]
            await asyncio.gather(
                *(self._caller(stubs[i % len(stubs)], until) for i in range(self.callers))
            )
        finally:
            for channel in channels:
                await channel.close()

    async def _caller(
        self, stub: forecast_service_pb2_grpc.ForecastServiceAsyncStub, until: asyncio.Event
    ) -> None:
        request = pb.ForecastRequest(model="lstm_timeseries", version="2", history=HISTORY)
        while not until.is_set():
            sent = time.monotonic()
            try:
                reply = await stub.Forecast(request, timeout=10)
                code, forecast_id = "OK", reply.forecast_id
            except grpc.RpcError as error:
                code, forecast_id = error.code().name, ""
            self.calls.append((sent, time.monotonic(), code, forecast_id))
            if code != "OK":
                await asyncio.sleep(self.pause_after_error_s)

    def codes(self, sent_after: float = 0.0, sent_before: float = float("inf")) -> dict[str, int]:
        """Outcomes of the calls sent in [sent_after, sent_before)."""
        return dict(
            collections.Counter(
                code for sent, _, code, _ in self.calls if sent_after <= sent < sent_before
            )
        )

    def in_flight_at(self, moment: float) -> list[tuple[float, float, str, str]]:
        """The calls sent before `moment` and answered after it."""
        return [call for call in self.calls if call[0] < moment <= call[1]]

    def signal_report(self, signal_at: float, exits: object) -> dict[str, object]:
        """What the calls in flight at a signal and those sent after it got, and the exits."""
        in_flight = self.in_flight_at(signal_at)
        return {
            "in_flight_at_signal": dict(collections.Counter(c[2] for c in in_flight)),
            "after": self.codes(sent_after=signal_at),
            "exit": exits,
        }
