"""One replica of a framework service, and where the replicas of a service are found.

A gRPC channel is long-lived and sends every call over the same connection, so balancing
happens above the channels: each replica has its own, and `gateway.pool` picks one per call.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.pb import inference_pb2_grpc as pb_grpc
from serving.pb.twinserve.v1 import training_pb2_grpc as tpb_grpc
from serving.rpc.tracing import client_interceptors

__all__ = ["Replica", "Target"]

logger = logging.getLogger(__name__)

DNS_SCHEME = "dns:///"


def _split(address: str, what: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{what} '{address}' is not host:port")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class Target:
    """A framework service URL: comma-separated host:port entries, each of which may be
    `dns:///name:port`, a name resolved again on every health round (all its addresses are
    replicas: a Kubernetes headless Service)."""

    fixed: tuple[str, ...]
    names: tuple[tuple[str, int], ...]

    @classmethod
    def parse(cls, url: str) -> Target:
        fixed: list[str] = []
        names: list[tuple[str, int]] = []
        for entry in (part.strip() for part in url.split(",")):
            if not entry:
                continue
            if entry.startswith(DNS_SCHEME):
                names.append(_split(entry.removeprefix(DNS_SCHEME), "DNS target"))
            elif "://" in entry:
                raise ValueError(f"'{entry}': only host:port and dns:///name:port are understood")
            else:
                _split(entry, "address")
                fixed.append(entry)
        if not fixed and not names:
            raise ValueError(f"'{url}' names no address")
        return cls(tuple(fixed), tuple(names))

    async def resolve(self) -> list[tuple[str, str]]:
        """(address, the name its TLS certificate carries if not the address's host) for every
        replica, fixed ones first; raises OSError when a name does not resolve."""
        found = [(address, "") for address in self.fixed]
        loop = asyncio.get_running_loop()
        for host, port in self.names:
            for *_, sockaddr in await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM):
                ip = str(sockaddr[0])
                address = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
                if all(address != known for known, _ in found):
                    found.append((address, host))
        return found


def channel_options(
    max_message_bytes: int, reconnect_s: float, server_name: str
) -> list[tuple[str, int | str]]:
    # A fixed reconnection backoff: a replica that comes back is reached within it.
    backoff_ms = max(100, int(reconnect_s * 1000))
    options: list[tuple[str, int | str]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.initial_reconnect_backoff_ms", backoff_ms),
        ("grpc.min_reconnect_backoff_ms", backoff_ms),
        ("grpc.max_reconnect_backoff_ms", backoff_ms),
    ]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return options


class Replica:
    """One address of a framework service: its channel and stubs, whether its last health
    check passed, and the calls the gateway has in flight to it."""

    def __init__(
        self,
        framework: str,
        address: str,
        *,
        max_message_bytes: int,
        reconnect_s: float,
        credentials: grpc.ChannelCredentials | None = None,
        server_name: str = "",
        healthy: bool = True,
    ) -> None:
        self.framework = framework
        self.address = address
        if credentials is None:
            options = channel_options(max_message_bytes, reconnect_s, "")
            self.channel = grpc.aio.insecure_channel(
                address, options=options, interceptors=client_interceptors()
            )
        else:
            options = channel_options(max_message_bytes, reconnect_s, server_name)
            self.channel = grpc.aio.secure_channel(
                address, credentials, options=options, interceptors=client_interceptors()
            )
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.training = tpb_grpc.TrainingServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self.healthy = healthy
        self.inflight = 0
        self.calls = 0  # calls sent here, retries included

    def __repr__(self) -> str:
        state = "healthy" if self.healthy else "unhealthy"
        return f"Replica({self.framework}@{self.address}, {state}, {self.inflight} in flight)"

    @property
    def connected(self) -> bool:
        """Whether the channel has a connection now (READY). Asking also starts connecting
        an idle channel, so a replica not picked for want of a connection gets one."""
        state = self.channel.get_state(try_to_connect=True)
        return state is grpc.ChannelConnectivity.READY

    async def check(self, timeout: float) -> bool:
        """Asks the replica's grpc.health.v1 service (overall status, service "")."""
        try:
            response = await self._health.Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            healthy, reason = False, exc.code().name
        else:
            healthy = response.status == health_pb2.HealthCheckResponse.SERVING
            reason = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        if healthy != self.healthy:
            if healthy:
                logger.info("%s replica %s is healthy again", self.framework, self.address)
            else:
                logger.warning(
                    "%s replica %s is unhealthy (%s)", self.framework, self.address, reason
                )
        self.healthy = healthy
        return healthy

    async def close(self, grace: float | None = None) -> None:
        """Closes the channel; with a grace period, calls in flight get that long to end."""
        await self.channel.close(grace)
