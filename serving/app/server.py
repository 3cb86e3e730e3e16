"""Builds and runs a framework service: the inference servicer, health, reflection, and a
graceful drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2
from prometheus_client import CollectorRegistry

from serving.app.settings import ServiceSettings
from serving.backend import Backend
from serving.engine.dataplane import DataPlane
from serving.engine.manager import ModelManager
from serving.engine.metrics import DeviceCollector, InferenceMetrics, ModelCollector
from serving.engine.repository import ModelRepository
from serving.engine.servicer import InferenceServicer
from serving.rpc.drain import Drain
from serving.rpc.metrics import MetricsServer, RpcMetrics, new_registry
from serving.rpc.security import server_security, transport_name
from serving.rpc.server import (
    SERVICE_NAMES,
    build_server,
    call_concerns,
    project_version,
    wait_for_signal,
    write_port_file,
)
from serving.training.data import TrainingLimits
from serving.training.jobs import JobManager
from serving.training.metrics import JobCollector
from serving.training.servicer import TrainingServicer

__all__ = ["Service", "create_server", "serve"]

logger = logging.getLogger(__name__)


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
        says NOT_SERVING, new calls are answered UNAVAILABLE (`serving.rpc.drain`) until callers
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


async def create_server(
    settings: ServiceSettings, backend: Backend, *, trains: bool = True
) -> Service:
    """Loads the repository's models and binds a server (not yet started). A service that
    `trains` not (it serves what others trained) answers Train with UNIMPLEMENTED."""
    repository = ModelRepository(settings.model_repository)
    manager = ModelManager(
        repository,
        backend,
        latest=settings.latest_versions,
        runtime_threads=settings.framework_threads,
        default_max_batch_size=settings.default_max_batch_size,
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
    registry.register(DeviceCollector(backend.device_stats, settings.device))
    concerns = call_concerns(
        RpcMetrics(registry),
        framework=backend.framework,
        max_concurrent=settings.max_concurrent_rpcs,
    )
    credentials, interceptors = server_security(settings)
    drain = Drain()
    server, port, health_servicer = build_server(
        servicer,
        TrainingServicer(jobs, backend.framework, trains=trains),
        settings.host,
        settings.port,
        settings.max_message_bytes,
        credentials=credentials,
        interceptors=[drain, *interceptors],
        reuse_port=settings.reuse_port,
        concerns=concerns,
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


async def serve(settings: ServiceSettings, backend: Backend, *, trains: bool = True) -> None:
    service = await create_server(settings, backend, trains=trains)
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
