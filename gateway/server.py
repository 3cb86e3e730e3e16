"""Builds and runs the gateway: routed GRPCInferenceService, TrainingService and
ComparisonService, health that follows the backends, reflection, the routing file's watcher,
graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2
from prometheus_client import CollectorRegistry

from gateway.compare import ComparisonServicer
from gateway.locations import ModelLocations
from gateway.metrics import GatewayCollector
from gateway.policy import PolicyFile, describe
from gateway.pool import RetryBudget
from gateway.routing import Router
from gateway.servicer import GatewayServicer
from gateway.settings import GatewaySettings
from gateway.shadow import Shadow
from gateway.training import GatewayTrainingServicer
from gateway.upstream import Upstream, watch
from serving.pb.twinserve.v1 import compare_pb2 as cpb
from serving.pb.twinserve.v1 import compare_pb2_grpc as cpb_grpc
from serving.rpc.drain import Drain
from serving.rpc.metrics import MetricsServer, RpcMetrics, new_registry
from serving.rpc.security import (
    channel_credentials,
    server_security,
    transport_name,
)
from serving.rpc.server import (
    SERVICE_NAMES,
    build_server,
    call_concerns,
    project_version,
    wait_for_signal,
    write_port_file,
)

__all__ = ["Gateway", "create_server", "serve"]

logger = logging.getLogger(__name__)

# The longest a request for a model found nowhere waits for a fresh look at the services
# before it is routed as before (a service that does not answer its index is not waited on).
MISS_WAIT_S = 1.0

COMPARISON_SERVICE_NAME = cpb.DESCRIPTOR.services_by_name["ComparisonService"].full_name


@dataclass
class Gateway:
    server: grpc.aio.Server
    port: int
    upstreams: list[Upstream]
    health: health.aio.HealthServicer
    interval: float
    drain: Drain
    router: Router | None = None
    locations: ModelLocations | None = None
    shadow: Shadow | None = None
    policy_file: PolicyFile | None = None
    routing_poll_s: float = 1.0
    registry: CollectorRegistry | None = None
    # Where to serve the registry over HTTP once started; None: not served.
    metrics_address: tuple[str, int] | None = None
    metrics_server: MetricsServer | None = field(default=None, init=False)
    _watcher: asyncio.Task[None] | None = field(default=None, init=False)
    _policy_watcher: asyncio.Task[None] | None = field(default=None, init=False)
    _locations_watcher: asyncio.Task[None] | None = field(default=None, init=False)

    async def start(self) -> None:
        await self.server.start()
        if self.registry is not None and self.metrics_address is not None:
            self.metrics_server = MetricsServer(self.registry, *self.metrics_address)
        self._watcher = asyncio.create_task(watch(self.upstreams, self.interval, self._set_health))
        if self.locations is not None:
            self._locations_watcher = asyncio.create_task(self.locations.watch(self.interval))
        if self.policy_file is not None and self.router is not None:
            self._policy_watcher = asyncio.create_task(
                self.policy_file.watch(self.routing_poll_s, self.router.apply)
            )

    async def _set_health(self, ready: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICE_NAMES, COMPARISON_SERVICE_NAME):
            await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        for task in (self._watcher, self._policy_watcher, self._locations_watcher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        deadline = time.monotonic() + grace
        # As a service drains (`serving.rpc.drain`): NOT_SERVING first, then new calls answered
        # UNAVAILABLE (a load balancer or client moves them to another gateway) until callers
        # have left, and only then a stop that lets the accepted calls finish.
        await self.health.enter_graceful_shutdown()
        await self.drain.stop(self.server, deadline)
        if self.shadow is not None:
            await self.shadow.close()
        if self.locations is not None:
            await self.locations.close()
        for upstream in self.upstreams:
            await upstream.close()
        if self.metrics_server is not None:
            await asyncio.to_thread(self.metrics_server.close)


def upstream_credentials(settings: GatewaySettings) -> grpc.ChannelCredentials | None:
    """TLS (and the bearer token) for the channels to the services; None for plaintext."""
    token = settings.upstream_auth_token
    if not settings.upstream_tls():
        if token is not None:
            raise ValueError(
                "upstream_auth_token is sent over TLS only: set upstream_tls_ca_file too"
            )
        return None
    return channel_credentials(
        settings.upstream_tls_ca_file,
        settings.upstream_tls_cert_file,
        settings.upstream_tls_key_file,
        token=None if token is None else token.get_secret_value(),
    )


async def create_server(settings: GatewaySettings) -> Gateway:
    urls = settings.urls()
    if not urls:
        raise ValueError(
            "the gateway needs at least one backend: set TWINSERVE_GATEWAY_FRAMEWORKS "
            "(a JSON object: framework name -> addresses)"
        )
    policy_file, policies = None, {}
    if settings.routing_file is not None:
        policy_file = PolicyFile(settings.routing_file, frozenset(urls))
        # A bad file at start stops the start (PolicyError); later, the last good one stays.
        policies = await asyncio.to_thread(policy_file.load)
        logger.info("routing file %s: %s", settings.routing_file, describe(policies) or "empty")
    credentials = upstream_credentials(settings)
    upstreams = {
        framework: Upstream(
            framework,
            url,
            max_message_bytes=settings.max_message_bytes,
            credentials=credentials,
            server_name=settings.upstream_tls_server_name,
            max_inflight=settings.max_inflight_per_replica,
            health_interval=settings.health_interval_s,
            retry_budget=RetryBudget(
                settings.retry_budget_ratio,
                settings.retry_budget_min_per_s,
                initial=settings.retry_budget_initial,
            ),
        )
        for framework, url in urls.items()
    }
    # The first health round (and DNS lookup): the gateway starts knowing its replicas, and
    # then where its models are.
    await asyncio.gather(*(u.refresh(settings.health_interval_s) for u in upstreams.values()))
    locations = ModelLocations(
        upstreams,
        timeout=min(settings.health_interval_s, settings.upstream_timeout_s),
        miss_wait_s=min(MISS_WAIT_S, settings.health_interval_s),
    )
    await locations.refresh()
    router = Router(list(upstreams), settings.default(), settings.model_frameworks, locations)
    router.apply(policies)
    shadow = Shadow(
        upstreams, limit=settings.shadow_max_in_flight, timeout=settings.shadow_timeout_s
    )
    servicer = GatewayServicer(
        upstreams,
        router,
        timeout=settings.upstream_timeout_s,
        version=project_version(),
        shadow=shadow,
    )
    comparison = ComparisonServicer(
        upstreams,
        router,
        shadow,
        timeout=settings.upstream_timeout_s,
        max_answer_bytes=settings.max_message_bytes,
    )
    training = GatewayTrainingServicer(upstreams, router, timeout=settings.upstream_timeout_s)
    registry = new_registry()
    registry.register(GatewayCollector(list(upstreams.values()), shadow))
    concerns = call_concerns(RpcMetrics(registry), max_concurrent=settings.max_concurrent_rpcs)
    server_creds, interceptors = server_security(settings)
    drain = Drain()
    server, port, health_servicer = build_server(
        servicer,
        training,
        settings.host,
        settings.port,
        settings.max_message_bytes,
        credentials=server_creds,
        interceptors=[drain, *interceptors],
        services={
            COMPARISON_SERVICE_NAME: functools.partial(
                cpb_grpc.add_ComparisonServiceServicer_to_server, comparison
            )
        },
        concerns=concerns,
        max_streams_per_connection=settings.max_streams_per_connection,
    )
    return Gateway(
        server,
        port,
        list(upstreams.values()),
        health_servicer,
        settings.health_interval_s,
        drain,
        router=router,
        locations=locations,
        shadow=shadow,
        policy_file=policy_file,
        routing_poll_s=settings.routing_poll_s,
        registry=registry,
        metrics_address=(
            None if settings.metrics_port is None else (settings.host, settings.metrics_port)
        ),
    )


async def serve(settings: GatewaySettings) -> None:
    gateway = await create_server(settings)
    await gateway.start()
    logger.info(
        "gateway listening on %s:%d, %s -> %s (%s)",
        settings.host,
        gateway.port,
        transport_name(settings.tls_cert_file, settings.tls_client_ca_file),
        ", ".join(f"{u.framework}@{u.url}" for u in gateway.upstreams),
        "TLS" if settings.upstream_tls() else "plaintext",
    )
    if gateway.metrics_server is not None:
        logger.info("metrics on http://%s:%d/metrics", settings.host, gateway.metrics_server.port)
    if settings.port_file is not None:
        write_port_file(settings.port_file, gateway.port)
    await wait_for_signal()
    logger.info("draining (grace %.1fs)", settings.grace_period_s)
    await gateway.stop(settings.grace_period_s)
