"""Builds and runs a framework service: the inference servicer, health, reflection, and a
graceful drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from serving.backend import Backend
from serving.calls import CallObserver
from serving.dataplane import DataPlane
from serving.drain import Drain
from serving.interceptor import ErrorInterceptor
from serving.jobs import JobManager
from serving.manager import ModelManager
from serving.metrics import (
    DeviceCollector,
    InferenceMetrics,
    JobCollector,
    MetricsServer,
    ModelCollector,
    RpcMetrics,
    new_registry,
)
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.pb.twinserve.v1 import training_pb2 as tpb
from serving.pb.twinserve.v1 import training_pb2_grpc as tpb_grpc
from serving.repository import ModelRepository
from serving.security import server_security, transport_name
from serving.servicer import InferenceServicer
from serving.settings import ServiceSettings
from serving.training_data import TrainingLimits
from serving.training_servicer import TrainingServicer

__all__ = [
    "Service",
    "build_server",
    "create_server",
    "grpc_options",
    "serve",
    "wait_for_signal",
    "write_port_file",
]

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
TRAINING_SERVICE_NAME = tpb.DESCRIPTOR.services_by_name["TrainingService"].full_name
SERVICE_NAMES = (SERVICE_NAME, TRAINING_SERVICE_NAME)


def project_version() -> str:
    try:
        return package_version("twinserve")
    except PackageNotFoundError:
        return "0.0.0"


def grpc_options(
    max_message_bytes: int,
    *,
    max_connection_age_s: float = 300.0,
    max_connection_age_grace_s: float | None = None,
    reuse_port: bool = False,
    max_streams_per_connection: int = 256,
) -> list[tuple[str, int]]:
    """Options of a server. A connection is closed after about `max_connection_age_s`
    (gRPC adds +-10 % jitter): its clients connect again, and a load balancer in front can
    send them to replicas added since. Calls in flight then get `max_connection_age_grace_s`
    to finish; None waits for them however long (a Train stream lasts as long as its job)."""
    unlimited_ms = 2**31 - 1  # gRPC's INT_MAX: no limit
    grace_ms = (
        unlimited_ms
        if max_connection_age_grace_s is None
        else min(unlimited_ms, int(max_connection_age_grace_s * 1000))
    )
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        # Two servers on one port by accident must fail loudly, not share traffic; workers
        # of one service share it on purpose (serving/workers.py).
        ("grpc.so_reuseport", int(reuse_port)),
        ("grpc.max_connection_age_ms", min(unlimited_ms, int(max_connection_age_s * 1000))),
        ("grpc.max_connection_age_grace_ms", grace_ms),
        # HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: calls one connection carries at once.
        ("grpc.max_concurrent_streams", max_streams_per_connection),
    ]


@dataclass
class Service:
    """A started-or-not server and the parts a caller may need to drive or drain it."""

    server: grpc.aio.Server
    port: int
    servicer: InferenceServicer
    health: health.aio.HealthServicer
    manager: ModelManager
    dataplane: DataPlane
    jobs: JobManager
    drain: Drain
    poll_s: float = 0.0
    registry: CollectorRegistry | None = None
    # Where to serve the registry over HTTP once started; None: not served.
    metrics_address: tuple[str, int] | None = None
    metrics_server: MetricsServer | None = None
    _poller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.server.start()
        if self.registry is not None and self.metrics_address is not None:
            self.metrics_server = MetricsServer(self.registry, *self.metrics_address)
        if self.poll_s > 0:
            self._poller = asyncio.create_task(self.manager.poll(self.poll_s))
        self.servicer.ready = True
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float) -> None:
        """Stops taking new calls, lets in-flight ones finish within `grace` seconds: health
        says NOT_SERVING, new calls are answered UNAVAILABLE (`serving.drain`) until callers
        have gone elsewhere, then the server stops; models are released only after every
        call has ended."""
        deadline = time.monotonic() + grace
        self.servicer.ready = False
        # NOT_SERVING before the first refusal: the health check a refused call triggers in
        # a gateway must see it, or the gateway keeps sending here until its next round.
        await self.health.enter_graceful_shutdown()
        self.drain.begin()
        # Jobs first: their Train streams then end with a "cancelled" event within the grace
        # period instead of being cut off.
        self.jobs.cancel_all()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self.drain.stop(self.server, deadline)
        # Running training jobs are cancelled (they stop within an epoch, leaving no version).
        # Waiting for the worker threads blocks: never on the event loop.
        await asyncio.to_thread(self.jobs.shutdown)
        await asyncio.to_thread(self.dataplane.close)
        await asyncio.to_thread(self.manager.close)
        if self.metrics_server is not None:
            await asyncio.to_thread(self.metrics_server.close)


async def create_server(settings: ServiceSettings, backend: Backend) -> Service:
    """Loads the repository's models and binds a server (not yet started)."""
    repository = ModelRepository(settings.model_repository)
    manager = ModelManager(
        repository,
        backend,
        latest=settings.latest_versions,
        runtime_threads=settings.framework_threads,
    )
    registry = new_registry()
    await asyncio.to_thread(manager.load_all)
    dataplane = DataPlane(
        manager,
        threads=settings.inference_threads,
        framework=backend.framework,
        inline_max_us=settings.inline_max_us,
        inline_max_rows=settings.inline_max_rows,
        metrics=InferenceMetrics(registry, framework=backend.framework, device=settings.device),
    )
    servicer = InferenceServicer(
        dataplane,
        manager,
        name=f"twinserve-{backend.framework}",
        version=project_version(),
        max_tensor_bytes=settings.max_tensor_bytes,
    )
    jobs = JobManager(
        backend,
        repository,
        manager,
        data_dir=settings.data_dir,
        tensorboard_dir=settings.tensorboard_dir,
        max_pending=settings.max_pending_jobs,
        stop_timeout_s=settings.job_stop_timeout_s,
        limits=TrainingLimits(
            max_classes=settings.train_max_classes,
            max_input_values=settings.train_max_input_values,
            max_parameters=settings.train_max_parameters,
            max_data_values=settings.train_max_data_values,
            max_batch_values=settings.train_max_batch_values,
        ),
    )
    registry.register(ModelCollector(manager, backend.framework))
    registry.register(JobCollector(jobs, backend.framework))
    device_stats = getattr(backend, "device_stats", None)
    if callable(device_stats):
        registry.register(DeviceCollector(device_stats, settings.device))
    observer = CallObserver(
        RpcMetrics(registry),
        framework=backend.framework,
        max_concurrent=settings.max_concurrent_rpcs,
    )
    credentials, interceptors = server_security(settings)
    drain = Drain()
    server, port, health_servicer = build_server(
        servicer,
        TrainingServicer(jobs, backend.framework),
        settings.host,
        settings.port,
        settings.max_message_bytes,
        credentials=credentials,
        interceptors=[drain, *interceptors],
        reuse_port=settings.reuse_port,
        observer=observer,
        max_streams_per_connection=settings.max_streams_per_connection,
    )
    metrics_port = settings.worker_metrics_port()
    return Service(
        server,
        port,
        servicer,
        health_servicer,
        manager,
        dataplane,
        jobs,
        drain,
        settings.repository_poll_s,
        registry=registry,
        metrics_address=None if metrics_port is None else (settings.host, metrics_port),
    )


def build_server(
    inference: pb_grpc.GRPCInferenceServiceServicer,
    training: tpb_grpc.TrainingServiceServicer,
    host: str,
    port: int,
    max_message_bytes: int,
    *,
    credentials: grpc.ServerCredentials | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    services: Mapping[str, Callable[[grpc.aio.Server], None]] | None = None,
    reuse_port: bool = False,
    observer: CallObserver | None = None,
    max_streams_per_connection: int = 256,
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """A bound (not started) server with both services, the error interceptor, health and
    reflection; returns it with the bound port and its health servicer. The port serves TLS
    when `credentials` are given; `interceptors` (authentication) run before the error
    interceptor. `services` adds more: full service name -> a function that adds its
    servicer to the server (the name is offered by reflection). `observer` records every
    call's metrics and log line and bounds the calls handled at once."""
    server = grpc.aio.server(
        interceptors=[*interceptors, ErrorInterceptor(observer)],
        options=grpc_options(
            max_message_bytes,
            reuse_port=reuse_port,
            max_streams_per_connection=max_streams_per_connection,
        ),
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(inference, server)
    tpb_grpc.add_TrainingServiceServicer_to_server(training, server)
    for add_to_server in (services or {}).values():
        add_to_server(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, *(services or {}), health.SERVICE_NAME, reflection.SERVICE_NAME),
        server,
    )
    address = f"{host}:{port}"
    if credentials is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, credentials)
    return server, bound, health_servicer


def write_port_file(path: Path, port: int) -> None:
    # Written whole then renamed, so a reader never sees a half-written port.
    partial = path.with_suffix(".partial")
    partial.write_text(f"{port}\n")
    partial.replace(path)


async def wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve(settings: ServiceSettings, backend: Backend) -> None:
    service = await create_server(settings, backend)
    await service.start()
    logger.info(
        "%s service listening on %s:%d, %s (models: %s)",
        backend.framework,
        settings.host,
        service.port,
        transport_name(settings.tls_cert_file, settings.tls_client_ca_file),
        ", ".join(service.manager.ready_names()) or "none",
    )
    if service.metrics_server is not None:
        logger.info("metrics on http://%s:%d/metrics", settings.host, service.metrics_server.port)
    if settings.port_file is not None:
        write_port_file(settings.port_file, service.port)
    await wait_for_signal()
    logger.info("draining (grace %.1fs)", settings.grace_period_s)
    await service.stop(settings.grace_period_s)
