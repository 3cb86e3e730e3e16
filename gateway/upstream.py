"""Connections to the framework services, and their health as the gateway sees it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from serving.errors import UpstreamError
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.pb.twinserve.v1 import training_pb2_grpc as tpb_grpc
from serving.server import grpc_options

__all__ = ["Upstream"]

logger = logging.getLogger(__name__)

Response = TypeVar("Response")


class Upstream:
    """One framework service. Calls carry a deadline; errors keep their status code."""

    def __init__(self, framework: str, url: str, *, max_message_bytes: int) -> None:
        self.framework = framework
        self.url = url
        self.channel = grpc.aio.insecure_channel(url, options=grpc_options(max_message_bytes))
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.training = tpb_grpc.TrainingServiceStub(self.channel)
        self.ready = False

    async def call(
        self,
        rpc: Callable[..., Awaitable[Response]],
        request: Any,
        timeout: float,
    ) -> Response:
        try:
            return await rpc(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise self._upstream_error(exc) from None

    async def stream(
        self,
        rpc: Callable[..., AsyncIterable[Response]],
        request: Any,
        timeout: float | None,
    ) -> AsyncIterator[Response]:
        """A server-streaming call relayed message by message; if our caller goes away, the
        upstream call is cancelled with it."""
        try:
            async for message in rpc(request, timeout=timeout):
                yield message
        except grpc.aio.AioRpcError as exc:
            raise self._upstream_error(exc) from None

    def _upstream_error(self, exc: grpc.aio.AioRpcError) -> UpstreamError:
        details = exc.details() or exc.code().name
        # Client mistakes read the same through the gateway as direct; transport failures
        # say which service failed.
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            details = f"{self.framework} service at {self.url}: {details}"
        return UpstreamError(exc.code(), details)

    async def probe(self, timeout: float) -> bool:
        try:
            response = await self.stub.ServerReady(pb.ServerReadyRequest(), timeout=timeout)
        except grpc.aio.AioRpcError:
            self.ready = False
        else:
            self.ready = response.ready
        return self.ready

    async def close(self) -> None:
        await self.channel.close()


async def watch(
    upstreams: list[Upstream],
    interval: float,
    on_change: Callable[[bool], Awaitable[None]],
) -> None:
    """Probes every upstream each `interval` seconds; calls `on_change(all_ready)` when the
    overall state flips (and once at start)."""
    last: bool | None = None
    while True:
        results = await asyncio.gather(*(u.probe(timeout=interval) for u in upstreams))
        state = all(results) and bool(results)
        if state != last:
            logger.info(
                "backends %s",
                ", ".join(f"{u.framework}={'ready' if u.ready else 'down'}" for u in upstreams),
            )
            await on_change(state)
            last = state
        await asyncio.sleep(interval)
