"""A call as the server's interceptor sees it, and the contract of what is done around it.

Each thing a server does around every call is a *concern* of its own: the gRPC metrics
(`serving.rpc.metrics`), the call log (`serving.rpc.call_log`), the trace span
(`serving.rpc.tracing`), the bound on calls at once (`serving.rpc.admission`). The interceptor
(`serving.rpc.interceptor`) asks each concern once per method for its *hook* for that method;
a concern with nothing to do for a method (tracing off, health checks unbounded) answers None
and costs that method's calls nothing. Per call, the hooks' `started` run in order before the
handler, and once the status is known (the interceptor alone maps exceptions to statuses)
their `finished` run in reverse order, for the hooks whose `started` returned. A `started` may
raise a ServingError to refuse the call: the hooks started before it see the refusal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

__all__ = ["Call", "CallHook", "Concern", "status_name"]

_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


def status_name(code: object) -> grpc.StatusCode:
    """A status as grpc.aio's context reports it (a StatusCode, an int, or None) -> StatusCode."""
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        return _BY_VALUE.get(code, grpc.StatusCode.UNKNOWN)
    return grpc.StatusCode.UNKNOWN


@dataclass(slots=True)
class Call:
    """One call: `request` is None for a client stream; `code`, `message`, `seconds` and
    `response` are set by the time the hooks' `finished` run."""

    method: str
    request: Any
    context: grpc.aio.ServicerContext[Any, Any]
    started: float = field(default_factory=time.perf_counter)
    code: grpc.StatusCode = grpc.StatusCode.OK
    message: str = ""
    seconds: float = 0.0
    response: Any = None
    # The tracing hook's span and context token while the call runs (hooks are shared by
    # every call of a method, so what one call needs to keep lives here).
    span: Any = None


class CallHook(Protocol):
    """What one concern does around each call of one method."""

    def started(self, call: Call) -> None: ...

    def finished(self, call: Call) -> None: ...


class Concern(Protocol):
    """One thing a server does around its calls; asked once per method."""

    def for_method(self, method: str, *, unary: bool) -> CallHook | None:
        """The hook for `method` (`unary`: one request, one response), or None if this
        concern has nothing to do for it."""
        ...
