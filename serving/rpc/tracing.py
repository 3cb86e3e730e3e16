"""OpenTelemetry traces, optional and off by default: every call a server span, and the
gateway's calls to the services carrying the W3C `traceparent`, so one request through the
gateway is one trace.

Works without the packages installed (the `otel` extra): `configure` then says so and
tracing stays off. Only `__main__` modules call `configure`; the rest asks `enabled()`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from serving.rpc.calls import Call, CallHook

__all__ = ["ServerTracing", "client_interceptors", "configure", "enabled"]

logger = logging.getLogger(__name__)

_tracer: Any = None  # an opentelemetry Tracer once configured


def enabled() -> bool:
    return _tracer is not None


def configure(service_name: str, *, exporter: Any = None) -> bool:
    """Installs a tracer provider exporting spans (OTLP over gRPC, to where the standard
    OTEL_EXPORTER_OTLP_* variables say, unless `exporter` is given). False, with a warning,
    when the OpenTelemetry packages are missing."""
    global _tracer  # noqa: PLW0603 (process-wide, set once at start)
    try:
        from opentelemetry import trace  # noqa: PLC0415
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
    except ImportError:
        logger.warning("tracing asked for, but OpenTelemetry is not installed (extra `otel`)")
        return False
    if exporter is None:
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
                OTLPSpanExporter,
            )
        except ImportError:
            logger.warning("tracing asked for, but the OTLP exporter is not installed")
            return False
        exporter = OTLPSpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _tracer = trace.get_tracer("twinserve")
    return True


# OpenTelemetry's gRPC conventions: a server span is an error only for these codes; the rest
# (INVALID_ARGUMENT, NOT_FOUND, ...) are the client's business and leave its status unset.
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


class ServerTracing:
    """Every unary call a server span, a child of the caller's `traceparent` if it sent one:
    a concern of the server's interceptor (`serving.rpc.calls`) that has nothing to do while
    tracing is off. Streams get none: a span's context cannot follow a stream's generator
    across its yields."""

    def for_method(self, method: str, *, unary: bool) -> CallHook | None:
        if _tracer is None or not unary:
            return None
        return _Span(_tracer, method)


class _Span:
    """The span of each call of one method. It records the call's `rpc.grpc.status_code`;
    the abort that carries a status out of the handler is how a status is sent, not an
    exception to record."""

    def __init__(self, tracer: Any, method: str) -> None:
        from opentelemetry import context, trace  # noqa: PLC0415
        from opentelemetry.propagate import extract  # noqa: PLC0415
        from opentelemetry.trace import SpanKind, Status, StatusCode  # noqa: PLC0415

        self._tracer = tracer
        self._name = method.rpartition("/")[2]
        self._attributes = {"rpc.system": "grpc", "rpc.method": method}
        self._extract, self._in_context = extract, trace.set_span_in_context
        self._attach, self._detach = context.attach, context.detach
        self._kind = SpanKind.SERVER
        self._status, self._error = Status, StatusCode.ERROR

    def started(self, call: Call) -> None:
        metadata = call.context.invocation_metadata() or ()
        carrier = {key: value for key, value in metadata if isinstance(value, str)}
        span = self._tracer.start_span(
            self._name,
            context=self._extract(carrier),
            kind=self._kind,
            attributes=self._attributes,
        )
        # Current while the handler runs: the gateway's calls upstream carry it along.
        call.span = (span, self._attach(self._in_context(span)))

    def finished(self, call: Call) -> None:
        span, token = call.span
        self._detach(token)
        span.set_attribute("rpc.grpc.status_code", call.code.value[0])
        if call.code in _SERVER_ERRORS:
            span.set_status(self._status(self._error, call.code.name))
        span.end()


def _with_trace_context(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    from opentelemetry.propagate import inject  # noqa: PLC0415

    carrier: dict[str, str] = {}
    inject(carrier)
    metadata = grpc.aio.Metadata(*(tuple(details.metadata or ())))
    for key, value in carrier.items():
        metadata.add(key, value)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Callable[..., Awaitable[Any]], details: Any, request: Any
    ) -> Any:
        return await continuation(_with_trace_context(details), request)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Callable[..., Awaitable[Any]], details: Any, request: Any
    ) -> Any:
        return await continuation(_with_trace_context(details), request)


class _StreamStream(grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation: Callable[..., Awaitable[Any]], details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(_with_trace_context(details), request_iterator)


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """Interceptors for a channel to the services that send the current trace context along;
    none while tracing is off (they cost a little on every call)."""
    if _tracer is None:
        return []
    return [_UnaryUnary(), _UnaryStream(), _StreamStream()]
