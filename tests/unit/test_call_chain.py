"""The call interceptor's contract (serving.rpc.calls): concerns asked once per method, hooks
started in order and finished in reverse with the status the interceptor mapped, a hook that
refuses stopping the call, and exceptions mapped to statuses in that one place."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from serving.errors import ModelNotFound, ResourceExhausted
from serving.rpc.calls import Call, CallHook
from serving.rpc.interceptor import CallInterceptor

METHOD = "/inference.GRPCInferenceService/ModelInfer"
HEALTH = "/grpc.health.v1.Health/Check"


class Context:
    """What the interceptor uses of a grpc.aio servicer context."""

    def __init__(self) -> None:
        self.status: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.status = (code, details)
        raise grpc.aio.AbortError()

    def code(self) -> grpc.StatusCode | None:
        return None if self.status is None else self.status[0]

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()


@dataclass
class Recorder:
    """A concern noting every hook event in `events`; `refuse` makes its `started` raise;
    `skip` names methods it has nothing to do for."""

    name: str
    events: list[str]
    refuse: bool = False
    skip: tuple[str, ...] = ()
    asked: list[str] = field(default_factory=list)

    def for_method(self, method: str, *, unary: bool) -> CallHook | None:
        self.asked.append(method)
        return None if method in self.skip else self

    def started(self, call: Call) -> None:
        self.events.append(f"{self.name} started")
        if self.refuse:
            raise ResourceExhausted("too busy")

    def finished(self, call: Call) -> None:
        self.events.append(f"{self.name} finished {call.code.name}")


@dataclass
class Details:
    method: str
    invocation_metadata: tuple[tuple[str, str], ...] = ()


def _call(
    interceptor: CallInterceptor,
    behavior: Callable[[Any, Any], Awaitable[Any]],
    method: str = METHOD,
    request: bytes = b"request",
    deserializer: Callable[[bytes], Any] = bytes.decode,
) -> tuple[Any, Context]:
    """One unary call through the interceptor: (the answer or the AbortError, the context)."""
    handler = grpc.unary_unary_rpc_method_handler(behavior, request_deserializer=deserializer)

    async def continuation(details: Any) -> Any:
        return handler

    async def run() -> Any:
        wrapped = await interceptor.intercept_service(continuation, Details(method))
        assert wrapped is not None
        context = Context()
        parsed = wrapped.request_deserializer(request)
        try:
            return await wrapped.unary_unary(parsed, context), context
        except grpc.aio.AbortError as exc:
            return exc, context

    result: tuple[Any, Context] = asyncio.run(run())
    return result


def test_hooks_run_in_order_and_finish_in_reverse_with_the_mapped_status() -> None:
    events: list[str] = []
    interceptor = CallInterceptor([Recorder("a", events), Recorder("b", events)])

    async def missing(request: str, context: Any) -> str:
        events.append(f"handler {request}")
        raise ModelNotFound("no model 'x'")

    answer, context = _call(interceptor, missing)
    assert isinstance(answer, grpc.aio.AbortError)
    assert context.status == (grpc.StatusCode.NOT_FOUND, "no model 'x'")
    assert events == [
        "a started",
        "b started",
        "handler request",
        "b finished NOT_FOUND",
        "a finished NOT_FOUND",
    ]


def test_a_hook_that_refuses_stops_the_call_and_the_earlier_hooks_see_it() -> None:
    events: list[str] = []
    concerns = [Recorder("a", events), Recorder("gate", events, refuse=True), Recorder("c", events)]
    interceptor = CallInterceptor(concerns)

    async def behavior(request: str, context: Any) -> str:
        events.append("handler")
        return request

    _, context = _call(interceptor, behavior)
    assert context.status == (grpc.StatusCode.RESOURCE_EXHAUSTED, "too busy")
    assert events == ["a started", "gate started", "a finished RESOURCE_EXHAUSTED"]


def test_concerns_are_asked_once_per_method_and_skipped_where_they_have_nothing_to_do() -> None:
    events: list[str] = []
    every = Recorder("every", events)
    not_health = Recorder("bounded", events, skip=(HEALTH,))
    interceptor = CallInterceptor([every, not_health])

    async def echo(request: str, context: Any) -> str:
        return request

    for _ in range(3):
        assert _call(interceptor, echo)[0] == "request"
    assert _call(interceptor, echo, method=HEALTH)[0] == "request"
    assert every.asked == [METHOD, HEALTH]
    assert not_health.asked == [METHOD, HEALTH]
    assert events.count("bounded started") == 3
    assert events.count("every started") == 4


def test_an_unexpected_exception_is_internal_with_a_generic_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events: list[str] = []
    interceptor = CallInterceptor([Recorder("a", events)])

    async def broken(request: str, context: Any) -> str:
        raise RuntimeError("secret path /etc/token")

    _, context = _call(interceptor, broken)
    assert context.status is not None
    code, details = context.status
    assert code == grpc.StatusCode.INTERNAL
    assert "secret" not in details
    assert events == ["a started", "a finished INTERNAL"]
    assert any(record.exc_info for record in caplog.records), "the traceback goes to the log"


def test_a_request_that_does_not_parse_is_invalid_argument() -> None:
    events: list[str] = []
    interceptor = CallInterceptor([Recorder("a", events)])

    async def behavior(request: str, context: Any) -> str:
        events.append("handler")
        return request

    _, context = _call(interceptor, behavior, request=b"\xff\xfe")
    assert context.status is not None
    assert context.status[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert events == ["a started", "a finished INVALID_ARGUMENT"]
