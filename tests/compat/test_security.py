"""Unmodified tritonclient against a gateway process serving TLS and requiring a bearer token,
set up as the README's Security section says: certificates made with the openssl commands
shown there, settings from the environment."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from devtools.stack import Process, launch

from .endpoints import Stack
from .house_price import MODEL, OUTPUT, TOLERANCE, expected_prices, triton_input

pytestmark = pytest.mark.framework

TOKEN = "compat-token"
INFER_TOKEN = "compat-infer-token"

# The README's commands, verbatim.
OPENSSL = [
    'openssl req -x509 -new -nodes -newkey rsa:2048 -days 365 -subj "/CN=twinserve CA" '
    "-keyout ca.key -out ca.pem",
    'openssl req -new -nodes -newkey rsa:2048 -subj "/CN=localhost" '
    '-addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout server.key -out server.csr',
    "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 365 "
    "-copy_extensions copy -out server.pem",
    'openssl req -new -nodes -newkey rsa:2048 -subj "/CN=twinserve-gateway" '
    "-keyout client.key -out client.csr",
    "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 365 "
    "-out client.pem",
]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    directory = tmp_path_factory.mktemp("certs")
    for command in OPENSSL:
        subprocess.run(command, shell=True, cwd=directory, check=True, capture_output=True)
    return directory


@pytest.fixture(scope="module")
def secure_gateway(stack: Stack, certs: Path) -> Iterator[Process]:
    gateway = launch(
        "secure-gateway",
        "gateway",
        env={
            "TWINSERVE_GATEWAY_TENSORFLOW_URL": stack.tensorflow,
            "TWINSERVE_GATEWAY_PYTORCH_URL": stack.pytorch,
            "TWINSERVE_GATEWAY_TLS_CERT_FILE": str(certs / "server.pem"),
            "TWINSERVE_GATEWAY_TLS_KEY_FILE": str(certs / "server.key"),
            "TWINSERVE_GATEWAY_AUTH_TOKENS": f'["{TOKEN}"]',
            "TWINSERVE_GATEWAY_INFER_AUTH_TOKENS": f'["{INFER_TOKEN}"]',
        },
    )
    yield gateway
    assert gateway.stop() == 0


@pytest.fixture
def tls_client(secure_gateway: Process, certs: Path) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(
        f"localhost:{secure_gateway.port}", ssl=True, root_certificates=str(certs / "ca.pem")
    )
    yield client
    client.close()


def test_tritonclient_with_tls_and_a_token(tls_client: grpcclient.InferenceServerClient) -> None:
    headers = {"authorization": f"Bearer {TOKEN}"}
    assert tls_client.is_server_live(headers=headers)
    result = tls_client.infer(
        MODEL, [triton_input([1800.0])], headers={**headers, "x-framework": "pytorch"}
    )
    assert result.as_numpy(OUTPUT) == pytest.approx(expected_prices([1800.0]), abs=TOLERANCE)
    assert result.get_response().parameters["framework"].string_param == "pytorch"


@pytest.mark.parametrize(
    ("headers", "message"),
    [(None, "missing bearer token"), ({"authorization": "Bearer nope"}, "invalid bearer token")],
)
def test_tritonclient_without_the_token(
    tls_client: grpcclient.InferenceServerClient, headers: dict[str, str] | None, message: str
) -> None:
    with pytest.raises(InferenceServerException) as info:
        tls_client.infer(MODEL, [triton_input([1800.0])], headers=headers)
    assert info.value.status() == "StatusCode.UNAUTHENTICATED"
    assert message in info.value.message()


def test_tritonclient_with_an_infer_token_infers_but_cannot_unload(
    tls_client: grpcclient.InferenceServerClient,
) -> None:
    headers = {"authorization": f"Bearer {INFER_TOKEN}"}
    result = tls_client.infer(MODEL, [triton_input([1800.0])], headers=headers)
    assert result.as_numpy(OUTPUT) == pytest.approx(expected_prices([1800.0]), abs=TOLERANCE)
    for change in (tls_client.unload_model, tls_client.load_model):
        with pytest.raises(InferenceServerException) as info:
            change(MODEL, headers=headers)
        assert info.value.status() == "StatusCode.PERMISSION_DENIED"
        assert "needs a token with the 'admin' scope" in info.value.message()
    assert tls_client.is_model_ready(MODEL, headers=headers)


def test_tritonclient_in_plaintext_cannot_connect(secure_gateway: Process) -> None:
    client = grpcclient.InferenceServerClient(secure_gateway.address)
    try:
        with pytest.raises(InferenceServerException) as info:
            client.is_server_live(headers={"authorization": f"Bearer {TOKEN}"}, client_timeout=5)
        assert info.value.status() == "StatusCode.UNAVAILABLE"
    finally:
        client.close()
