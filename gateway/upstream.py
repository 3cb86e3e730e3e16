"""Calls to a framework service, however many replicas it has: which replica takes each call
(`gateway.pool`), retries within a budget, deadlines, and errors that keep their status code.

Which replicas a method goes to is in `gateway.methods`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import grpc
from google.protobuf.message import Message

from gateway.methods import InferenceMethods, Policy, ServerStream, TrainingMethods, Unary
from gateway.pool import ReplicaPool, RetryBudget
from gateway.replica import Replica
from serving.errors import ResourceExhausted, ServingError, UpstreamError
from serving.pb import inference_pb2 as pb
from serving.pb.twinserve.v1 import training_pb2 as tpb

__all__ = ["Upstream", "watch"]

logger = logging.getLogger(__name__)

Request = TypeVar("Request", bound=Message)
Response = TypeVar("Response", bound=Message)

# A call goes to at most this many replicas.
MAX_ATTEMPTS = 3
# Answers after which an idempotent call is tried on another replica: the replica is down
# or going down (a server that stops cancels the calls it has not answered; our own
# cancellation, when our caller goes away, is asyncio's, never an upstream status).
RETRY_ON = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})
# How long finding a job's replica may take when the caller set no deadline.
JOB_LOOKUP_S = 10.0
# The state of a loaded model version in a RepositoryIndex answer (Triton's).
READY = "READY"


class Upstream:
    """One framework service behind one or more replicas. Calls carry a deadline; errors
    keep their status code. The counters are for tests and, later, metrics."""

    stub = InferenceMethods()
    training = TrainingMethods()

    def __init__(
        self,
        framework: str,
        url: str,
        *,
        max_message_bytes: int,
        credentials: grpc.ChannelCredentials | None = None,
        server_name: str = "",
        max_inflight: int = 64,
        health_interval: float = 2.0,
        retry_budget: RetryBudget | None = None,
    ) -> None:
        self.framework = framework
        self.url = url
        self.pool = ReplicaPool(
            framework,
            url,
            max_message_bytes=max_message_bytes,
            max_inflight=max_inflight,
            health_interval=health_interval,
            credentials=credentials,
            server_name=server_name,
        )
        self.budget = retry_budget if retry_budget is not None else RetryBudget()
        self.requests = 0  # calls asked of this service
        self.attempts = 0  # calls sent to its replicas, retries and fan-outs included
        self.retries = 0
        self.retries_denied = 0  # retries the budget refused
        self.rejected = 0  # refused at once: every replica at its in-flight limit

    @property
    def ready(self) -> bool:
        return self.pool.ready

    @property
    def replicas(self) -> list[Replica]:
        return self.pool.replicas

    async def call(
        self, rpc: Unary[Request, Response], request: Request, timeout: float
    ) -> Response:
        self.requests += 1
        if rpc.policy is Policy.EVERY:
            return (await self._fan_out(rpc, request, timeout, every=True))[0]
        if rpc.policy is Policy.MERGED:
            answers = await self._fan_out(rpc, request, timeout, every=False)
            merged = type(answers[0])()
            for answer in answers:
                merged.MergeFrom(answer)
            return merged
        if rpc.policy is Policy.OWNER:
            deadline = time.monotonic() + timeout
            replica = await self._owner(request, timeout)
            return await self._once(replica, rpc, request, deadline - time.monotonic())
        return await self._balanced(rpc, request, timeout)

    async def stream(
        self, rpc: ServerStream[Request, Response], request: Request, timeout: float | None
    ) -> AsyncIterator[Response]:
        """A server-streaming call relayed message by message; if our caller goes away, the
        upstream call is cancelled with it."""
        self.requests += 1
        if rpc.policy is Policy.OWNER:
            lookup = JOB_LOOKUP_S if timeout is None else timeout
            replica = await self._owner(request, lookup)
        else:
            replica = self.pool.pick(bounded=False)
        self.attempts += 1
        replica.calls += 1
        try:
            async for message in rpc.bind(replica)(request, timeout=timeout):
                yield message
        except grpc.aio.AioRpcError as exc:
            raise self._error(replica, exc) from None

    async def _balanced(
        self, rpc: Unary[Request, Response], request: Request, timeout: float
    ) -> Response:
        deadline = time.monotonic() + timeout
        self.budget.record_request()
        try:
            replica = self.pool.pick()
        except ResourceExhausted:
            self.rejected += 1
            raise
        tried = [replica]
        while True:
            try:
                return await self._attempt(replica, rpc, request, deadline - time.monotonic())
            except grpc.aio.AioRpcError as exc:
                retry = self._retry(rpc, tried, deadline) if exc.code() in RETRY_ON else None
                if retry is None:
                    raise self._error(replica, exc) from None
                self.pool.suspect(replica)
                logger.debug("%s: retrying %s on %s", self.framework, rpc.name, retry.address)
                replica = retry
                tried.append(replica)

    def _retry(
        self, rpc: Unary[Any, Any], tried: Sequence[Replica], deadline: float
    ) -> Replica | None:
        """Another replica for a call that found one unavailable, if the method may be
        retried, time is left and the budget allows."""
        if rpc.policy is not Policy.RETRIED or len(tried) >= MAX_ATTEMPTS:
            return None
        if deadline <= time.monotonic():
            return None
        try:
            replica = self.pool.pick(tried)
        except ServingError:
            return None
        if not self.budget.try_retry():
            self.retries_denied += 1
            return None
        self.retries += 1
        return replica

    async def _attempt(
        self, replica: Replica, rpc: Unary[Request, Response], request: Request, timeout: float
    ) -> Response:
        self.attempts += 1
        replica.calls += 1
        replica.inflight += 1
        try:
            return await rpc.bind(replica)(request, timeout=max(0.0, timeout))
        finally:
            replica.inflight -= 1

    async def _once(
        self, replica: Replica, rpc: Unary[Request, Response], request: Request, timeout: float
    ) -> Response:
        try:
            return await self._attempt(replica, rpc, request, timeout)
        except grpc.aio.AioRpcError as exc:
            raise self._error(replica, exc) from None

    async def _fan_out(
        self, rpc: Unary[Request, Response], request: Request, timeout: float, *, every: bool
    ) -> list[Response]:
        """Calls every candidate replica at once. With `every`, any failure fails the call;
        else unavailable replicas are left out unless all are."""
        replicas = self.pool.candidates()
        results = await asyncio.gather(
            *(self._once(replica, rpc, request, timeout) for replica in replicas),
            return_exceptions=True,
        )
        answers = [result for result in results if not isinstance(result, BaseException)]
        errors = [result for result in results if isinstance(result, BaseException)]
        for error in errors:
            unavailable = (
                isinstance(error, UpstreamError) and error.code is grpc.StatusCode.UNAVAILABLE
            )
            if every or not answers or not unavailable:
                raise error
        return answers

    async def _owner(self, request: Message, timeout: float) -> Replica:
        """The replica that runs the job `request` names: the one whose GetJob finds it."""
        replicas = self.pool.candidates()
        if len(replicas) <= 1:
            return self.pool.pick(bounded=False)
        lookup = cast(tpb.JobRequest, request)
        results = await asyncio.gather(
            *(self._once(r, self.training.GetJob, lookup, timeout) for r in replicas),
            return_exceptions=True,
        )
        errors: list[UpstreamError] = []
        for replica, result in zip(replicas, results, strict=True):
            if not isinstance(result, BaseException):
                return replica
            if not isinstance(result, UpstreamError):
                raise result
            errors.append(result)
        # Nobody has it: NOT_FOUND if every replica said so, else what kept one from saying.
        raise next((e for e in errors if e.code is not grpc.StatusCode.NOT_FOUND), errors[0])

    def _error(self, replica: Replica, exc: grpc.aio.AioRpcError) -> UpstreamError:
        """The upstream's status for our caller; a replica that seems down is checked now."""
        if exc.code() in RETRY_ON:
            self.pool.suspect(replica)
        details = exc.details() or exc.code().name
        # Client mistakes read the same through the gateway as direct; transport failures
        # say which service failed.
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            details = f"{self.framework} service at {replica.address}: {details}"
        return UpstreamError(exc.code(), details)

    async def probe(self, timeout: float) -> bool:
        """Checks every replica's health now; True if any is healthy."""
        return await self.pool.check(timeout)

    async def ready_models(self, timeout: float) -> frozenset[str] | None:
        """The models any healthy replica has ready (RepositoryIndex), asked of each at once
        and outside the call counters and retry budget, as a health check is; None when none
        answered. Unhealthy replicas are not asked: one that drains must go quiet to stop."""
        request = pb.RepositoryIndexRequest(ready=True)
        replicas = [replica for replica in self.replicas if replica.healthy]
        answers = await asyncio.gather(
            *(r.stub.RepositoryIndex(request, timeout=timeout) for r in replicas),
            return_exceptions=True,
        )
        ready: set[str] = set()
        answered = False
        for replica, answer in zip(replicas, answers, strict=True):
            if isinstance(answer, grpc.aio.AioRpcError):
                logger.debug(
                    "%s replica %s: no index (%s)",
                    self.framework,
                    replica.address,
                    answer.code().name,
                )
            elif isinstance(answer, BaseException):
                raise answer
            else:
                answered = True
                ready.update(m.name for m in answer.models if m.state == READY)
        return frozenset(ready) if answered else None

    async def refresh(self, timeout: float) -> bool:
        """Looks the URL's DNS names up again, then checks every replica's health."""
        await self.pool.resolve()
        return await self.pool.check(timeout)

    def describe(self) -> str:
        healthy = sum(replica.healthy for replica in self.replicas)
        return f"{self.framework}={healthy}/{len(self.replicas)} healthy"

    async def close(self) -> None:
        await self.pool.close()


async def watch(
    upstreams: list[Upstream],
    interval: float,
    on_change: Callable[[bool], Awaitable[None]],
) -> None:
    """Every `interval` seconds looks DNS names up again and checks every replica (the first
    round is `Upstream.refresh` before the gateway starts); calls `on_change(ready)` when the
    overall state flips, and once at start: ready while every service has a healthy
    replica."""
    last: bool | None = None
    while True:
        state = bool(upstreams) and all(u.ready for u in upstreams)
        if state != last:
            logger.info("backends %s", ", ".join(u.describe() for u in upstreams))
            await on_change(state)
            last = state
        await asyncio.sleep(interval)
        await asyncio.gather(*(u.refresh(timeout=interval) for u in upstreams))
