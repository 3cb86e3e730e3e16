"""The one place where exceptions become gRPC statuses, and the interceptor that runs a
server's concerns (metrics, call log, trace span, admission: see `serving.rpc.calls`) around
every handler. It builds one wrapped handler per method, with only the hooks that have
something to do for that method, so a call pays for one wrapper and its hooks, nothing else.
`stream_infer` is the same boundary for the messages of an inference stream."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeAlias, cast

import grpc

from serving.errors import ServingError
from serving.pb import inference_pb2 as pb
from serving.rpc.calls import Call, CallHook, Concern, status_name
from serving.rpc.decoding import checked, parsed, tolerant
from serving.rpc.logs import printable, shorten

__all__ = ["CallInterceptor", "client_detail", "refusing", "status_of", "stream_infer"]

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


UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
StreamBehavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]
Hooks = tuple[CallHook, ...]


def _finish(call: Call, hooks: Hooks, begun: int) -> None:
    """The `finished` of the first `begun` hooks, last started first (a hook whose `started`
    raised to refuse the call is not among them)."""
    call.seconds = time.perf_counter() - call.started
    for index in range(begun - 1, -1, -1):
        hooks[index].finished(call)


def _wrap_unary(behavior: UnaryBehavior, method: str, hooks: Hooks) -> UnaryBehavior:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        call = Call(method, request, context)
        begun = 0
        try:
            for hook in hooks:
                hook.started(call)
                begun += 1
            call.response = await behavior(parsed(request), context)
            return call.response
        except grpc.aio.AbortError:
            call.code = status_name(context.code())
            raise
        except asyncio.CancelledError:
            call.code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            call.code, call.message = status_of(exc, method)
            # Finished before the abort: it sends the status before it raises, and a client
            # that reads the metrics once it has its error must find the call counted.
            _finish(call, hooks, begun)
            begun = 0
            await context.abort(call.code, call.message)
        finally:
            _finish(call, hooks, begun)

    return wrapper


def _wrap_stream(
    behavior: StreamBehavior, method: str, hooks: Hooks, *, streaming: bool
) -> StreamBehavior:
    async def wrapper(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        call = Call(method, None if streaming else request, context)
        begun = 0
        try:
            for hook in hooks:
                hook.started(call)
                begun += 1
            requests = checked(request) if streaming else parsed(request)
            async for response in behavior(requests, context):
                yield response
        except grpc.aio.AbortError:
            call.code = status_name(context.code())
            raise
        except (asyncio.CancelledError, GeneratorExit):
            call.code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            call.code, call.message = status_of(exc, method)
            # Finished before the abort: it sends the status before it raises, and a client
            # that reads the metrics once it has its error must find the call counted.
            _finish(call, hooks, begun)
            begun = 0
            await context.abort(call.code, call.message)
        finally:
            _finish(call, hooks, begun)

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


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Statuses from exceptions, and `concerns` (in order, see `serving.rpc.calls`) around
    every handler; the last interceptor of a server."""

    def __init__(self, concerns: Sequence[Concern] = ()) -> None:
        self.concerns = tuple(concerns)
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
            wrapped = self._wrap(handler, handler_call_details.method)
            if len(self._wrapped) < _CACHE_LIMIT:
                self._wrapped[key] = wrapped
        return wrapped

    def _hooks(self, method: str, *, unary: bool) -> Hooks:
        found = (concern.for_method(method, unary=unary) for concern in self.concerns)
        return tuple(hook for hook in found if hook is not None)

    def _wrap(self, handler: Handler, method: str) -> Handler:
        deserializer = tolerant(handler.request_deserializer)
        serializer = handler.response_serializer
        unary = handler.unary_unary
        if unary is not None and inspect.iscoroutinefunction(unary):
            behavior = cast(UnaryBehavior, unary)
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(behavior, method, self._hooks(method, unary=True)),
                request_deserializer=deserializer,
                response_serializer=serializer,
            )
        server_streaming = handler.unary_stream
        if server_streaming is not None and inspect.isasyncgenfunction(server_streaming):
            hooks = self._hooks(method, unary=False)
            stream = cast(StreamBehavior, server_streaming)
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(stream, method, hooks, streaming=False),
                request_deserializer=deserializer,
                response_serializer=serializer,
            )
        bidirectional = handler.stream_stream
        if bidirectional is not None and inspect.isasyncgenfunction(bidirectional):
            hooks = self._hooks(method, unary=False)
            stream = cast(StreamBehavior, bidirectional)
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream(stream, method, hooks, streaming=True),
                request_deserializer=deserializer,
                response_serializer=serializer,
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
