"""Builds and runs the gateway: routed GRPCInferenceService, health that follows the
backends, reflection, graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2

from gateway.routing import Router
from gateway.servicer import GatewayServicer
from gateway.settings import GatewaySettings
from gateway.training import GatewayTrainingServicer
from gateway.upstream import Upstream, watch
from serving.server import (
    SERVICE_NAMES,
    build_server,
    project_version,
    wait_for_signal,
    write_port_file,
)

__all__ = ["Gateway", "create_server", "serve"]

logger = logging.getLogger(__name__)


@dataclass
class Gateway:
    server: grpc.aio.Server
    port: int
    upstreams: list[Upstream]
    health: health.aio.HealthServicer
    interval: float
    _watcher: asyncio.Task[None] | None = field(default=None, init=False)

    async def start(self) -> None:
        await self.server.start()
        self._watcher = asyncio.create_task(watch(self.upstreams, self.interval, self._set_health))

    async def _set_health(self, ready: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        for upstream in self.upstreams:
            await upstream.close()


async def create_server(settings: GatewaySettings) -> Gateway:
    urls = settings.urls()
    if not urls:
        raise ValueError(
            "the gateway needs at least one backend: set TWINSERVE_GATEWAY_TENSORFLOW_URL "
            "and/or TWINSERVE_GATEWAY_PYTORCH_URL"
        )
    upstreams = {
        framework: Upstream(framework, url, max_message_bytes=settings.max_message_bytes)
        for framework, url in urls.items()
    }
    router = Router(list(upstreams), settings.default_framework, settings.model_frameworks)
    servicer = GatewayServicer(
        upstreams, router, timeout=settings.upstream_timeout_s, version=project_version()
    )
    training = GatewayTrainingServicer(upstreams, router, timeout=settings.upstream_timeout_s)
    server, port, health_servicer = build_server(
        servicer, training, settings.host, settings.port, settings.max_message_bytes
    )
    return Gateway(
        server, port, list(upstreams.values()), health_servicer, settings.health_interval_s
    )


async def serve(settings: GatewaySettings) -> None:
    gateway = await create_server(settings)
    await gateway.start()
    logger.info(
        "gateway listening on %s:%d -> %s",
        settings.host,
        gateway.port,
        ", ".join(f"{u.framework}@{u.url}" for u in gateway.upstreams),
    )
    if settings.port_file is not None:
        write_port_file(settings.port_file, gateway.port)
    await wait_for_signal()
    logger.info("draining (grace %.1fs)", settings.grace_period_s)
    await gateway.stop(settings.grace_period_s)
