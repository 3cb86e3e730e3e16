"""Asks this container's server for its `grpc.health.v1` status; exit 0 when SERVING.

The image's HEALTHCHECK (and a Kubernetes exec probe where the port serves TLS, which the
kubelet's native gRPC probe cannot speak). Reads the same settings as the server:

    python healthcheck.py                     # a service: TWINSERVE_PORT, TWINSERVE_TLS_*
    python healthcheck.py TWINSERVE_GATEWAY_  # the gateway: TWINSERVE_GATEWAY_PORT, ..._TLS_*

With TLS the server is verified against TWINSERVE_HEALTHCHECK_CA_FILE (else the CA that signs
client certificates, else the system roots) under the name TWINSERVE_HEALTHCHECK_SERVER_NAME
(default localhost). Where client certificates are required, the check presents
TWINSERVE_HEALTHCHECK_CERT_FILE and ..._KEY_FILE, else the server's own certificate (which then
must allow client authentication: no extendedKeyUsage, or one with clientAuth).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_PORTS = {"TWINSERVE_": 8500, "TWINSERVE_GATEWAY_": 8001}


def _read(name: str) -> bytes | None:
    path = os.environ.get(name)
    return Path(path).read_bytes() if path else None


def channel(prefix: str) -> grpc.Channel:
    port = os.environ.get(f"{prefix}PORT") or str(DEFAULT_PORTS.get(prefix, 8500))
    address = f"127.0.0.1:{port}"
    if not os.environ.get(f"{prefix}TLS_CERT_FILE"):
        return grpc.insecure_channel(address)
    client_ca = _read(f"{prefix}TLS_CLIENT_CA_FILE")
    root = _read("TWINSERVE_HEALTHCHECK_CA_FILE") or client_ca
    key, cert = None, None
    if client_ca is not None:
        own = "TWINSERVE_HEALTHCHECK_CERT_FILE" in os.environ
        key = _read("TWINSERVE_HEALTHCHECK_KEY_FILE" if own else f"{prefix}TLS_KEY_FILE")
        cert = _read("TWINSERVE_HEALTHCHECK_CERT_FILE" if own else f"{prefix}TLS_CERT_FILE")
    credentials = grpc.ssl_channel_credentials(root, key, cert)
    name = os.environ.get("TWINSERVE_HEALTHCHECK_SERVER_NAME", "localhost")
    return grpc.secure_channel(address, credentials, (("grpc.ssl_target_name_override", name),))


def main(argv: list[str]) -> int:
    prefix = argv[1] if len(argv) > 1 else "TWINSERVE_"
    try:
        with channel(prefix) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            status = stub.Check(health_pb2.HealthCheckRequest(), timeout=4).status
    except grpc.RpcError as error:
        print(f"unhealthy: {error.code().name} {error.details()}", file=sys.stderr)
        return 1
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    print(name)
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
