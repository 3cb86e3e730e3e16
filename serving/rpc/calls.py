"""What a server notes about every call, in the error interceptor where its status is known:
the gRPC metrics, a structured log record, and the bound on calls handled at once.

Log records: one per failed call at WARNING (ERROR for a server fault), whatever the
configured level; one per successful call at DEBUG. Each carries `method`, `code`,
`latency_ms`, `request_id` (the request's `id`, else the `x-request-id` metadata),
`model`, `model_version` and `framework` where the call has them, as `extra=` fields that
`serving.rpc.logs.JsonFormatter` writes as JSON keys. Every field a client chose (and the status
detail, which may quote one) is bounded and escaped here (`serving.rpc.logs.printable`): a
request id with a newline stays on its one line, a 4 MiB model name costs 256 characters.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import grpc

from serving.errors import ResourceExhausted
from serving.rpc.logs import printable
from serving.rpc.metrics import RpcMetrics

__all__ = ["Call", "CallObserver", "status_name"]

logger = logging.getLogger("twinserve.calls")

# Always answered, whatever the load: a probe must see a busy server as alive.
_UNBOUNDED_PREFIXES = ("/grpc.health.", "/grpc.reflection.")
_SERVER_FAULTS = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
)
_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}
# A status detail in a log record: our words plus at most a bounded client field or two.
DETAIL_LIMIT = 1024


def status_name(code: object) -> grpc.StatusCode:
    """A status as grpc.aio's context reports it (a StatusCode, an int, or None) -> StatusCode."""
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        return _BY_VALUE.get(code, grpc.StatusCode.UNKNOWN)
    return grpc.StatusCode.UNKNOWN


@dataclass(slots=True)
class Call:
    method: str
    request: Any
    context: grpc.aio.ServicerContext[Any, Any]
    admitted: bool
    started: float = field(default_factory=time.perf_counter)
    code: grpc.StatusCode = grpc.StatusCode.OK
    message: str = ""
    response: Any = None


class CallObserver:
    """Shared by every call of one server. `max_concurrent` bounds the calls handled at once
    (health and reflection aside); past it a call is refused with RESOURCE_EXHAUSTED before
    any work, so nothing behind the server queues without bound. 0: no bound."""

    def __init__(
        self, metrics: RpcMetrics | None = None, *, framework: str = "", max_concurrent: int = 0
    ) -> None:
        self.metrics = metrics
        self.framework = framework
        self.max_concurrent = max_concurrent
        self.active = 0

    def start(self, method: str, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Call:
        bounded = self.max_concurrent and not method.startswith(_UNBOUNDED_PREFIXES)
        admitted = not bounded or self.active < self.max_concurrent
        if admitted:
            self.active += 1
        if self.metrics is not None:
            self.metrics.started(method)
        return Call(method, request, context, admitted)

    def refusal(self) -> ResourceExhausted:
        return ResourceExhausted(
            f"the server is handling {self.active} calls, its limit (max_concurrent_rpcs); "
            "retry later or on another replica"
        )

    def finish(self, call: Call) -> None:
        seconds = time.perf_counter() - call.started
        if call.admitted:
            self.active -= 1
        if self.metrics is not None:
            self.metrics.finished(call.method, call.code.name, seconds)
        failed = call.code is not grpc.StatusCode.OK
        level = (
            (logging.ERROR if call.code in _SERVER_FAULTS else logging.WARNING)
            if failed
            else logging.DEBUG
        )
        if logger.isEnabledFor(level):
            self._log(level, call, seconds)

    def _log(self, level: int, call: Call, seconds: float) -> None:
        fields = _describe(call.request, call.response)
        fields.setdefault("framework", self.framework)
        if not fields.get("request_id"):
            fields["request_id"] = _metadata(call.context, "x-request-id")
        fields = {key: printable(value) for key, value in fields.items() if value}
        method = printable(call.method.rpartition("/")[2])
        what = " ".join(
            part
            for part in (
                method,
                fields.get("model", ""),
                f"v{fields['model_version']}" if "model_version" in fields else "",
                f"({fields['framework']})" if "framework" in fields else "",
                f"id={fields['request_id']}" if "request_id" in fields else "",
            )
            if part
        )
        record: dict[str, object] = {
            "method": method,
            "code": call.code.name,
            "latency_ms": round(seconds * 1000, 3),
            **fields,
        }
        detail = printable(call.message, DETAIL_LIMIT)
        if detail:
            record["detail"] = detail
        logger.log(
            level,
            "%s -> %s in %.1f ms%s",
            what,
            call.code.name,
            seconds * 1000,
            f": {detail}" if detail else "",
            extra=record,
        )


def _describe(request: Any, response: Any) -> dict[str, str]:
    """Model, version, id and framework from whichever message has them."""
    fields: dict[str, str] = {}
    for message in (response, request):
        if message is None:
            continue
        for name, key in (("model_name", "model"), ("name", "model"), ("id", "request_id")):
            value = getattr(message, name, None)
            if isinstance(value, str) and value and key not in fields:
                fields[key] = value
        version = getattr(message, "model_version", None) or getattr(message, "version", None)
        if isinstance(version, str) and version and "model_version" not in fields:
            fields["model_version"] = version
        parameters = getattr(message, "parameters", None)
        if parameters is not None and "framework" not in fields:
            try:
                framework = (
                    parameters["framework"].string_param if "framework" in parameters else ""
                )
            except (TypeError, AttributeError, KeyError):
                framework = ""
            if framework:
                fields["framework"] = framework
    return fields


def _metadata(context: grpc.aio.ServicerContext[Any, Any], key: str) -> str:
    try:
        for name, value in context.invocation_metadata() or ():
            if name == key and isinstance(value, str):
                return value
    except Exception:  # a context without metadata (never expected; logging must not fail)
        return ""
    return ""
