"""TLS on every hop, mutual TLS between the gateway and the services, bearer tokens at the
gateway (and optionally at a service), and message-size limits."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from devtools import cli
from gateway.server import Gateway
from gateway.server import create_server as create_gateway
from gateway.settings import GatewaySettings
from serving.app.server import Service
from serving.backend.fake import AffineBackend
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.pb.twinserve.v1 import training_pb2 as tpb
from serving.pb.twinserve.v1 import training_pb2_grpc as tpb_grpc
from serving.rpc.security import BearerTokenAuth, load_tokens, server_credentials

from .certs import Pki, make_pki
from .oip import price_request, prices, rpc_error

Stub = pb_grpc.GRPCInferenceServiceStub
OK = pytest.approx
PRICE = 360.0  # the seed model prices 1800 sq ft at 360
TOKENS = ["first-token", "second-token"]
TIMEOUT = 5.0


def _bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def _address(port: int) -> str:
    return f"127.0.0.1:{port}"


def _tls(pki: Pki, *, client_cert: bool = False) -> grpc.ChannelCredentials:
    if not client_cert:
        return grpc.ssl_channel_credentials(pki.ca.read_bytes())
    return grpc.ssl_channel_credentials(
        pki.ca.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
    )


def _infer(channel: grpc.Channel, **kwargs: Any) -> list[float]:
    return prices(Stub(channel).ModelInfer(price_request(1800.0), timeout=TIMEOUT, **kwargs))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def service(aio: Any, seeded_repository: Callable[[], Path]) -> Iterator[Service]:
    """A plaintext service without authentication."""
    with aio.service(seeded_repository(), AffineBackend()) as started:
        yield started


@pytest.fixture(scope="module")
def mtls_service(aio: Any, seeded_repository: Callable[[], Path], pki: Pki) -> Iterator[Service]:
    """A service that serves TLS and requires client certificates signed by the test CA."""
    with aio.service(
        seeded_repository(),
        AffineBackend(),
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
        tls_client_ca_file=pki.ca,
    ) as started:
        yield started


# ---- bearer tokens at the gateway ----


@pytest.fixture(scope="module")
def token_gateway(aio: Any, service: Service) -> Iterator[Gateway]:
    with aio.gateway(tensorflow_url=_address(service.port), auth_tokens=TOKENS) as front:
        yield front


@pytest.fixture
def token_channel(token_gateway: Gateway) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(_address(token_gateway.port)) as channel:
        yield channel


def test_no_token_is_unauthenticated(token_channel: grpc.Channel) -> None:
    code, details = rpc_error(Stub(token_channel).ModelInfer, price_request(1800.0))
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert "missing bearer token" in details


@pytest.mark.parametrize("header", ["Basic Zm9vOmJhcg==", "Bearer", "first-token"])
def test_a_header_without_a_bearer_token_is_unauthenticated(
    token_channel: grpc.Channel, header: str
) -> None:
    code, details = rpc_error(
        Stub(token_channel).ModelInfer,
        price_request(1800.0),
        metadata=(("authorization", header),),
    )
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert "missing bearer token" in details


@pytest.mark.parametrize("token", ["wrong", "first-token-but-longer", "first-toke"])
def test_wrong_token_is_unauthenticated(token_channel: grpc.Channel, token: str) -> None:
    code, details = rpc_error(
        Stub(token_channel).ModelInfer, price_request(1800.0), metadata=_bearer(token)
    )
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert details == "invalid bearer token"


@pytest.mark.parametrize("token", TOKENS)
def test_right_token_infers(token_channel: grpc.Channel, token: str) -> None:
    assert _infer(token_channel, metadata=_bearer(token)) == OK([PRICE], abs=1e-3)


def test_scheme_is_case_insensitive(token_channel: grpc.Channel) -> None:
    metadata = (("authorization", f"bearer {TOKENS[0]}"),)
    assert _infer(token_channel, metadata=metadata) == OK([PRICE], abs=1e-3)


def test_streams_need_a_token_too(token_channel: grpc.Channel) -> None:
    """The refusal has the streaming method's own shape (stream-stream, unary-stream)."""
    stream = Stub(token_channel).ModelStreamInfer(iter([price_request(1800.0)]), timeout=TIMEOUT)
    code, details = rpc_error(list, stream)
    assert (code, "missing bearer token" in details) == (grpc.StatusCode.UNAUTHENTICATED, True)
    watch = tpb_grpc.TrainingServiceStub(token_channel).WatchJob(
        tpb.JobRequest(job_id="tensorflow-0"), timeout=TIMEOUT, metadata=_bearer("wrong")
    )
    assert rpc_error(list, watch) == (grpc.StatusCode.UNAUTHENTICATED, "invalid bearer token")
    # With the token the stream is served.
    answers = list(
        Stub(token_channel).ModelStreamInfer(
            iter([price_request(1800.0)]), timeout=TIMEOUT, metadata=_bearer(TOKENS[1])
        )
    )
    assert prices(answers[0].infer_response) == OK([PRICE], abs=1e-3)


def test_health_and_reflection_need_no_token(token_channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(token_channel)
    answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT)
    assert answer.status in (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    reflection = reflection_pb2_grpc.ServerReflectionStub(token_channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (response,) = reflection.ServerReflectionInfo(iter([request]), timeout=TIMEOUT)
    names = {service.name for service in response.list_services_response.service}
    assert "inference.GRPCInferenceService" in names


def test_tokens_from_a_file(aio: Any, service: Service, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# clients\nfrom-file\n\n  spaced  \n")
    with (
        aio.gateway(tensorflow_url=_address(service.port), auth_tokens_file=tokens) as front,
        grpc.insecure_channel(_address(front.port)) as channel,
    ):
        assert _infer(channel, metadata=_bearer("from-file")) == OK([PRICE], abs=1e-3)
        assert _infer(channel, metadata=_bearer("spaced")) == OK([PRICE], abs=1e-3)
        code, _ = rpc_error(
            Stub(channel).ModelInfer, price_request(1800.0), metadata=_bearer("# clients")
        )
        assert code is grpc.StatusCode.UNAUTHENTICATED


def test_cli_sends_the_token(token_gateway: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    url = _address(token_gateway.port)
    for argv, code in (
        (["--url", url, "predict", "1800"], 1),
        (["--url", url, "--token", "wrong", "predict", "1800"], 1),
        (["--url", url, "--token", TOKENS[0], "predict", "1800"], 0),
        (["--url", url, "--token", TOKENS[0], "jobs"], 0),
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == code, capsys.readouterr()
    out = capsys.readouterr()
    assert "error: UNAUTHENTICATED: missing bearer token" in out.err
    assert "error: UNAUTHENTICATED: invalid bearer token" in out.err
    assert "1800 -> 360.00" in out.out


# ---- TLS at the gateway ----


@pytest.fixture(scope="module")
def tls_gateway(aio: Any, service: Service, pki: Pki) -> Iterator[Gateway]:
    with aio.gateway(
        tensorflow_url=_address(service.port),
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
        auth_tokens=TOKENS[:1],
    ) as front:
        yield front


def test_tls_client_with_the_ca_reaches_the_gateway(tls_gateway: Gateway, pki: Pki) -> None:
    for target in (_address(tls_gateway.port), f"localhost:{tls_gateway.port}"):
        with grpc.secure_channel(target, _tls(pki)) as channel:
            assert _infer(channel, metadata=_bearer(TOKENS[0])) == OK([PRICE], abs=1e-3)


def test_plaintext_client_cannot_reach_a_tls_gateway(tls_gateway: Gateway) -> None:
    with grpc.insecure_channel(_address(tls_gateway.port)) as channel:
        code, _ = rpc_error(
            Stub(channel).ModelInfer,
            price_request(1800.0),
            timeout=TIMEOUT,
            metadata=_bearer(TOKENS[0]),
        )
    assert code is grpc.StatusCode.UNAVAILABLE


def test_client_trusting_another_ca_cannot_reach_a_tls_gateway(
    tls_gateway: Gateway, tmp_path: Path
) -> None:
    stranger = make_pki(tmp_path)
    with grpc.secure_channel(_address(tls_gateway.port), _tls(stranger)) as channel:
        code, _ = rpc_error(Stub(channel).ModelInfer, price_request(1800.0), timeout=TIMEOUT)
    assert code is grpc.StatusCode.UNAVAILABLE


def test_cli_over_tls(tls_gateway: Gateway, pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--url", _address(tls_gateway.port), "--tls-ca", str(pki.ca), "--token", TOKENS[0]]
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "predict", "1800"])
    out = capsys.readouterr()
    assert exit_info.value.code == 0, out
    assert "1800 -> 360.00" in out.out


# ---- TLS at a service, and mutual TLS between the gateway and a service ----


def test_tls_client_reaches_a_tls_service(
    aio: Any, seeded_repository: Callable[[], Path], pki: Pki
) -> None:
    settings = {"tls_cert_file": pki.server_cert, "tls_key_file": pki.server_key}
    with aio.service(seeded_repository(), AffineBackend(), **settings) as tls_service:
        with grpc.secure_channel(_address(tls_service.port), _tls(pki)) as channel:
            assert _infer(channel) == OK([PRICE], abs=1e-3)
        with grpc.insecure_channel(_address(tls_service.port)) as channel:
            code, _ = rpc_error(Stub(channel).ModelInfer, price_request(1800.0), timeout=TIMEOUT)
            assert code is grpc.StatusCode.UNAVAILABLE


def test_mtls_service_needs_a_client_certificate(mtls_service: Service, pki: Pki) -> None:
    with grpc.secure_channel(_address(mtls_service.port), _tls(pki, client_cert=True)) as channel:
        assert _infer(channel) == OK([PRICE], abs=1e-3)
    with grpc.secure_channel(_address(mtls_service.port), _tls(pki)) as channel:
        code, _ = rpc_error(Stub(channel).ModelInfer, price_request(1800.0), timeout=TIMEOUT)
        assert code is grpc.StatusCode.UNAVAILABLE


def test_gateway_with_a_client_certificate_reaches_an_mtls_service(
    aio: Any, mtls_service: Service, pki: Pki
) -> None:
    with (
        aio.gateway(
            tensorflow_url=_address(mtls_service.port),
            upstream_tls_ca_file=pki.ca,
            upstream_tls_cert_file=pki.client_cert,
            upstream_tls_key_file=pki.client_key,
        ) as front,
        grpc.insecure_channel(_address(front.port)) as channel,
    ):
        assert _infer(channel) == OK([PRICE], abs=1e-3)


@pytest.mark.parametrize("upstream", ["tls-without-client-cert", "plaintext"])
def test_gateway_without_a_client_certificate_cannot_reach_an_mtls_service(
    aio: Any, mtls_service: Service, pki: Pki, upstream: str
) -> None:
    tls = {"upstream_tls_ca_file": pki.ca} if upstream != "plaintext" else {}
    with (
        aio.gateway(tensorflow_url=_address(mtls_service.port), **tls) as front,
        grpc.insecure_channel(_address(front.port)) as channel,
    ):
        code, details = rpc_error(Stub(channel).ModelInfer, price_request(1800.0), timeout=TIMEOUT)
    assert code is grpc.StatusCode.UNAVAILABLE
    assert details.startswith(f"tensorflow service at {_address(mtls_service.port)}: ")


def test_upstream_server_name_override(
    aio: Any, seeded_repository: Callable[[], Path], tmp_path: Path
) -> None:
    """A service whose certificate names only `tensorflow.internal`, reached by IP."""
    named = make_pki(tmp_path, "tensorflow.internal", with_ip=False)
    settings = {"tls_cert_file": named.server_cert, "tls_key_file": named.server_key}
    with aio.service(seeded_repository(), AffineBackend(), **settings) as tls_service:
        url = _address(tls_service.port)
        with (
            aio.gateway(
                tensorflow_url=url,
                upstream_tls_ca_file=named.ca,
                upstream_tls_server_name="tensorflow.internal",
            ) as front,
            grpc.insecure_channel(_address(front.port)) as channel,
        ):
            assert _infer(channel) == OK([PRICE], abs=1e-3)
        with (
            aio.gateway(tensorflow_url=url, upstream_tls_ca_file=named.ca) as front,
            grpc.insecure_channel(_address(front.port)) as channel,
        ):
            code, details = rpc_error(
                Stub(channel).ModelInfer, price_request(1800.0), timeout=TIMEOUT
            )
            assert code is grpc.StatusCode.UNAVAILABLE
            assert details.startswith(f"tensorflow service at {url}: ")


def test_service_tokens_and_the_gateways_upstream_token(
    aio: Any, seeded_repository: Callable[[], Path], pki: Pki
) -> None:
    settings = {
        "tls_cert_file": pki.server_cert,
        "tls_key_file": pki.server_key,
        "auth_tokens": ["service-token"],
    }
    with aio.service(seeded_repository(), AffineBackend(), **settings) as guarded:
        url = _address(guarded.port)
        with grpc.secure_channel(url, _tls(pki)) as channel:
            code, details = rpc_error(Stub(channel).ModelInfer, price_request(1800.0))
            assert (code, "missing bearer token" in details) == (
                grpc.StatusCode.UNAUTHENTICATED,
                True,
            )
        with (
            aio.gateway(
                tensorflow_url=url,
                upstream_tls_ca_file=pki.ca,
                upstream_auth_token="service-token",
                health_interval_s=0.1,
            ) as front,
            grpc.insecure_channel(_address(front.port)) as channel,
        ):
            assert _infer(channel) == OK([PRICE], abs=1e-3)
            # The gateway's readiness probe carries the token too.
            ready = Stub(channel).ServerReady(pb.ServerReadyRequest(), timeout=TIMEOUT)
            assert ready.ready


# ---- settings that cannot work fail at start ----


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"upstream_auth_token": "t"}, "TLS only"),
        ({"tls_cert_file": Path("server.pem")}, "both tls_cert_file and tls_key_file"),
        ({"tls_client_ca_file": Path("ca.pem")}, "needs tls_cert_file and tls_key_file"),
        ({"upstream_tls_cert_file": Path("client.pem")}, "both its certificate and its key"),
    ],
)
def test_inconsistent_settings_fail_at_start(
    aio: Any, settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        aio.run(create_gateway(GatewaySettings(port=0, tensorflow_url="127.0.0.1:1", **settings)))


def test_token_helpers(tmp_path: Path) -> None:
    assert load_tokens([" a ", ""], None) == ["a"]
    with pytest.raises(ValueError, match="at least one token"):
        BearerTokenAuth([])
    assert server_credentials(None, None) is None


# ---- message size limits ----


def _oversize() -> pb.ModelInferRequest:
    return price_request(*([1800.0] * 1024))  # 4 KiB of raw input, past a 1 KiB limit


def _assert_too_large(channel: grpc.Channel) -> None:
    code, details = rpc_error(Stub(channel).ModelInfer, _oversize(), timeout=TIMEOUT)
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in details and "vs. 1024" in details
    # A request within the limit still works on the same channel.
    assert _infer(channel) == OK([PRICE], abs=1e-3)


def test_oversize_message_at_a_service(aio: Any, seeded_repository: Callable[[], Path]) -> None:
    with (
        aio.service(seeded_repository(), AffineBackend(), max_message_bytes=1024) as small,
        grpc.insecure_channel(_address(small.port)) as channel,
    ):
        _assert_too_large(channel)


def test_oversize_message_at_the_gateway(aio: Any, service: Service) -> None:
    with (
        aio.gateway(tensorflow_url=_address(service.port), max_message_bytes=1024) as front,
        grpc.insecure_channel(_address(front.port)) as channel,
    ):
        _assert_too_large(channel)


def test_oversize_message_at_a_service_behind_the_gateway(
    aio: Any, seeded_repository: Callable[[], Path]
) -> None:
    """The gateway takes the message; the service's own limit refuses it, and that status
    and message pass through unchanged."""
    with (
        aio.service(seeded_repository(), AffineBackend(), max_message_bytes=1024) as small,
        aio.gateway(tensorflow_url=_address(small.port)) as front,
        grpc.insecure_channel(_address(front.port)) as channel,
    ):
        _assert_too_large(channel)
