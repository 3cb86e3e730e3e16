"""The images' health check (deploy/docker/healthcheck.py) against real gRPC servers: plaintext,
and TLS with client certificates as the `tls` Kubernetes component runs it."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from types import ModuleType

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.deploy.tools import DEPLOY
from tests.integration.certs import Pki, make_pki


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "healthcheck", DEPLOY / "docker" / "healthcheck.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


healthcheck = _load()


def _server(
    status: health_pb2.HealthCheckResponse.ServingStatus.ValueType,
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set("", status)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, port


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


@pytest.fixture
def serving() -> Iterator[int]:
    server, port = _server(health_pb2.HealthCheckResponse.SERVING)
    yield port
    server.stop(None)


def test_plaintext_serving(serving: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWINSERVE_PORT", str(serving))
    assert healthcheck.main(["healthcheck.py"]) == 0


def test_the_gateway_prefix(serving: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWINSERVE_GATEWAY_PORT", str(serving))
    assert healthcheck.main(["healthcheck.py", "TWINSERVE_GATEWAY_"]) == 0


def test_not_serving_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    server, port = _server(health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        monkeypatch.setenv("TWINSERVE_PORT", str(port))
        assert healthcheck.main(["healthcheck.py"]) == 1
    finally:
        server.stop(None)


def test_nothing_listening_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    server, port = _server(health_pb2.HealthCheckResponse.SERVING)
    server.stop(None)
    monkeypatch.setenv("TWINSERVE_PORT", str(port))
    assert healthcheck.main(["healthcheck.py"]) == 1


def test_mutual_tls(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    credentials = grpc.ssl_server_credentials(
        [(pki.server_key.read_bytes(), pki.server_cert.read_bytes())],
        root_certificates=pki.ca.read_bytes(),
        require_client_auth=True,
    )
    server, port = _server(health_pb2.HealthCheckResponse.SERVING, credentials)
    try:
        monkeypatch.setenv("TWINSERVE_PORT", str(port))
        monkeypatch.setenv("TWINSERVE_TLS_CERT_FILE", str(pki.server_cert))
        monkeypatch.setenv("TWINSERVE_TLS_KEY_FILE", str(pki.server_key))
        monkeypatch.setenv("TWINSERVE_TLS_CLIENT_CA_FILE", str(pki.ca))
        # This server certificate is for serverAuth only: the check needs a client one.
        assert healthcheck.main(["healthcheck.py"]) == 1
        monkeypatch.setenv("TWINSERVE_HEALTHCHECK_CERT_FILE", str(pki.client_cert))
        monkeypatch.setenv("TWINSERVE_HEALTHCHECK_KEY_FILE", str(pki.client_key))
        assert healthcheck.main(["healthcheck.py"]) == 0
    finally:
        server.stop(None)


def test_tls_gateway_verified_against_the_configured_ca(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = grpc.ssl_server_credentials(
        [(pki.server_key.read_bytes(), pki.server_cert.read_bytes())]
    )
    server, port = _server(health_pb2.HealthCheckResponse.SERVING, credentials)
    try:
        monkeypatch.setenv("TWINSERVE_GATEWAY_PORT", str(port))
        monkeypatch.setenv("TWINSERVE_GATEWAY_TLS_CERT_FILE", str(pki.server_cert))
        monkeypatch.setenv("TWINSERVE_GATEWAY_TLS_KEY_FILE", str(pki.server_key))
        monkeypatch.setenv("TWINSERVE_HEALTHCHECK_CA_FILE", str(pki.ca))
        assert healthcheck.main(["healthcheck.py", "TWINSERVE_GATEWAY_"]) == 0
        monkeypatch.setenv("TWINSERVE_HEALTHCHECK_SERVER_NAME", "not-on-the-certificate")
        assert healthcheck.main(["healthcheck.py", "TWINSERVE_GATEWAY_"]) == 1
    finally:
        server.stop(None)
