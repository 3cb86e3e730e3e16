"""A draining server's gate: once draining, every new call (health and reflection aside) is
answered UNAVAILABLE at once, as Triton answers requests that reach a stopping server, so a
client or gateway retries it on another replica; the calls already accepted run to the end.

Why not just `grpc.aio.Server.stop(grace)`: it lets the calls already in a handler finish,
but the calls that reached the server and were still waiting for the event loop (many, when
the loop is busy running small models inline) are cancelled at once: their clients get
CANCELLED, a code they cannot tell from their own cancellation and do not retry. So the
server first answers UNAVAILABLE until callers have stopped sending (a gateway stops as soon
as its health check sees NOT_SERVING) and only then stops, with nothing waiting."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import grpc

from serving.rpc.interceptor import refusing

__all__ = ["Drain"]

logger = logging.getLogger(__name__)

# New calls are refused until none has come for this long, so that nothing is waiting when
# the server stops; at most half the time left goes to it.
QUIET_S = 0.25

# Always answered while draining: a probe must see NOT_SERVING, not a refusal.
_OPEN_PREFIXES = ("/grpc.health.", "/grpc.reflection.")
MESSAGE = "the server is shutting down; retry on another replica"

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


class Drain(grpc.aio.ServerInterceptor):
    """The first interceptor of a server. `begin` starts refusing; `settled` waits until no
    call has been refused for a while."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.draining = False
        self.refused = 0
        self._clock = clock
        self._last_refusal = 0.0

    def begin(self) -> None:
        self.draining = True
        self._last_refusal = self._clock()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method or ""
        if not self.draining or handler is None or method.startswith(_OPEN_PREFIXES):
            return handler
        self.refused += 1
        self._last_refusal = self._clock()
        return refusing(handler, grpc.StatusCode.UNAVAILABLE, MESSAGE)

    async def settled(self, quiet: float, until: float) -> None:
        """Returns once no call has been refused for `quiet` seconds, or at `until` (this
        drain's clock) whichever is first."""
        while True:
            now = self._clock()
            wait = min(self._last_refusal + quiet, until) - now
            if wait <= 0:
                return
            await asyncio.sleep(wait)

    async def stop(self, server: grpc.aio.Server, deadline: float) -> None:
        """Refuses new calls until callers have left (at most half the time left before
        `deadline`, this drain's clock), then stops `server`, letting the calls it accepted
        finish by `deadline`."""
        if not self.draining:
            self.begin()
        await self.settled(QUIET_S, until=self._clock() + (deadline - self._clock()) / 2)
        if self.refused:
            logger.info("draining: %d new calls refused (UNAVAILABLE)", self.refused)
        # Waits for the calls in flight (cancelling what is left at the deadline).
        await server.stop(max(0.0, deadline - self._clock()))
