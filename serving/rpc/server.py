"""The gRPC server kit every twinserve server is built from, service or gateway: options,
the two OIP-and-training services with health, reflection and the call interceptor, and the
process plumbing (port file, signals)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.pb.twinserve.v1 import training_pb2 as tpb
from serving.pb.twinserve.v1 import training_pb2_grpc as tpb_grpc
from serving.rpc.admission import Admission
from serving.rpc.call_log import CallLog
from serving.rpc.calls import Concern
from serving.rpc.interceptor import CallInterceptor
from serving.rpc.metrics import RpcMetrics
from serving.rpc.tracing import ServerTracing

__all__ = [
    "SERVICE_NAME",
    "SERVICE_NAMES",
    "TRAINING_SERVICE_NAME",
    "build_server",
    "call_concerns",
    "grpc_options",
    "project_version",
    "wait_for_signal",
    "write_port_file",
]

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
        # of one service share it on purpose (serving/app/workers.py).
        ("grpc.so_reuseport", int(reuse_port)),
        ("grpc.max_connection_age_ms", min(unlimited_ms, int(max_connection_age_s * 1000))),
        ("grpc.max_connection_age_grace_ms", grace_ms),
        # HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: calls one connection carries at once.
        ("grpc.max_concurrent_streams", max_streams_per_connection),
    ]


def call_concerns(
    metrics: RpcMetrics | None = None, *, framework: str = "", max_concurrent: int = 0
) -> list[Concern]:
    """What a server does around every call, in this order: its gRPC metrics, its call log
    (`framework` names the service in records), a trace span, and at most `max_concurrent`
    calls at once (0: no bound). The bound comes last so that a refused call is still
    counted, logged and traced."""
    concerns: list[Concern] = [] if metrics is None else [metrics]
    concerns += [CallLog(framework), ServerTracing(), Admission(max_concurrent)]
    return concerns


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
    concerns: Sequence[Concern] | None = None,
    max_streams_per_connection: int = 256,
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """A bound (not started) server with both services, the call interceptor, health and
    reflection; returns it with the bound port and its health servicer. The port serves TLS
    when `credentials` are given; `interceptors` (authentication) run before the call
    interceptor. `services` adds more: full service name -> a function that adds its
    servicer to the server (the name is offered by reflection). `concerns` are done around
    every call (`call_concerns`, which is also the default)."""
    chain = CallInterceptor(call_concerns() if concerns is None else concerns)
    server = grpc.aio.server(
        interceptors=[*interceptors, chain],
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
