"""The server interceptor: request context, error mapping, one log line per request.

For every ForecastService and google.longrunning.Operations call it binds a
request id (the caller's `x-request-id`, or a new one) and the rpc name to
the log context, checks
the caller's token (`auth.TokenAuthorizer`, when tokens are configured)
before the servicer runs, admits the call through the load shedder
(`overload.LoadShedder`: one wrapper for both, not two interceptor layers
per call), turns GatewayError into a status with google.rpc
details, turns anything unexpected into a generic INTERNAL (the traceback
stays in the log), and writes the canonical request line and metrics once
the call ends (for a unary call, after its response is handed to gRPC). A
request whose bytes do not parse as its message gets INVALID_ARGUMENT (reason
MALFORMED_REQUEST) like any other bad input, instead of gRPC's bare UNKNOWN.
Health and reflection are not ForecastService calls: they pass through
untouched, and open.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import structlog

from forecast_gateway import metrics
from forecast_gateway.api import calls
from forecast_gateway.api.auth import TokenAuthorizer
from forecast_gateway.api.status import grpc_code, to_status
from forecast_gateway.core.results import CallNotes
from forecast_gateway.errors import REQUEST_ID_HEADER, GatewayError, Internal, InvalidArgument

log = structlog.get_logger("forecast_gateway.request")

SERVICE_PREFIXES = ("/forecast.v1.", "/google.longrunning.Operations/")
"""The services the interceptor wraps: ForecastService, and the operations of its bulk work."""
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

if TYPE_CHECKING:  # grpc's classes are generic only in the type stubs
    from forecast_gateway.api.overload import LoadShedder

    Context = grpc.aio.ServicerContext[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
    Behavior = Callable[[Any, Context], Awaitable[Any]]
    Guard = Callable[[Context], None]


def request_id_from(context: Context) -> str:
    """The caller's x-request-id if it is sane, else a new random id."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and _REQUEST_ID.match(value):
            return value
    return uuid.uuid4().hex


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Wraps each ForecastService handler once and reuses the wrapper for every call.

    grpc.aio asks every interceptor for a handler on every call; building the
    wrapper closures and handler objects anew each time was per-request work
    that can be done once. Health and reflection pass through untouched.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Handler, Handler | None]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        """The wrapped handler of a ForecastService method (built on its first call)."""
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(SERVICE_PREFIXES):
            return handler
        cached = self._wrapped.get(method)  # only served methods: a bounded set of keys
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self.wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def wrap(self, method: str, handler: Handler) -> Handler | None:
        """The handler to serve `method` with (None: refuse it as UNIMPLEMENTED)."""
        raise NotImplementedError


class RequestInterceptor(ServiceInterceptor):
    """Wraps the ForecastService handlers (access check, load shedding, errors, log line).

    `authorizer` (None: no token file configured) decides which calls need a
    token; see `auth.py` for the rule. `shedder` (None: no bound) admits calls.
    """

    def __init__(
        self, authorizer: TokenAuthorizer | None = None, shedder: LoadShedder | None = None
    ) -> None:
        super().__init__()
        self._authorizer = authorizer
        self._shedder = shedder

    def wrap(self, method: str, handler: Handler) -> Handler | None:
        """Wrap a unary or bidirectional method; refuse any other kind when it needs a token."""
        rpc = method.rsplit("/", 1)[-1]
        guard = self._guard(method)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                wrap_unary(rpc, handler.unary_unary, guard, self._shedder),  # type: ignore[arg-type]
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream(rpc, handler.stream_stream, guard, self._shedder),  # type: ignore[arg-type]
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if guard is not _open:
            return None  # fail closed: a handler kind this interceptor cannot guard is not served
        return handler

    def _guard(self, method: str) -> Guard:
        """The access check of `method`, run before its servicer (a no-op without tokens)."""
        authorizer = self._authorizer
        if authorizer is None or not authorizer.requires_token(method):
            return _open

        def guard(context: Context) -> None:
            authorizer.check(method, context.invocation_metadata() or ())

        return guard


def _open(context: Context) -> None:
    """The guard of a call that needs no token."""


class _Malformed:
    """Stands in for a request message whose bytes did not parse."""


_MALFORMED = _Malformed()


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserializer`, returning _MALFORMED for bytes it cannot parse instead of raising.

    gRPC would answer a parse failure with UNKNOWN, its exception text and no
    details; the wrappers turn _MALFORMED into INVALID_ARGUMENT after the
    access check.
    """
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # DecodeError, or whatever the parser raises on foreign bytes
            return _MALFORMED

    return parse


def _check_parsed(request: Any) -> Any:
    if request is _MALFORMED:
        raise InvalidArgument(
            "the request message could not be parsed: not a valid protobuf encoding "
            "of the method's request type",
            reason="MALFORMED_REQUEST",
        )
    return request


async def _parsed(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A stream's requests; INVALID_ARGUMENT (ending the stream) at the first malformed one."""
    async for request in requests:
        yield _check_parsed(request)


def _start(rpc: str, context: Context) -> tuple[str, CallNotes]:
    """Fresh log context and notes for a call; its request id is also sent as a trailer."""
    structlog.contextvars.clear_contextvars()
    request_id = request_id_from(context)
    structlog.contextvars.bind_contextvars(request_id=request_id, rpc=rpc)
    context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
    return request_id, calls.begin()


def _code_of(error: Exception) -> grpc.StatusCode:
    """The status a failed call is answered with (INTERNAL for anything unexpected)."""
    return grpc_code(error.code) if isinstance(error, GatewayError) else grpc.StatusCode.INTERNAL


async def _fail(error: Exception, request_id: str, context: Context) -> grpc.StatusCode:
    """Abort the call with the status for `error` (generic INTERNAL for the unexpected)."""
    if not isinstance(error, GatewayError):
        log.error("unhandled_error", exc_info=error)
        error = Internal(f"internal error; quote request id {request_id} when reporting it")
    structlog.contextvars.bind_contextvars(reason=error.reason, error=error.message)
    await context.abort_with_status(to_status(error, request_id))
    return grpc_code(error.code)  # not reached: abort_with_status raises


class _Call:
    """One ForecastService call as a wrapper serves it, unary or stream alike.

    Entering starts the call's log context and notes; inside, the wrapper
    runs its guard, `admit` and the servicer. Leaving frees the load
    shedder's slot, answers an error with its status (`_fail`), and writes
    the request line and metrics: for a unary call on the next loop turn,
    after gRPC has the response; for a stream at once, with its count of
    responses.
    """

    def __init__(
        self, rpc: str, context: Context, shedder: LoadShedder | None, stream: bool
    ) -> None:
        self.rpc = rpc
        self.context = context
        self.shedder = shedder
        self.stream = stream
        self.code = grpc.StatusCode.OK
        self.sent = 0
        """Responses a stream has yielded."""
        self.admitted = False

    async def __aenter__(self) -> _Call:
        self.request_id, self.notes = _start(self.rpc, self.context)
        self.started = time.perf_counter()
        return self

    async def admit(self) -> None:
        """Wait for the load shedder's admission (no-op without one)."""
        if self.shedder is not None:
            await self.shedder.enter()
            self.admitted = True

    async def __aexit__(self, kind: object, error: BaseException | None, tb: object) -> None:
        try:
            if self.admitted:
                assert self.shedder is not None
                self.admitted = False
                self.shedder.leave()
            if isinstance(error, asyncio.CancelledError):
                self.code = grpc.StatusCode.CANCELLED
            elif isinstance(error, Exception):
                self.code = _code_of(error)
                await _fail(error, self.request_id, self.context)
        finally:
            seconds = time.perf_counter() - self.started
            if self.stream:
                structlog.contextvars.bind_contextvars(responses=self.sent)
                _finish(self.rpc, self.code, seconds, self.notes)
            else:
                # After the response: gRPC sends it when the handler returns,
                # before the loop runs the next callback (which sees this
                # call's log context).
                asyncio.get_running_loop().call_soon(
                    _finish, self.rpc, self.code, seconds, self.notes
                )


def wrap_unary(
    rpc: str, behavior: Behavior, guard: Guard | None = None, shedder: LoadShedder | None = None
) -> Behavior:
    """`behavior` as the interceptor serves it: access check, admission, errors, request line."""
    guard = guard or _open

    async def wrapper(request: Any, context: Context) -> Any:
        async with _Call(rpc, context, shedder, stream=False) as call:
            guard(context)
            parsed = _check_parsed(request)
            await call.admit()
            return await behavior(parsed, context)

    return wrapper


def _wrap_stream(
    rpc: str,
    behavior: Callable[[Any, Context], AsyncIterator[Any]],
    guard: Guard,
    shedder: LoadShedder | None = None,
) -> Callable[[Any, Context], AsyncIterator[Any]]:
    async def wrapper(requests: Any, context: Context) -> AsyncIterator[Any]:
        async with _Call(rpc, context, shedder, stream=True) as call:
            guard(context)
            await call.admit()
            async for response in behavior(_parsed(requests), context):
                call.sent += 1
                yield response

    return wrapper


def _finish(rpc: str, code: grpc.StatusCode, seconds: float, notes: CallNotes) -> None:
    """The canonical log line and the metrics of one request, labelled from its notes."""
    metrics.observe_request(rpc, notes.model, notes.version, notes.routing, code.name, seconds)
    level = "info" if code is grpc.StatusCode.OK else "warning"
    where = {"model": notes.model, "version": notes.version, "routing": notes.routing}
    getattr(log, level)(
        "request",
        **{k: v for k, v in where.items() if v},
        **notes.fields,
        status=code.name,
        latency_ms=round(seconds * 1000, 3),
    )
