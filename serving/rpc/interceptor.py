"""The one place where exceptions become gRPC statuses."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias, cast

import grpc

from serving.errors import InvalidInput, ServingError
from serving.pb import inference_pb2 as pb
from serving.rpc.calls import CallObserver, status_name
from serving.rpc.logs import printable, shorten
from serving.rpc.tracing import server_span

__all__ = ["ErrorInterceptor", "client_detail", "refusing", "status_of", "stream_infer"]

logger = logging.getLogger(__name__)

_GENERIC = "internal error; the server log has the details"
# A status detail travels in a trailer (grpc-message, percent-encoded), and clients refuse
# trailers over 8-16 KiB: a message quoting a 4 MiB model name would reach the client as
# RESOURCE_EXHAUSTED "received metadata size exceeds hard limit" instead of its own status.
# Bounded in characters and in UTF-8 bytes (each non-ASCII byte is sent as 3 characters).
DETAIL_LIMIT = 1024
_DETAIL_BYTES = 2048


def client_detail(message: str) -> str:
    """A status detail bounded for the trailer it travels in."""
    detail = shorten(message, DETAIL_LIMIT)
    if len(detail) * 4 > _DETAIL_BYTES and len(detail.encode()) > _DETAIL_BYTES:
        cut = detail.encode()[:_DETAIL_BYTES].decode(errors="ignore")
        detail = f"{cut}…(cut at {_DETAIL_BYTES} bytes)"
    return detail


def status_of(exc: BaseException, method: str = "") -> tuple[grpc.StatusCode, str]:
    """Maps an exception to (code, client-safe message, bounded); unexpected ones are
    logged."""
    if isinstance(exc, ServingError):
        return exc.code, client_detail(exc.message)
    logger.error("unexpected error in %s", printable(method or "request"), exc_info=exc)
    return grpc.StatusCode.INTERNAL, _GENERIC


class _Undecodable:
    """Stands in for a request message that did not parse. grpc.aio answers a deserializer's
    exception with UNKNOWN (found by tests/integration/test_fuzz.py); the wrapped behaviors
    below answer INVALID_ARGUMENT instead."""


_UNDECODABLE = _Undecodable()


def _malformed() -> InvalidInput:
    return InvalidInput("the request message could not be parsed")


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:
            return _UNDECODABLE

    return deserialize


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if request is _UNDECODABLE:
            raise _malformed()
        yield request


UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
StreamBehavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]


def _wrap_unary(behavior: UnaryBehavior, method: str, observer: CallObserver) -> UnaryBehavior:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        call = observer.start(method, request, context)
        # Unary calls only: a span's context cannot follow a stream's generator across yields.
        with server_span(method, context):
            try:
                if not call.admitted:
                    raise observer.refusal()
                if request is _UNDECODABLE:
                    raise _malformed()
                call.response = await behavior(request, context)
                return call.response
            except grpc.aio.AbortError:
                call.code = status_name(context.code())
                raise
            except asyncio.CancelledError:
                call.code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                call.code, call.message = status_of(exc, method)
                await context.abort(call.code, call.message)
            finally:
                observer.finish(call)

    return wrapper


def _wrap_stream(
    behavior: StreamBehavior, method: str, observer: CallObserver, *, streaming: bool
) -> StreamBehavior:
    async def wrapper(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        call = observer.start(method, None if streaming else request, context)
        try:
            if not call.admitted:
                raise observer.refusal()
            if streaming:
                request = _checked(request)
            elif request is _UNDECODABLE:
                raise _malformed()
            async for response in behavior(request, context):
                yield response
        except grpc.aio.AbortError:
            call.code = status_name(context.code())
            raise
        except (asyncio.CancelledError, GeneratorExit):
            call.code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            call.code, call.message = status_of(exc, method)
            await context.abort(call.code, call.message)
        finally:
            observer.finish(call)

    return wrapper


Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


def refusing(handler: Handler, code: grpc.StatusCode, message: str) -> Handler:
    """A handler of the same kind as `handler`, with its (de)serializers, that answers
    `code` and `message` (for interceptors that turn a call away: auth, a drain)."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)

    async def refuse_stream(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        await context.abort(code, message)
        yield  # never reached: makes this an async generator, as streaming handlers are

    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[handler.request_streaming, handler.response_streaming]
    return make(
        refuse_stream if handler.response_streaming else refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


# Wrapped handlers are cached per (method, handler): building them is most of what this
# interceptor costs a call. The bound keeps the cache finite if an interceptor before this
# one made new handlers per call.
_CACHE_LIMIT = 512


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Statuses from exceptions, and (through `observer`) metrics, logs and the bound on
    concurrent calls."""

    def __init__(self, observer: CallObserver | None = None) -> None:
        self.observer = observer or CallObserver()
        self._wrapped: dict[tuple[str, Handler], Handler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        key = (handler_call_details.method, handler)
        wrapped = self._wrapped.get(key)
        if wrapped is None:
            wrapped = _wrap(handler, handler_call_details.method, self.observer)
            if len(self._wrapped) < _CACHE_LIMIT:
                self._wrapped[key] = wrapped
        return wrapped


def _wrap(handler: Handler, method: str, observer: CallObserver) -> Handler:
    unary = handler.unary_unary
    if unary is not None and inspect.iscoroutinefunction(unary):
        return grpc.unary_unary_rpc_method_handler(
            _wrap_unary(cast(UnaryBehavior, unary), method, observer),
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
    server_streaming = handler.unary_stream
    if server_streaming is not None and inspect.isasyncgenfunction(server_streaming):
        return grpc.unary_stream_rpc_method_handler(
            _wrap_stream(cast(StreamBehavior, server_streaming), method, observer, streaming=False),
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
    stream = handler.stream_stream
    if stream is not None and inspect.isasyncgenfunction(stream):
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream(cast(StreamBehavior, stream), method, observer, streaming=True),
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
    return handler


async def stream_infer(
    requests: AsyncIterator[pb.ModelInferRequest],
    infer: Callable[[pb.ModelInferRequest], Awaitable[pb.ModelInferResponse]],
) -> AsyncIterator[pb.ModelStreamInferResponse]:
    """ModelStreamInfer over a unary `infer`. A bad request answers with `error_message`
    (the protocol's stream error has a message, no code) and the stream goes on, as in
    Triton; only transport failures end it."""
    async for request in requests:
        try:
            response = await infer(request)
        except Exception as exc:
            code, message = status_of(exc, "ModelStreamInfer")
            model, request_id = printable(request.model_name), printable(request.id)
            logger.warning(
                "ModelStreamInfer message %s -> %s: %s",
                model,
                code.name,
                printable(message, DETAIL_LIMIT),
                extra={
                    "method": "ModelStreamInfer",
                    "code": code.name,
                    "model": model,
                    "request_id": request_id,
                    "detail": printable(message, DETAIL_LIMIT),
                },
            )
            yield pb.ModelStreamInferResponse(
                error_message=message,
                infer_response=pb.ModelInferResponse(model_name=request.model_name, id=request.id),
            )
            continue
        yield pb.ModelStreamInferResponse(infer_response=response)
