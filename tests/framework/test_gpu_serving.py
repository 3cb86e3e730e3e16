"""Serving on CUDA: the PyTorch service started with `TWINSERVE_DEVICE=cuda` answers what the
same service on the CPU answers, for the same model files, on every runtime both offer.

Two real service processes share one repository: the CPU one seeds `house_price` (linear) and
trains a small CNN over gRPC; the CUDA one then loads both onto the GPU. Its metrics must show
the GPU memory the models hold, so a service that quietly served from the CPU fails.

Self-contained for a GPU machine without TensorFlow: nothing here (or in what it imports)
imports tensorflow, and the CNN's data is generated, not a downloaded or bundled dataset.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch service needs torch")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from devtools.stack import Process, launch  # noqa: E402
from serving.pb import inference_pb2 as pb  # noqa: E402
from serving.pb import inference_pb2_grpc as pb_grpc  # noqa: E402
from serving.pb.twinserve.v1 import training_pb2 as tpb  # noqa: E402
from serving.pb.twinserve.v1 import training_pb2_grpc as tpb_grpc  # noqa: E402
from serving.protocol.codec import param_to_pb  # noqa: E402

pytestmark = [
    pytest.mark.framework,
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA device visible to PyTorch (torch.cuda.is_available() is False)",
    ),
]

MODULE = "torch_service"
ENV = {"TWINSERVE_LOG_LEVEL": "WARNING", "TWINSERVE_REPOSITORY_POLL_S": "0"}
DIGITS = "gpu_digits"
SIDE = 8  # images SIDE x SIDE x 1, the smallest the CNN takes


@dataclass
class Services:
    cpu: Process
    cuda: Process
    cuda_metrics_port: int


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images in [0, 1] whose class (0..3) is the quadrant holding a bright square, plus
    noise: learnable in a few epochs, so the CNN's weights are far from their initial ones."""
    rng = np.random.default_rng(seed)
    x = rng.random((count, SIDE, SIDE, 1), dtype=np.float32) * 0.3
    y = rng.integers(0, 4, count)
    half = SIDE // 2
    for image, label in zip(x, y, strict=True):
        row, col = divmod(int(label), 2)
        image[row * half : row * half + 3, col * half : col * half + 3, 0] += 0.7
    return x, y.astype(np.float32)


def _train_cnn(address: str) -> None:
    x, y = _images(256, seed=0)
    request = tpb.TrainRequest(
        framework="pytorch",
        model_name=DIGITS,
        architecture="cnn",
        device="cpu",
        dataset=tpb.Dataset(
            inline=tpb.InlineData(
                inputs=tpb.Tensor(shape=x.shape, values=x.ravel().tolist()),
                targets=tpb.Tensor(shape=y.shape, values=y.ravel().tolist()),
            )
        ),
        hyperparameters=tpb.HyperParameters(epochs=3, batch_size=32, seed=0),
    )
    with grpc.insecure_channel(address) as channel:
        events = list(tpb_grpc.TrainingServiceStub(channel).Train(request, timeout=300))
    last = events[-1]
    assert last.WhichOneof("event") == "finished", last


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    repository = tmp_path_factory.mktemp("gpu") / "pytorch"
    cpu_env = {**ENV, "TWINSERVE_DEVICE": "cpu"}
    seed = [sys.executable, "-m", MODULE, "seed", "--model-repository", str(repository)]
    subprocess.run(seed, check=True, env={**os.environ, **cpu_env}, timeout=300)
    args = ["--model-repository", str(repository)]
    cpu = launch("pytorch-cpu", MODULE, args, env=cpu_env, timeout=300)
    try:
        _train_cnn(cpu.address)
        metrics_port = _free_port()
        cuda = launch(
            "pytorch-cuda",
            MODULE,
            args,
            env={**ENV, "TWINSERVE_DEVICE": "cuda", "TWINSERVE_METRICS_PORT": str(metrics_port)},
            timeout=300,
        )
        try:
            yield Services(cpu, cuda, metrics_port)
        finally:
            cuda.stop()
    finally:
        cpu.stop()


def _runtimes(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> set[str]:
    config = stub.ModelConfig(pb.ModelConfigRequest(name=model), timeout=10).config
    return set(config.parameters["runtimes"].string_value.split(","))


def _infer(
    address: str, model: str, input_name: str, x: np.ndarray, runtime: str
) -> tuple[str, np.ndarray]:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=input_name, datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(np.ascontiguousarray(x, dtype="<f4").tobytes())
    param_to_pb(runtime, request.parameters["runtime"])
    with grpc.insecure_channel(address) as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    (output,) = response.outputs
    assert output.datatype == "FP32"
    values = np.frombuffer(response.raw_output_contents[0], dtype="<f4")
    return response.parameters["runtime"].string_param, values.reshape(tuple(output.shape))


def _both(
    services: Services, model: str, input_name: str, x: np.ndarray
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(runtime, CPU answer, CUDA answer) for every runtime both services offer."""
    with (
        grpc.insecure_channel(services.cpu.address) as cpu_channel,
        grpc.insecure_channel(services.cuda.address) as cuda_channel,
    ):
        on_cpu = _runtimes(pb_grpc.GRPCInferenceServiceStub(cpu_channel), model)
        on_cuda = _runtimes(pb_grpc.GRPCInferenceServiceStub(cuda_channel), model)
    common = sorted(on_cpu & on_cuda)
    assert "native" in common, (on_cpu, on_cuda)
    for runtime in common:
        cpu_runtime, cpu_answer = _infer(services.cpu.address, model, input_name, x, runtime)
        cuda_runtime, cuda_answer = _infer(services.cuda.address, model, input_name, x, runtime)
        assert cpu_runtime == cuda_runtime == runtime
        yield runtime, cpu_answer, cuda_answer


def test_the_linear_model_on_cuda_answers_as_on_the_cpu(services: Services) -> None:
    sizes = np.linspace(500.0, 2750.0, 33, dtype=np.float32).reshape(-1, 1)
    for runtime, cpu, cuda in _both(services, "house_price", "size_sqft", sizes):
        assert cuda.shape == cpu.shape == (33, 1), runtime
        np.testing.assert_allclose(cpu, 0.2 * sizes, rtol=1e-3, err_msg=runtime)
        # Elementwise work and a 1x1 matmul: fp32 on both, a few ulps apart at most.
        np.testing.assert_allclose(cuda, cpu, rtol=1e-5, atol=0, err_msg=runtime)


def test_the_cnn_on_cuda_answers_as_on_the_cpu(services: Services) -> None:
    x, _ = _images(64, seed=1)
    for runtime, cpu, cuda in _both(services, DIGITS, "input", x):
        assert cuda.shape == cpu.shape == (64, 4), runtime
        assert np.all(np.isfinite(cuda)), runtime
        np.testing.assert_allclose(cuda.sum(axis=1), 1.0, atol=1e-5, err_msg=runtime)
        # Probabilities in [0, 1]. PyTorch runs cuDNN convolutions in TF32 by default (a
        # 10-bit mantissa on Ampere and later), so the GPU's answer is within 1e-3 of the
        # CPU's, not within fp32's 1e-6.
        np.testing.assert_allclose(cuda, cpu, rtol=0, atol=1e-3, err_msg=runtime)
        # The same class wherever the CPU's choice is not a near tie.
        top2 = np.sort(cpu, axis=1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 1e-2
        assert clear.sum() >= 32, "the CNN did not learn: most answers are near ties"
        assert np.array_equal(cuda.argmax(axis=1)[clear], cpu.argmax(axis=1)[clear]), runtime


def test_the_cuda_service_holds_its_models_on_the_gpu(services: Services) -> None:
    # After the comparisons above (or on its own: one call makes the series appear).
    x = np.array([[1800.0]], dtype=np.float32)
    _infer(services.cuda.address, "house_price", "size_sqft", x, "native")
    url = f"http://127.0.0.1:{services.cuda_metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    allocated = [s.value for s in samples if s.name == "twinserve_device_memory_allocated_bytes"]
    assert allocated and allocated[0] > 0, "the CUDA service reports no GPU memory in use"
    served = [
        s
        for s in samples
        if s.name == "twinserve_inference_requests_total" and s.labels.get("code") == "OK"
    ]
    assert served and {s.labels["device"] for s in served} == {"cuda"}
