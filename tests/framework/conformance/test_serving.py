"""Every backend served through the real gRPC path, each runtime: answers that match the
native model, and bad inputs (wrong datatype, rank, shape) refused as INVALID_ARGUMENT while
the service keeps serving. `make test` runs TensorFlow's cases with oneDNN on and off."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import numpy as np
import pytest

from serving.backend import Backend
from serving.engine.triton_config import CONFIG_PBTXT
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from tests.framework.backends import (
    FRAMEWORKS,
    SUBJECTS,
    Version,
    Versions,
    cases,
    dataset,
)
from tests.integration.conftest import AioThread

pytestmark = pytest.mark.framework

Stub = pb_grpc.GRPCInferenceServiceStub


# --- serving through the real gRPC path -----------------------------------------------------


class _Services:
    """One service per framework over its repository, started on first use."""

    def __init__(self, aio: AioThread, versions: Versions, stack: ExitStack) -> None:
        self._aio, self._versions, self._stack = aio, versions, stack
        self._stubs: dict[str, Stub] = {}

    def stub(self, framework: str) -> Stub:
        if framework not in self._stubs:
            service = self._stack.enter_context(
                self._aio.service(
                    self._versions.root(framework),
                    self._versions.backend(framework),
                    trains=SUBJECTS[framework].trains,
                    repository_poll_s=0,
                )
            )
            channel = grpc.insecure_channel(f"127.0.0.1:{service.port}")
            self._stack.callback(channel.close)
            self._stubs[framework] = Stub(channel)
        return self._stubs[framework]


@pytest.fixture(scope="module")
def services(aio: AioThread, versions: Versions) -> Iterator[_Services]:
    with ExitStack() as stack:
        yield _Services(aio, versions, stack)


def _request(
    model: str, name: str, datatype: str, x: np.ndarray, runtime: str = ""
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype=datatype, shape=list(x.shape))
    request.raw_input_contents.append(np.ascontiguousarray(x).tobytes())
    if runtime:
        request.parameters["runtime"].string_param = runtime
    return request


def _answer(response: pb.ModelInferResponse) -> np.ndarray:
    (output,) = response.outputs
    assert output.datatype == "FP32"
    return np.frombuffer(response.raw_output_contents[0], "<f4").reshape(output.shape)


@pytest.mark.parametrize(("framework", "architecture"), cases())
def test_serves_every_runtime_through_grpc(
    services: _Services, versions: Versions, backend: Backend, framework: str, version: Version
) -> None:
    stub, model = services.stub(framework), version.architecture
    x = dataset(model).x_test[:8]
    expected = versions.reference(framework, version, x)
    for runtime in backend.runtimes:
        response = stub.ModelInfer(
            _request(model, version.spec.input_name, "FP32", x, runtime), timeout=30
        )
        assert response.model_version == "1"
        assert response.parameters["framework"].string_param == framework
        assert response.parameters["runtime"].string_param == runtime
        np.testing.assert_allclose(_answer(response), expected, rtol=1e-3, atol=1e-4)
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name=model))
    assert metadata.platform == backend.runtimes["native"]
    assert [(t.name, list(t.shape)) for t in metadata.inputs] == [
        (spec.name, list(spec.shape)) for spec in version.meta.signature.inputs
    ]
    config = stub.ModelConfig(pb.ModelConfigRequest(name=model)).config
    offered = config.parameters["runtimes"].string_value.split(",")
    assert offered[0] == "native" and sorted(offered) == sorted(backend.runtimes)


def _bad_inputs(x: np.ndarray) -> dict[str, tuple[str, np.ndarray]]:
    """What a client gets wrong: (datatype, data) by what is wrong with it."""
    return {
        "datatype": ("INT32", x.astype(np.int32)),
        "rank-lower": ("FP32", x.reshape(len(x), -1)[:, :1].reshape(len(x))),
        "rank-higher": ("FP32", x[..., np.newaxis]),
        "unbatched": ("FP32", x[0]),
        "shape": ("FP32", np.concatenate([x, x], axis=-1)),
    }


@pytest.mark.parametrize(("framework", "architecture"), cases())
def test_bad_inputs_are_invalid_argument_and_the_service_keeps_serving(
    services: _Services, backend: Backend, framework: str, version: Version
) -> None:
    """The core checks every input against the signature before a runtime sees it, so no
    backend can be crashed by one (TensorFlow's oneDNN aborts the process on a wrong-rank
    convolution: `make test` runs this module with it on and off)."""
    stub, model, name = services.stub(framework), version.architecture, version.spec.input_name
    x = dataset(model).x_test[:3]
    for runtime in backend.runtimes:
        for wrong, (datatype, data) in _bad_inputs(x).items():
            with pytest.raises(grpc.RpcError) as raised:
                stub.ModelInfer(_request(model, name, datatype, data, runtime), timeout=30)
            error: grpc.Call = raised.value  # type: ignore[assignment]
            assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (runtime, wrong)
            assert name in (error.details() or ""), (runtime, wrong)
        answer = _answer(stub.ModelInfer(_request(model, name, "FP32", x, runtime), timeout=30))
        assert answer.shape[0] == 3


def _declared(kind: str, specs: Iterator[tuple[str, str, tuple[int, ...]]]) -> str:
    return "\n".join(
        f'{kind} {{ name: "{name}" data_type: TYPE_{datatype} dims: {list(shape[1:])} }}'
        for name, datatype, shape in specs
    )


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_triton_config_pbtxt_naming_its_platform_is_served_with_batching(
    aio: AioThread,
    versions: Versions,
    backend: Backend,
    linear: Version,
    tmp_path: Path,
) -> None:
    """Triton's own names for this service (`triton_platform`, `triton_backend`), the
    version's tensors declared without the batch dimension, batching on: served as declared;
    another service's platform keeps the model out."""
    framework = backend.framework
    shutil.copytree(versions.root(framework) / "linear", tmp_path / "linear")
    signature = linear.meta.signature
    config = "\n".join(
        [
            f'name: "linear"\nplatform: "{backend.triton_platform}"',
            f'backend: "{backend.triton_backend}"\nmax_batch_size: 8',
            _declared("input", ((s.name, s.datatype, s.shape) for s in signature.inputs)),
            _declared("output", ((s.name, s.datatype, s.shape) for s in signature.outputs)),
            "dynamic_batching { max_queue_delay_microseconds: 1000 }",
        ]
    )
    (tmp_path / "linear" / CONFIG_PBTXT).write_text(config)
    shutil.copytree(tmp_path / "linear", tmp_path / "other")
    other = config.replace("linear", "other").replace(backend.triton_platform, "tensorrt_plan")
    (tmp_path / "other" / CONFIG_PBTXT).write_text(other)
    x = dataset("linear").x_test[:8]
    with (
        aio.service(
            tmp_path, backend, trains=SUBJECTS[framework].trains, repository_poll_s=0
        ) as service,
        grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel,
    ):
        stub = Stub(channel)
        answer = _answer(stub.ModelInfer(_request("linear", linear.spec.input_name, "FP32", x)))
        served = stub.ModelConfig(pb.ModelConfigRequest(name="linear")).config
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelMetadata(pb.ModelMetadataRequest(name="other"))
    np.testing.assert_allclose(answer, versions.reference(framework, linear, x), rtol=1e-3)
    assert served.max_batch_size == 8 and served.HasField("dynamic_batching")
    error: grpc.Call = refused.value  # type: ignore[assignment]
    assert "other/config.pbtxt: platform 'tensorrt_plan'" in (error.details() or "")
