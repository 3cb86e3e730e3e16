"""The README's "Serve your own models" walkthrough, checked: examples/triton_repository.py
writes a Triton model repository (a Keras SavedModel, a TorchScript file with its
config.pbtxt, an ONNX export), the three services serve that one directory as `make run
MODELS=DIR` starts them (devtools.stack), and through the gateway each model answers
price = 0.2 x size from every framework that serves it; `seed` writes nothing into it and the
banner names its models."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from devtools import cli
from devtools.frameworks import frameworks, gateway_frameworks, is_model_repository, repository_of
from devtools.stack import Process, _tries, launch
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.protocol.codec import decode_tensor
from serving.protocol.names import FRAMEWORK_HEADER, FRAMEWORK_PARAM
from tests.integration.oip import eventually

pytestmark = pytest.mark.framework

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "triton_repository.py"
Stub = pb_grpc.GRPCInferenceServiceStub
WAIT_S = 60.0  # a bound on each wait, never a pause
ENV = {
    "TWINSERVE_LOG_LEVEL": "WARNING",
    "TWINSERVE_GATEWAY_LOG_LEVEL": "WARNING",
    "TF_CPP_MIN_LOG_LEVEL": "2",
}
# Every model and the frameworks serving it, in the gateway's configured order: each service
# serves its own platform, and ONNX Runtime is in every one.
SERVED = {
    "keras_price": ("tensorflow",),
    "onnx_price": ("tensorflow", "pytorch", "onnx"),
    "torch_price": ("pytorch",),
}
SIZES = np.array([[1800.0], [1200.0]], dtype=np.float32)


@dataclass
class Stack:
    repository: Path
    written: dict[str, tuple[int, int]]  # every path under it -> (size, mtime) as written
    gateway: str


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in root.rglob("*")
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("example") / "my-models"
    env = {**os.environ, **ENV}
    subprocess.run([sys.executable, str(SCRIPT), str(root)], check=True, env=env, timeout=180)
    assert is_model_repository(root)
    written = _tree(root)
    known = frameworks()
    started: list[Process] = []
    try:
        # As `make run MODELS=DIR` starts them (every service on DIR), on free ports, at once.
        with ThreadPoolExecutor(len(known)) as pool:
            futures = [
                pool.submit(
                    launch,
                    name,
                    framework.module,
                    ["--model-repository", str(repository_of(root, framework))],
                    env=ENV,
                )
                for name, framework in known.items()
            ]
            started += [future.result() for future in futures]
        addresses = {process.name: process.address for process in started}
        started.append(launch("gateway", "gateway", env={**ENV, **gateway_frameworks(addresses)}))
        gateway = started[-1].address
        # Services load their repository before listening; this bounds the gateway's look.
        assert eventually(lambda: set(_expected_index()) <= set(_index(gateway)), WAIT_S)
        yield Stack(root, written, gateway)
    finally:
        codes = {process.name: process.stop() for process in reversed(started)}
    assert all(code == 0 for code in codes.values()), codes


def _index(address: str) -> list[tuple[str, str, str]]:
    with grpc.insecure_channel(address) as channel:
        index = Stub(channel).RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)
    return [(entry.name, entry.state, entry.reason) for entry in index.models]


def _expected_index() -> list[tuple[str, str, str]]:
    return [
        (model, "READY", f"framework={framework}")
        for model, served in SERVED.items()
        for framework in served
    ]


def test_the_index_lists_each_model_with_the_frameworks_serving_it(stack: Stack) -> None:
    # One entry per model and framework, by model then framework as configured; nothing else.
    assert _index(stack.gateway) == _expected_index()


@pytest.mark.parametrize(
    ("model", "framework"),
    [(model, framework) for model, served in SERVED.items() for framework in served],
)
def test_each_model_answers_its_price_from_each_framework(
    stack: Stack, model: str, framework: str
) -> None:
    request = pb.ModelInferRequest(model_name=model)
    request.parameters[FRAMEWORK_PARAM].string_param = framework
    request.inputs.add(name="size_sqft", datatype="FP32", shape=list(SIZES.shape))
    request.raw_input_contents.append(SIZES.tobytes())
    with grpc.insecure_channel(stack.gateway) as channel:
        response = Stub(channel).ModelInfer(request, timeout=10)
    (output,) = response.outputs
    price = decode_tensor(
        output.name, output.datatype, output.shape, response.raw_output_contents[0]
    )
    assert output.name == "price_k"
    assert response.parameters[FRAMEWORK_PARAM].string_param == framework
    np.testing.assert_allclose(price, 0.2 * SIZES, rtol=1e-6)


@pytest.mark.parametrize("model", ["keras_price", "torch_price"])
def test_a_framework_model_is_not_found_on_the_other_services(stack: Stack, model: str) -> None:
    others = [name for name in frameworks() if name not in SERVED[model]]
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="size_sqft", datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(SIZES[:1].tobytes())
    with grpc.insecure_channel(stack.gateway) as channel:
        for framework in others:
            request.parameters[FRAMEWORK_PARAM].string_param = framework
            with pytest.raises(grpc.RpcError) as caught:
                Stub(channel).ModelInfer(request, timeout=10)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("model", "max_batch_size"), [("keras_price", 4), ("onnx_price", 4), ("torch_price", 8)]
)
def test_configs_are_auto_completed_or_as_written(
    stack: Stack, model: str, max_batch_size: int
) -> None:
    """No config.pbtxt: Triton's default max_batch_size and a batcher (every tensor's first
    dim is dynamic); torch_price's config.pbtxt as written."""
    with grpc.insecure_channel(stack.gateway) as channel:
        framework = ((FRAMEWORK_HEADER, SERVED[model][0]),)
        request = pb.ModelConfigRequest(name=model)
        config = Stub(channel).ModelConfig(request, timeout=10, metadata=framework).config
    assert config.max_batch_size == max_batch_size
    assert config.HasField("dynamic_batching")
    assert [(t.name, list(t.dims)) for t in config.input] == [("size_sqft", [1])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("price_k", [1])]


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        cli.main(list(argv))
    out = capsys.readouterr().out
    assert exited.value.code == 0, out
    return out


def test_the_readme_commands_answer_360(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    for model, served in SERVED.items():
        out = _cli(capsys, "--url", stack.gateway, "predict", model, "1800")
        # Without a framework, the gateway picks the first configured one serving it.
        assert out.strip() == f"{model} v1 ({served[0]}): 1800 -> 360.00"
    out = _cli(capsys, "--url", stack.gateway, "compare", "onnx_price", "1800")
    for target in ("tensorflow/onnx", "pytorch/onnx", "onnx/native"):
        assert any(
            line.startswith(target) and "1800 -> 360.00" in line for line in out.splitlines()
        )
    assert "max abs difference tensorflow/onnx vs onnx/native (price_k): 0" in out


def test_seed_leaves_the_users_repository_as_it_is(stack: Stack) -> None:
    command = [sys.executable, "-m", "devtools.stack", "seed", "--models", str(stack.repository)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    assert "is a model repository (Triton's layout): nothing is trained into it" in done.stdout
    # Nor did serving it write anything (no .staging, no model.json).
    assert _tree(stack.repository) == stack.written


def test_the_banner_names_the_repositorys_models(stack: Stack, tmp_path: Path) -> None:
    names = list(frameworks())
    twinserve = ".venv/bin/twinserve"
    assert _tries(stack.repository, names) == [
        *(f"{twinserve} predict {model}" for model in sorted(SERVED)),
        f"{twinserve} compare onnx_price",
    ]
    # Our own layout (a root of per-framework repositories, seeded) keeps its banner.
    assert _tries(tmp_path / "models", names) == [
        f"{twinserve} predict 1800 --framework {name}" for name in names
    ]
