"""Where models live: the models each framework's service has ready, so that a request that
names no framework for a model only one framework serves goes there (`gateway.routing`).

Each framework's set comes from its replicas' RepositoryIndex (ready models, every replica's
together) and is refreshed every health interval. A model found in no set triggers one more
round at once (a model loaded a moment ago is found on its first request), shared by every
caller that misses meanwhile: at most one round runs and one waits to run, rounds start at
least `MIN_GAP_S` apart, and a caller waits for one no longer than half its deadline and
`miss_wait_s`; then it is routed as before (the default framework answers NOT_FOUND). The hot
path is a dictionary lookup; a failed round keeps the last sets and never fails a call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping

from gateway.upstream import Upstream

__all__ = ["ModelLocations"]

logger = logging.getLogger(__name__)

# Rounds start at least this far apart, so a flood of requests for unknown models costs each
# service at most 1 / MIN_GAP_S index calls a second.
MIN_GAP_S = 0.05


class ModelLocations:
    """The ready models of each framework (in configuration order). A framework whose
    replicas have not answered an index yet counts as serving nothing."""

    def __init__(
        self, upstreams: Mapping[str, Upstream], *, timeout: float, miss_wait_s: float
    ) -> None:
        self.upstreams = dict(upstreams)
        self.timeout = timeout  # of one round's index calls
        self.miss_wait_s = miss_wait_s
        self.rounds = 0  # rounds run, periodic and on a miss
        self._served: dict[str, frozenset[str]] = {}
        self._running: asyncio.Task[None] | None = None
        self._queued: asyncio.Task[None] | None = None
        self._last_start = -MIN_GAP_S

    def serving(self, model: str) -> tuple[str, ...]:
        """The frameworks known to have `model` ready, in configuration order."""
        return tuple(name for name in self.upstreams if model in self._served.get(name, ()))

    async def find(self, model: str, wait_s: float) -> tuple[str, ...]:
        """The frameworks serving `model`; on a miss, after a round that started after this
        call, if one ends within `wait_s` (capped at `miss_wait_s`)."""
        found = self.serving(model)
        if found:
            return found
        await self.renew(wait_s)
        return self.serving(model)

    async def renew(self, wait_s: float) -> None:
        """Waits for a round that starts after this call, at most half of `wait_s` (the
        caller's time: the call itself keeps the rest) and `miss_wait_s`; a round still
        running then goes on for the others."""
        wait_s = min(wait_s / 2, self.miss_wait_s)
        if wait_s <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._next_round()), wait_s)

    async def refresh(self) -> None:
        """One round now (or the next one, if one is already running)."""
        await asyncio.shield(self._next_round())

    async def watch(self, interval: float) -> None:
        """A round every `interval` seconds, beside the health checks."""
        while True:
            await asyncio.sleep(interval)
            await self.refresh()

    def _next_round(self) -> asyncio.Task[None]:
        """A round that starts no earlier than now: the queued one, else a new one queued
        behind the running one (which may have asked before the model was loaded), else a
        new one."""
        if self._queued is not None:
            return self._queued
        if self._running is not None and not self._running.done():
            self._queued = asyncio.create_task(self._after(self._running))
            return self._queued
        self._running = asyncio.create_task(self._round())
        return self._running

    async def _after(self, previous: asyncio.Task[None]) -> None:
        await asyncio.wait([previous])
        self._running, self._queued = self._queued, None
        await self._round()

    async def _round(self) -> None:
        gap = self._last_start + MIN_GAP_S - time.monotonic()
        if gap > 0:
            await asyncio.sleep(gap)
        self._last_start = time.monotonic()
        self.rounds += 1
        names = list(self.upstreams)
        found = await asyncio.gather(
            *(self.upstreams[name].ready_models(self.timeout) for name in names),
            return_exceptions=True,
        )
        for name, models in zip(names, found, strict=True):
            if isinstance(models, BaseException):
                # A fault of ours: logged, never a client's failed call.
                logger.error("%s: reading the model index failed", name, exc_info=models)
            elif models is not None:  # no replica answered: the last set stays
                self._served[name] = models

    async def close(self) -> None:
        for task in (self._queued, self._running):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
