"""The bound on calls a server handles at once (`max_concurrent_rpcs`): past it a call is
refused with RESOURCE_EXHAUSTED before any work, so nothing behind the server queues
without bound, and a client or gateway can retry on another replica. Health checks and
reflection are always answered: a probe must see a busy server as alive."""

from __future__ import annotations

from serving.errors import ResourceExhausted
from serving.rpc.calls import Call, CallHook

__all__ = ["Admission"]

_UNBOUNDED_PREFIXES = ("/grpc.health.", "/grpc.reflection.")


class Admission:
    """Shared by every bounded method of one server; `limit` 0 bounds nothing."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    def for_method(self, method: str, *, unary: bool) -> CallHook | None:
        if not self.limit or method.startswith(_UNBOUNDED_PREFIXES):
            return None
        return self

    def started(self, call: Call) -> None:
        if self.active >= self.limit:
            raise ResourceExhausted(
                f"the server is handling {self.active} calls, its limit (max_concurrent_rpcs); "
                "retry later or on another replica"
            )
        self.active += 1

    def finished(self, call: Call) -> None:
        self.active -= 1
