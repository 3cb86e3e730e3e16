"""The replicas of one framework service: which there are (fixed, or resolved from DNS every
health round), which are healthy, and which takes the next call; and the budget that keeps
retries from multiplying the load on a failing service."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection

import grpc

from gateway.replica import Replica, Target
from serving.errors import BackendUnavailable, ResourceExhausted

__all__ = ["ReplicaPool", "RetryBudget"]

logger = logging.getLogger(__name__)


class RetryBudget:
    """Retries may add `ratio` on top of the requests of the last `window_s` seconds, and
    `min_per_s` retries a second are allowed however quiet it was (Finagle's retry budget).
    When every replica fails, a request costs at most 1 + `ratio` calls, not one per replica.

    A new budget also holds `initial` retries, spent once and only when the rest is spent
    (gRPC's retry throttling starts with its token bucket full): in a gateway's first second
    there are no requests yet to take a ratio of, and a replica that fails calls then must
    not fail calls the other replicas could answer."""

    def __init__(
        self,
        ratio: float = 0.2,
        min_per_s: float = 10.0,
        window_s: int = 10,
        clock: Callable[[], float] = time.monotonic,
        initial: float = 100.0,
    ) -> None:
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.initial = initial
        self._clock = clock
        # One slot a second, reused round the ring.
        self._requests = [0] * window_s
        self._retries = [0] * window_s
        self._second = int(clock())
        self._reserve = self.initial

    def _slot(self) -> int:
        now = int(self._clock())
        size = len(self._requests)
        for second in range(max(self._second + 1, now - size + 1), now + 1):
            self._requests[second % size] = self._retries[second % size] = 0
        self._second = max(self._second, now)
        return now % size

    def record_request(self) -> None:
        self._requests[self._slot()] += 1

    def try_retry(self) -> bool:
        """Spends a retry if the budget has one."""
        slot = self._slot()
        allowed = self._retries[slot] < self.min_per_s or sum(self._retries) < self.ratio * sum(
            self._requests
        )
        if not allowed and self._reserve >= 1:
            self._reserve -= 1
            allowed = True
        if allowed:
            self._retries[slot] += 1
        return allowed


class ReplicaPool:
    """Picks replicas in turn (round robin, per call), skipping unhealthy ones, those whose
    channel is not connected while another's is, and those at `max_inflight`. When no
    replica is healthy all are tried: a health check can be wrong, and a call to a replica
    that is really down fails at once."""

    def __init__(
        self,
        framework: str,
        url: str,
        *,
        max_message_bytes: int,
        max_inflight: int,
        health_interval: float,
        credentials: grpc.ChannelCredentials | None = None,
        server_name: str = "",
        drain_s: float = 30.0,
    ) -> None:
        self.framework = framework
        self.url = url
        self.target = Target.parse(url)
        self.max_inflight = max_inflight
        self.health_interval = health_interval
        self.drain_s = drain_s
        self._max_message_bytes = max_message_bytes
        self._credentials = credentials
        self._server_name = server_name
        self.replicas = [self._replica(address, "") for address in self.target.fixed]
        self._next = 0
        self._checks: dict[Replica, asyncio.Task[bool]] = {}
        self._leaving: dict[Replica, asyncio.Task[None]] = {}  # gone from DNS, draining

    def _replica(self, address: str, name: str, *, healthy: bool = True) -> Replica:
        return Replica(
            self.framework,
            address,
            max_message_bytes=self._max_message_bytes,
            # Redialled twice a health interval when down, so a replica that comes back is
            # seen by the next check (gRPC's own backoff grows to two minutes).
            reconnect_s=self.health_interval / 2,
            credentials=self._credentials,
            server_name=self._server_name or name,
            healthy=healthy,
        )

    @property
    def ready(self) -> bool:
        return any(replica.healthy for replica in self.replicas)

    def candidates(self) -> list[Replica]:
        """The healthy replicas, or all of them when none is; raises BackendUnavailable when
        there is no replica at all (a DNS name that has not resolved)."""
        if not self.replicas:
            raise BackendUnavailable(
                f"no {self.framework} service replica to call: {self.url} has no address yet"
            )
        return [r for r in self.replicas if r.healthy] or list(self.replicas)

    def pick(self, tried: Collection[Replica] = (), *, bounded: bool = True) -> Replica:
        """The next replica in turn among the candidates not yet `tried`; with `bounded`, one
        under its in-flight limit. Raises BackendUnavailable or ResourceExhausted."""
        candidates = [r for r in self.candidates() if r not in tried]
        if not candidates:
            raise BackendUnavailable(f"no other {self.framework} service replica to call")
        open_ = [r for r in candidates if not bounded or r.inflight < self.max_inflight]
        if not open_:
            raise ResourceExhausted(
                f"all {len(candidates)} {self.framework} replicas are at their in-flight "
                f"limit ({self.max_inflight})"
            )
        # A replica whose channel is not connected (reconnecting after a restart, or in
        # backoff after a refused connection) could fail the call at once: not while
        # another one is connected.
        open_ = [r for r in open_ if r.connected] or open_
        count, start = len(self.replicas), self._next
        chosen = min(open_, key=lambda r: (self.replicas.index(r) - start) % count)
        self._next = (self.replicas.index(chosen) + 1) % count
        return chosen

    async def resolve(self) -> None:
        """Looks the DNS names up again: new addresses join (unhealthy until checked, unless
        nothing is healthy), vanished ones leave once their calls end."""
        if not self.target.names:
            return
        try:
            found = await self.target.resolve()
        except OSError as exc:
            logger.warning(
                "%s: cannot resolve %s (%s); keeping its replicas", self.framework, self.url, exc
            )
            return
        addresses = {address for address, _ in found}
        known = {replica.address for replica in self.replicas}
        gone = [r for r in self.replicas if r.address not in addresses]
        kept = [r for r in self.replicas if r.address in addresses]
        any_healthy = any(r.healthy for r in kept)
        added = [
            self._replica(address, name, healthy=not any_healthy)
            for address, name in found
            if address not in known
        ]
        self.replicas = kept + added
        for replica in added:
            logger.info("%s replica %s found (%s)", self.framework, replica.address, self.url)
        for replica in gone:
            logger.info("%s replica %s left %s", self.framework, replica.address, self.url)
            self._leaving[replica] = asyncio.create_task(self._drain(replica))

    async def _drain(self, replica: Replica) -> None:
        await replica.close(self.drain_s)
        del self._leaving[replica]

    async def check(self, timeout: float) -> bool:
        """Checks every replica's health; True if any is healthy."""
        await asyncio.gather(*(replica.check(timeout) for replica in self.replicas))
        return self.ready

    def suspect(self, replica: Replica) -> None:
        """A call to `replica` failed as if it were down: check it now, not at the next
        round, so calls stop going there within milliseconds if it is."""
        if replica in self._checks or replica not in self.replicas:
            return
        task = asyncio.create_task(replica.check(self.health_interval))
        self._checks[replica] = task
        task.add_done_callback(lambda _: self._checks.pop(replica, None))

    async def close(self) -> None:
        tasks = [*self._checks.values(), *self._leaving.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        replicas = [*self.replicas, *self._leaving]
        await asyncio.gather(*(replica.close() for replica in replicas))
