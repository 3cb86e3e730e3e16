"""The whole stack for the tritonclient compatibility suite: seed models trained once, then the
TensorFlow service, the PyTorch service, the ONNX Runtime service (serving the PyTorch
repository's exports) and the gateway as real processes on port 0.

This suite runs in its own pytest process (`pytest tests/compat`): tritonclient registers the
same `inference.*` protobuf symbols as our generated `serving.pb`, and one descriptor pool
cannot hold both. Nothing here may import `serving.pb` or a module that does (codec,
translate, servicer, server, gateway); `devtools.stack` uses only the standard library. The
in-process server fixtures live in tests/integration/conftest.py for the same reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from devtools.stack import Process, launch

from .endpoints import ENDPOINT_IDS, Endpoint, Stack

ROOT = Path(__file__).resolve().parents[2]
SEED_TIMEOUT_S = 240.0


def _start_seed(package: str, repository: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", package, "seed", "--model-repository", str(repository)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _wait_seed(package: str, popen: subprocess.Popen[bytes], log: Path) -> None:
    try:
        code = popen.wait(SEED_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait()
        code = None
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"`python -m {package} seed` failed (exit {code}):\n{tail}")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    models = tmp_path_factory.mktemp("models")
    # TensorFlow trains slower than PyTorch: both seed at once, and the PyTorch service
    # starts while TensorFlow is still training.
    seeds = {
        package: _start_seed(package, models / framework, models / f"{package}-seed.log")
        for package, framework in (("tf_service", "tensorflow"), ("torch_service", "pytorch"))
    }
    started: list[Process] = []
    try:
        _wait_seed("torch_service", seeds["torch_service"], models / "torch_service-seed.log")
        torch = launch("pytorch", "torch_service", ["--model-repository", str(models / "pytorch")])
        started.append(torch)
        onnx = launch("onnx", "onnx_service", ["--model-repository", str(models / "pytorch")])
        started.append(onnx)
        _wait_seed("tf_service", seeds["tf_service"], models / "tf_service-seed.log")
        tf = launch("tensorflow", "tf_service", ["--model-repository", str(models / "tensorflow")])
        started.append(tf)
        gateway = launch(
            "gateway",
            "gateway",
            env={
                "TWINSERVE_GATEWAY_TENSORFLOW_URL": tf.address,
                "TWINSERVE_GATEWAY_PYTORCH_URL": torch.address,
                # A third framework by configuration alone, beside the two legacy settings.
                "TWINSERVE_GATEWAY_FRAMEWORKS": json.dumps({"onnx": onnx.address}),
                "TWINSERVE_GATEWAY_DEFAULT_FRAMEWORK": "tensorflow",
                "TWINSERVE_GATEWAY_MODEL_FRAMEWORKS": "{}",
            },
        )
        started.append(gateway)
        yield Stack(
            tensorflow=tf.address, pytorch=torch.address, onnx=onnx.address, gateway=gateway.address
        )
    finally:
        for popen in seeds.values():
            if popen.poll() is None:
                popen.kill()
                popen.wait()
        # The gateway first, so it never sees its backends vanish under a call.
        codes = {process.name: process.stop() for process in reversed(started)}
    unclean = {name: code for name, code in codes.items() if code != 0}
    assert not unclean, f"services did not shut down cleanly on SIGTERM: {unclean}"


@pytest.fixture(params=ENDPOINT_IDS)
def endpoint(request: pytest.FixtureRequest, stack: Stack) -> Endpoint:
    return stack.endpoint(request.param)


@pytest.fixture
def client(endpoint: Endpoint) -> Iterator[grpcclient.InferenceServerClient]:
    """An unmodified tritonclient pointed at `endpoint` (pass `endpoint.headers` per call)."""
    client = grpcclient.InferenceServerClient(endpoint.address)
    yield client
    client.close()


@pytest.fixture
def gateway_client(stack: Stack) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(stack.gateway)
    yield client
    client.close()
