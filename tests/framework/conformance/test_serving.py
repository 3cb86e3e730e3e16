"""Every backend served through the real gRPC path, each runtime: answers that match the
native model, and bad inputs (wrong datatype, rank, shape) refused as INVALID_ARGUMENT while
the service keeps serving. `make test` runs TensorFlow's cases with oneDNN on and off."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import grpc
import numpy as np
import pytest

from serving.backend import Backend
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from tests.framework.backends import (
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
