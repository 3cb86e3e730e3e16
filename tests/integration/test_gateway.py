"""The gateway in front of two fake framework services whose answers differ: tensorflow
prices 1800 sq ft at 360, pytorch at 540."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.server import Gateway, create_server
from gateway.settings import GatewaySettings
from serving.app.server import Service
from serving.backend.fake import AffineBackend
from serving.engine.repository import ModelRepository
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.training.seed import seed_repository

from .oip import (
    HOUSE_PRICE_INPUT,
    SEED_MODEL,
    eventually,
    price_request,
    prices,
    rpc_error,
    train_slope,
)

Stub = pb_grpc.GRPCInferenceServiceStub
OK = pytest.approx
TF_PRICE, PT_PRICE = 360.0, 540.0
TORCH_ONLY = "torch_only"
PYTORCH = (("x-framework", "pytorch"),)
TENSORFLOW = (("x-framework", "tensorflow"),)


@dataclass
class Stack:
    tensorflow: Service
    pytorch: Service
    gateway: Gateway
    stub: Stub
    channel: grpc.Channel
    # Holds the pytorch service's predict calls while cleared.
    pytorch_gate: threading.Event


@contextmanager
def _stack(aio, tmp_path_factory: pytest.TempPathFactory, **gateway: object) -> Iterator[Stack]:
    tf_repository = tmp_path_factory.mktemp("tensorflow")
    pt_repository = tmp_path_factory.mktemp("pytorch")
    assert seed_repository(ModelRepository(tf_repository), AffineBackend(framework="tensorflow"))
    assert train_slope(pt_repository, SEED_MODEL, 0.3, AffineBackend(framework="pytorch")) == 1
    assert train_slope(pt_repository, TORCH_ONLY, 0.5, AffineBackend(framework="pytorch")) == 1
    gate = threading.Event()
    gate.set()
    with ExitStack() as stack:
        tensorflow = stack.enter_context(
            aio.service(tf_repository, AffineBackend(framework="tensorflow"))
        )
        pytorch = stack.enter_context(
            aio.service(
                pt_repository, AffineBackend(framework="pytorch", gate=gate), inline_max_us=0
            )
        )
        stack.callback(gate.set)
        front = stack.enter_context(
            aio.gateway(
                tensorflow_url=f"127.0.0.1:{tensorflow.port}",
                pytorch_url=f"127.0.0.1:{pytorch.port}",
                health_interval_s=0.2,
                **gateway,
            )
        )
        channel = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{front.port}"))
        yield Stack(tensorflow, pytorch, front, Stub(channel), channel, gate)


@pytest.fixture(scope="module")
def stack(aio, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with _stack(aio, tmp_path_factory) as stack:
        yield stack


@pytest.fixture(scope="module")
def stub(stack: Stack) -> Stub:
    return stack.stub


def _framework(response: pb.ModelInferResponse) -> str:
    return response.parameters["framework"].string_param


def _direct(service: Service) -> Callable[[], grpc.Channel]:
    return lambda: grpc.insecure_channel(f"127.0.0.1:{service.port}")


def _health(channel: grpc.Channel, name: str = "") -> int:
    request = health_pb2.HealthCheckRequest(service=name)
    return health_pb2_grpc.HealthStub(channel).Check(request, timeout=2).status


# ---- routing ----


def test_default_framework_is_tensorflow(stub: Stub) -> None:
    response = stub.ModelInfer(price_request(1800.0, id="plain"))
    assert _framework(response) == "tensorflow"
    assert response.id == "plain"
    assert prices(response) == OK([TF_PRICE], abs=1e-3)


@pytest.mark.parametrize(("framework", "price"), [("pytorch", PT_PRICE), ("tensorflow", TF_PRICE)])
def test_routes_by_request_parameter(stub: Stub, framework: str, price: float) -> None:
    response = stub.ModelInfer(price_request(1800.0, parameters={"framework": framework}))
    assert _framework(response) == framework
    assert prices(response) == OK([price], abs=1e-3)


@pytest.mark.parametrize(("framework", "price"), [("pytorch", PT_PRICE), ("tensorflow", TF_PRICE)])
def test_routes_by_metadata(stub: Stub, framework: str, price: float) -> None:
    response = stub.ModelInfer(price_request(1800.0), metadata=(("x-framework", framework),))
    assert _framework(response) == framework
    assert prices(response) == OK([price], abs=1e-3)


def test_parameter_and_metadata_that_agree(stub: Stub) -> None:
    request = price_request(1800.0, parameters={"framework": "pytorch"})
    response = stub.ModelInfer(request, metadata=PYTORCH)
    assert _framework(response) == "pytorch"


def test_parameter_and_metadata_that_conflict(stub: Stub) -> None:
    request = price_request(1800.0, parameters={"framework": "pytorch"})
    code, details = rpc_error(stub.ModelInfer, request, metadata=TENSORFLOW)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "'pytorch'" in details
    assert "'tensorflow'" in details
    assert "x-framework" in details


@pytest.mark.parametrize("where", ["parameter", "metadata"])
def test_unknown_framework(stub: Stub, where: str) -> None:
    if where == "parameter":
        request, metadata = price_request(1800.0, parameters={"framework": "jax"}), ()
    else:
        request, metadata = price_request(1800.0), (("x-framework", "jax"),)
    code, details = rpc_error(stub.ModelInfer, request, metadata=metadata)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown framework 'jax'" in details


def test_framework_parameter_must_be_a_string(stub: Stub) -> None:
    code, details = rpc_error(
        stub.ModelInfer, price_request(1800.0, parameters={"framework": True})
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "'framework' must be a string" in details


def test_per_model_default_framework(aio, stack: Stack) -> None:
    settings = {
        "tensorflow_url": f"127.0.0.1:{stack.tensorflow.port}",
        "pytorch_url": f"127.0.0.1:{stack.pytorch.port}",
        "model_frameworks": {SEED_MODEL: "pytorch"},
    }
    with (
        aio.gateway(**settings) as front,
        grpc.insecure_channel(f"127.0.0.1:{front.port}") as channel,
    ):
        stub = Stub(channel)
        response = stub.ModelInfer(price_request(1800.0))
        assert _framework(response) == "pytorch"
        assert prices(response) == OK([PT_PRICE], abs=1e-3)
        # An explicit choice still wins over the model's default.
        response = stub.ModelInfer(price_request(1800.0), metadata=TENSORFLOW)
        assert prices(response) == OK([TF_PRICE], abs=1e-3)
        # A model without a rule that only pytorch serves goes there, not to the default.
        response = stub.ModelInfer(price_request(1.0, model=TORCH_ONLY))
        assert _framework(response) == "pytorch"
        # One that nobody serves is the default's NOT_FOUND, naming it.
        code, details = rpc_error(stub.ModelInfer, price_request(1.0, model="nope"))
        assert code is grpc.StatusCode.NOT_FOUND
        assert "'nope'" in details


def test_model_calls_are_routed_by_metadata(stub: Stub) -> None:
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name=TORCH_ONLY), metadata=PYTORCH)
    assert metadata.name == TORCH_ONLY
    assert [t.name for t in metadata.inputs] == [HOUSE_PRICE_INPUT]
    # Asked of tensorflow, which lacks it: NOT_FOUND (without a framework it is found where
    # it lives: test_gateway_locations.py).
    code, _ = rpc_error(
        stub.ModelMetadata, pb.ModelMetadataRequest(name=TORCH_ONLY), metadata=TENSORFLOW
    )
    assert code is grpc.StatusCode.NOT_FOUND

    ready = pb.ModelReadyRequest(name=TORCH_ONLY)
    assert stub.ModelReady(ready, metadata=PYTORCH).ready is True
    assert stub.ModelReady(ready, metadata=TENSORFLOW).ready is False

    config = pb.ModelConfigRequest(name=SEED_MODEL)
    assert stub.ModelConfig(config, metadata=PYTORCH).config.backend == "pytorch"
    assert stub.ModelConfig(config).config.backend == "tensorflow"

    stub.ModelInfer(price_request(1.0, model=TORCH_ONLY), metadata=PYTORCH)
    statistics = stub.ModelStatistics(pb.ModelStatisticsRequest(name=TORCH_ONLY), metadata=PYTORCH)
    assert [s.name for s in statistics.model_stats] == [TORCH_ONLY]


def test_repository_index_merges_both_services(stub: Stub) -> None:
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest())
    assert [(m.name, m.version, m.state, m.reason) for m in index.models] == [
        (SEED_MODEL, "1", "READY", "framework=tensorflow"),
        (SEED_MODEL, "1", "READY", "framework=pytorch"),
        (TORCH_ONLY, "1", "READY", "framework=pytorch"),
    ]
    only_tf = stub.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=TENSORFLOW)
    assert [(m.name, m.reason) for m in only_tf.models] == [(SEED_MODEL, "framework=tensorflow")]


# ---- upstream errors pass through ----


def _bad_raw_length() -> pb.ModelInferRequest:
    request = price_request(1800.0)
    request.raw_input_contents[0] = b"\x00" * 5
    return request


@pytest.mark.parametrize(
    ("make", "code", "fragment"),
    [
        (lambda: price_request(1800.0, model="nope"), grpc.StatusCode.NOT_FOUND, "'nope'"),
        (_bad_raw_length, grpc.StatusCode.INVALID_ARGUMENT, "5 bytes"),
    ],
    ids=["unknown-model", "bad-raw-length"],
)
def test_upstream_errors_pass_through(
    stack: Stack,
    make: Callable[[], pb.ModelInferRequest],
    code: grpc.StatusCode,
    fragment: str,
) -> None:
    through = rpc_error(stack.stub.ModelInfer, make(), metadata=PYTORCH)
    with _direct(stack.pytorch)() as channel:
        direct = rpc_error(Stub(channel).ModelInfer, make())
    assert through == direct
    assert through[0] is code
    assert fragment in through[1]


# ---- streaming ----


def test_stream_routes_each_message(stub: Stub) -> None:
    requests = [
        price_request(1800.0, id="a", parameters={"framework": "pytorch"}),
        price_request(1800.0, id="b"),
        price_request(1800.0, id="c", model="nope"),
        price_request(1800.0, id="d", parameters={"framework": "jax"}),
        price_request(1000.0, id="e", parameters={"framework": "tensorflow"}),
    ]
    answers = list(stub.ModelStreamInfer(iter(requests), timeout=10))
    assert [a.infer_response.id for a in answers] == ["a", "b", "c", "d", "e"]
    assert [bool(a.error_message) for a in answers] == [False, False, True, True, False]
    assert "'nope'" in answers[2].error_message
    assert "unknown framework 'jax'" in answers[3].error_message
    assert [_framework(answers[i].infer_response) for i in (0, 1, 4)] == [
        "pytorch",
        "tensorflow",
        "tensorflow",
    ]
    assert prices(answers[0].infer_response) == OK([PT_PRICE], abs=1e-3)
    assert prices(answers[1].infer_response) == OK([TF_PRICE], abs=1e-3)
    assert prices(answers[4].infer_response) == OK([200.0], abs=1e-3)


def test_stream_routes_by_metadata(stub: Stub) -> None:
    requests = [price_request(1800.0, id=str(i)) for i in range(3)]
    answers = list(stub.ModelStreamInfer(iter(requests), metadata=PYTORCH, timeout=10))
    assert [a.infer_response.id for a in answers] == ["0", "1", "2"]
    assert all(_framework(a.infer_response) == "pytorch" for a in answers)
    assert all(prices(a.infer_response) == OK([PT_PRICE], abs=1e-3) for a in answers)


# ---- deadlines ----


@contextmanager
def _held(gate: threading.Event) -> Iterator[None]:
    gate.clear()
    try:
        yield
    finally:
        gate.set()


def test_client_deadline_shorter_than_a_held_upstream_call(stack: Stack) -> None:
    request = price_request(1800.0, parameters={"framework": "pytorch"})
    with _held(stack.pytorch_gate):
        code, _ = rpc_error(stack.stub.ModelInfer, request, timeout=0.5)
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert prices(stack.stub.ModelInfer(request, timeout=5)) == OK([PT_PRICE], abs=1e-3)


def test_gateway_bounds_every_upstream_call(aio, stack: Stack) -> None:
    with (
        aio.gateway(pytorch_url=f"127.0.0.1:{stack.pytorch.port}", upstream_timeout_s=0.3) as front,
        grpc.insecure_channel(f"127.0.0.1:{front.port}") as channel,
    ):
        request = price_request(1800.0, parameters={"framework": "pytorch"})
        with _held(stack.pytorch_gate):
            code, details = rpc_error(Stub(channel).ModelInfer, request, timeout=10)
        assert code is grpc.StatusCode.DEADLINE_EXCEEDED
        assert "pytorch service" in details


# ---- health ----


def test_gateway_health_and_metadata(stack: Stack) -> None:
    stub = stack.stub
    assert stub.ServerLive(pb.ServerLiveRequest()).live is True
    assert stub.ServerReady(pb.ServerReadyRequest()).ready is True
    assert stub.ServerMetadata(pb.ServerMetadataRequest()).name == "twinserve-gateway"
    assert eventually(lambda: _health(stack.channel) == health_pb2.HealthCheckResponse.SERVING)


def test_a_backend_going_down(aio, tmp_path_factory: pytest.TempPathFactory) -> None:
    with _stack(aio, tmp_path_factory) as stack:
        stub = stack.stub
        assert stub.ServerReady(pb.ServerReadyRequest()).ready is True
        assert eventually(lambda: _health(stack.channel) == health_pb2.HealthCheckResponse.SERVING)

        aio.run(stack.pytorch.stop(grace=0))

        assert stub.ServerReady(pb.ServerReadyRequest()).ready is False
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        assert eventually(lambda: _health(stack.channel) == not_serving, timeout=2.0)
        code, details = rpc_error(stub.ModelInfer, price_request(1800.0), metadata=PYTORCH)
        assert code is grpc.StatusCode.UNAVAILABLE
        assert "pytorch service" in details
        response = stub.ModelInfer(price_request(1800.0), metadata=TENSORFLOW)
        assert prices(response) == OK([TF_PRICE], abs=1e-3)


def test_gateway_without_a_pytorch_service(aio, stack: Stack) -> None:
    with (
        aio.gateway(tensorflow_url=f"127.0.0.1:{stack.tensorflow.port}") as front,
        grpc.insecure_channel(f"127.0.0.1:{front.port}") as channel,
    ):
        stub = Stub(channel)
        code, details = rpc_error(stub.ModelInfer, price_request(1800.0), metadata=PYTORCH)
        # Only the configured frameworks are known: pytorch is not one of them here.
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert "unknown framework 'pytorch' (this gateway serves 'tensorflow')" in details
        assert prices(stub.ModelInfer(price_request(1800.0))) == OK([TF_PRICE], abs=1e-3)
        assert stub.ServerReady(pb.ServerReadyRequest()).ready is True


def test_gateway_needs_a_backend(aio) -> None:
    with pytest.raises(ValueError, match="at least one backend"):
        aio.run(create_server(GatewaySettings(port=0)))
