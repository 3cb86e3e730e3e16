"""A third framework, configured only: the ONNX Runtime service over a repository another
framework trained (here the fake backend, which exports real ONNX files), directly and behind
a gateway whose frameworks come from the `frameworks` setting."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway.policy import PolicyError
from gateway.server import Gateway
from gateway.server import create_server as create_gateway
from gateway.settings import GatewaySettings
from onnx_service import OnnxBackend
from serving.app.server import Service
from serving.backend.fake import AffineBackend
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.pb.twinserve.v1 import compare_pb2 as cpb
from serving.pb.twinserve.v1 import compare_pb2_grpc as cpb_grpc
from serving.pb.twinserve.v1 import training_pb2_grpc as tpb_grpc

from .oip import SEED_MODEL, price_request, prices, rpc_error, train_slope
from .training import train_request

Stub = pb_grpc.GRPCInferenceServiceStub
OK = pytest.approx
SLOPE = 0.3
REFUSED = "refused_export"  # a model whose ONNX export failed its parity check


@dataclass
class Stack:
    onnx: Service
    trainer: Service  # the framework that trained the repository (the fake, as "pytorch")
    gateway: Gateway
    direct: grpc.Channel
    front: grpc.Channel


@pytest.fixture(scope="module")
def stack(aio: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    repository = tmp_path_factory.mktemp("pytorch")
    assert train_slope(repository, SEED_MODEL, SLOPE, AffineBackend(framework="pytorch")) == 1
    skewed = AffineBackend(framework="pytorch", export_skew=100.0)
    assert train_slope(repository, REFUSED, SLOPE, skewed) == 1
    with ExitStack() as stack:
        onnx = stack.enter_context(aio.service(repository, OnnxBackend(), trains=False))
        trainer = stack.enter_context(aio.service(repository, AffineBackend(framework="pytorch")))
        frameworks = {"pytorch": f"127.0.0.1:{trainer.port}", "onnx": f"127.0.0.1:{onnx.port}"}
        front = stack.enter_context(aio.gateway(frameworks=frameworks))
        yield Stack(
            onnx,
            trainer,
            front,
            stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{onnx.port}")),
            stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{front.port}")),
        )


def _framework(response: pb.ModelInferResponse) -> str:
    return response.parameters["framework"].string_param


def test_the_onnx_service_answers_as_onnx(stack: Stack) -> None:
    stub = Stub(stack.direct)
    response = stub.ModelInfer(price_request(1800.0, 1000.0), timeout=5)
    assert prices(response) == OK([1800.0 * SLOPE, 1000.0 * SLOPE], abs=1e-3)
    assert (_framework(response), response.parameters["runtime"].string_param) == (
        "onnx",
        "native",
    )
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name=SEED_MODEL), timeout=5)
    assert metadata.platform == "onnxruntime_onnx"
    config = stub.ModelConfig(pb.ModelConfigRequest(name=SEED_MODEL), timeout=5).config
    assert (config.backend, config.parameters["framework"].string_value) == ("onnx", "onnx")
    server = stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=5)
    assert server.name == "twinserve-onnx"


def test_a_version_without_an_onnx_export_is_unavailable_with_the_reason(stack: Stack) -> None:
    stub = Stub(stack.direct)
    code, details = rpc_error(stub.ModelInfer, price_request(1800.0, model=REFUSED), timeout=5)
    assert code is grpc.StatusCode.UNAVAILABLE
    assert "ONNX export" in details and "refused" in details
    # The framework that trained it still serves it.
    answer = Stub(grpc.insecure_channel(f"127.0.0.1:{stack.trainer.port}")).ModelInfer(
        price_request(1800.0, model=REFUSED), timeout=5
    )
    assert prices(answer) == OK([1800.0 * SLOPE], abs=1e-3)


def test_the_onnx_service_refuses_training(stack: Stack) -> None:
    for channel in (stack.direct, stack.front):
        events = tpb_grpc.TrainingServiceStub(channel).Train(
            train_request("new_model", framework="onnx"), timeout=5
        )
        code, details = rpc_error(list, events)
        assert code is grpc.StatusCode.UNIMPLEMENTED
        assert "the onnx service does not train" in details


@pytest.mark.parametrize("how", ["parameter", "metadata"])
def test_the_gateway_routes_to_a_configured_third_framework(stack: Stack, how: str) -> None:
    stub = Stub(stack.front)
    if how == "parameter":
        response = stub.ModelInfer(price_request(1800.0, parameters={"framework": "onnx"}))
    else:
        response = stub.ModelInfer(price_request(1800.0), metadata=(("x-framework", "onnx"),))
    assert _framework(response) == "onnx"
    assert prices(response) == OK([1800.0 * SLOPE], abs=1e-3)
    # The first configured framework is the default.
    assert _framework(stub.ModelInfer(price_request(1800.0), timeout=5)) == "pytorch"


@pytest.mark.parametrize("name", ["tensorflow", "jax"])
def test_the_gateway_refuses_a_framework_it_is_not_configured_with(stack: Stack, name: str) -> None:
    stub = Stub(stack.front)
    for request, metadata in (
        (price_request(1800.0, parameters={"framework": name}), ()),
        (price_request(1800.0), (("x-framework", name),)),
    ):
        code, details = rpc_error(stub.ModelInfer, request, metadata=metadata, timeout=5)
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert f"unknown framework '{name}' (this gateway serves 'onnx', 'pytorch')" in details


def test_compare_defaults_to_every_configured_framework(stack: Stack) -> None:
    message = cpb.CompareRequest(infer_request=price_request(1800.0).SerializeToString())
    answer = cpb_grpc.ComparisonServiceStub(stack.front).Compare(message, timeout=10)
    assert [r.target.framework for r in answer.results] == ["pytorch", "onnx"]
    assert all(r.status.name == "OK" for r in answer.results)
    (difference,) = answer.differences
    assert difference.max_abs_diff < 1e-3
    unknown = cpb.CompareRequest(
        infer_request=message.infer_request, targets=[cpb.Target(framework="tensorflow")]
    )
    code, details = rpc_error(cpb_grpc.ComparisonServiceStub(stack.front).Compare, unknown)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "'onnx', 'pytorch'" in details


def test_a_routing_file_is_checked_against_the_configured_frameworks(
    aio: Any, stack: Stack, tmp_path: Path
) -> None:
    frameworks = {"onnx": f"127.0.0.1:{stack.onnx.port}"}
    good = tmp_path / "good.json"
    good.write_text(json.dumps({SEED_MODEL: {"framework": "onnx"}}))
    with (
        aio.gateway(frameworks=frameworks, routing_file=good) as front,
        grpc.insecure_channel(f"127.0.0.1:{front.port}") as channel,
    ):
        assert _framework(Stub(channel).ModelInfer(price_request(1.0), timeout=5)) == "onnx"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({SEED_MODEL: {"split": {"onnx": 1, "pytorch": 1}}}))
    settings = GatewaySettings(port=0, frameworks=frameworks, routing_file=bad)
    with pytest.raises(PolicyError, match=r"unknown framework 'pytorch' \(configured: 'onnx'\)"):
        aio.run(create_gateway(settings))


def test_a_version_whose_onnx_file_is_gone(aio: Any, tmp_path: Path) -> None:
    assert train_slope(tmp_path, SEED_MODEL, SLOPE, AffineBackend(framework="pytorch")) == 1
    (tmp_path / SEED_MODEL / "1" / "model.onnx").unlink()
    with (
        aio.service(tmp_path, OnnxBackend(), trains=False) as onnx,
        grpc.insecure_channel(f"127.0.0.1:{onnx.port}") as channel,
    ):
        load = pb.RepositoryModelLoadRequest(model_name=SEED_MODEL)
        code, details = rpc_error(Stub(channel).RepositoryModelLoad, load, timeout=5)
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert "no usable ONNX export (model.onnx is missing)" in details
    assert str(tmp_path) not in details
