"""One log record per call, written once its status is known.

Records: one per failed call at WARNING (ERROR for a server fault), whatever the configured
level; one per successful call at DEBUG. Each carries `method`, `code`, `latency_ms`,
`request_id` (the request's `id`, else the `x-request-id` metadata), `model`,
`model_version` and `framework` where the call has them, as `extra=` fields that
`serving.rpc.logs.JsonFormatter` writes as JSON keys. Every field a client chose (and the
status detail, which may quote one) is bounded and escaped here (`serving.rpc.logs.printable`):
a request id with a newline stays on its one line, a 4 MiB model name costs 256 characters.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc

from serving.protocol.names import FRAMEWORK_PARAM, REQUEST_ID_HEADER
from serving.rpc.calls import Call, CallHook
from serving.rpc.logs import printable

__all__ = ["DETAIL_LIMIT", "CallLog"]

# The logger operators filter on; its name is part of the log's interface.
logger = logging.getLogger("twinserve.calls")

_SERVER_FAULTS = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
)
# A status detail in a log record: our words plus at most a bounded client field or two.
DETAIL_LIMIT = 1024


class CallLog:
    """The call log of one server, for every method; `framework` names the service in
    records whose messages do not (empty for the gateway)."""

    def __init__(self, framework: str = "") -> None:
        self.framework = framework

    def for_method(self, method: str, *, unary: bool) -> CallHook:
        return self

    def started(self, call: Call) -> None:
        """Nothing to note before the status is known."""

    def finished(self, call: Call) -> None:
        if call.code is grpc.StatusCode.OK:
            level = logging.DEBUG
        else:
            level = logging.ERROR if call.code in _SERVER_FAULTS else logging.WARNING
        if logger.isEnabledFor(level):
            self._log(level, call)

    def _log(self, level: int, call: Call) -> None:
        fields = _describe(call.request, call.response)
        fields.setdefault("framework", self.framework)
        if not fields.get("request_id"):
            fields["request_id"] = _metadata(call.context, REQUEST_ID_HEADER)
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
            "latency_ms": round(call.seconds * 1000, 3),
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
            call.seconds * 1000,
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
                    parameters[FRAMEWORK_PARAM].string_param
                    if FRAMEWORK_PARAM in parameters
                    else ""
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
