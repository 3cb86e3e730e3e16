"""A real grpc.aio framework service with the NumPy backend, driven over the wire."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.app.server import Service
from serving.backend.fake import AffineBackend
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.rpc.server import SERVICE_NAME

from .oip import (
    HOUSE_PRICE_INPUT,
    HOUSE_PRICE_OUTPUT,
    SEED_MODEL,
    eventually,
    price_request,
    prices,
    rpc_error,
    train_slope,
)

Stub = pb_grpc.GRPCInferenceServiceStub
OK = pytest.approx


@pytest.fixture(scope="module")
def service(aio, seeded_repository: Callable[[], Path]) -> Iterator[Service]:
    with aio.service(seeded_repository(), AffineBackend()) as service:
        yield service


@pytest.fixture(scope="module")
def channel(service: Service) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> Stub:
    return Stub(channel)


@pytest.fixture
def fresh(aio, seeded_repository: Callable[[], Path]) -> Iterator[tuple[Path, Stub]]:
    """A service of its own, for tests that change what is loaded."""
    repository = seeded_repository()
    with (
        aio.service(repository, AffineBackend()) as service,
        grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel,
    ):
        yield repository, Stub(channel)


def _assert_serves(stub: Stub, version: str = "1", price: float = 360.0) -> None:
    response = stub.ModelInfer(price_request(1800.0))
    assert response.model_version == version
    assert prices(response) == OK([price], abs=1e-3)


# ---- health and metadata ----


def test_server_live_and_ready(stub: Stub) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest()).live is True
    assert stub.ServerReady(pb.ServerReadyRequest()).ready is True


def test_grpc_health_reports_serving(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE_NAME):
        answer = health.Check(health_pb2.HealthCheckRequest(service=name))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    ("name", "version", "ready"),
    [
        (SEED_MODEL, "", True),
        (SEED_MODEL, "1", True),
        (SEED_MODEL, "2", False),
        (SEED_MODEL, "one", False),
        ("nope", "", False),
        ("", "", False),
    ],
)
def test_model_ready(stub: Stub, name: str, version: str, ready: bool) -> None:
    assert stub.ModelReady(pb.ModelReadyRequest(name=name, version=version)).ready is ready


def test_server_metadata(stub: Stub) -> None:
    answer = stub.ServerMetadata(pb.ServerMetadataRequest())
    assert answer.name == "twinserve-fake"
    assert answer.version
    assert {"binary_tensor_data", "model_repository", "statistics"} <= set(answer.extensions)


@pytest.mark.parametrize("version", ["", "1"])
def test_model_metadata(stub: Stub, version: str) -> None:
    answer = stub.ModelMetadata(pb.ModelMetadataRequest(name=SEED_MODEL, version=version))
    assert answer.name == SEED_MODEL
    assert list(answer.versions) == ["1"]
    assert answer.platform == "numpy_affine"
    assert [(t.name, t.datatype, list(t.shape)) for t in answer.inputs] == [
        (HOUSE_PRICE_INPUT, "FP32", [-1, 1])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in answer.outputs] == [
        (HOUSE_PRICE_OUTPUT, "FP32", [-1, 1])
    ]


def test_model_metadata_of_unknown_model(stub: Stub) -> None:
    code, details = rpc_error(stub.ModelMetadata, pb.ModelMetadataRequest(name="nope"))
    assert code is grpc.StatusCode.NOT_FOUND
    assert "'nope'" in details


def test_model_config(stub: Stub) -> None:
    config = stub.ModelConfig(pb.ModelConfigRequest(name=SEED_MODEL)).config
    assert config.name == SEED_MODEL
    assert config.platform == "numpy_affine"
    assert config.backend == "fake"
    assert config.version_policy.latest.num_versions == 1
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        (HOUSE_PRICE_INPUT, pb.TYPE_FP32, [-1, 1])
    ]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [
        (HOUSE_PRICE_OUTPUT, pb.TYPE_FP32, [-1, 1])
    ]
    assert config.parameters["architecture"].string_value == "linear"


def test_repository_index(stub: Stub) -> None:
    for ready in (False, True):
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=ready))
        assert [(m.name, m.version, m.state) for m in index.models] == [(SEED_MODEL, "1", "READY")]


# ---- inference ----


def test_infer_raw(stub: Stub) -> None:
    response = stub.ModelInfer(price_request(1800.0, 1000.0, id="req-42"))
    assert (response.model_name, response.model_version, response.id) == (
        SEED_MODEL,
        "1",
        "req-42",
    )
    assert response.parameters["framework"].string_param == "fake"
    (output,) = response.outputs
    assert list(output.shape) == [2, 1]
    assert not output.contents.ListFields()
    assert len(response.raw_output_contents) == 1
    assert prices(response) == OK([360.0, 200.0], abs=1e-3)


def test_infer_typed_inputs(stub: Stub) -> None:
    response = stub.ModelInfer(price_request(1800.0, 2500.0, typed=True))
    assert prices(response) == OK([360.0, 500.0], abs=1e-3)


def test_typed_outputs_when_binary_data_output_is_false(stub: Stub) -> None:
    request = price_request(1800.0, parameters={"binary_data_output": False})
    response = stub.ModelInfer(request)
    assert not response.raw_output_contents
    assert list(response.outputs[0].contents.fp32_contents) == OK([360.0], abs=1e-3)


def test_typed_output_requested_per_output(stub: Stub) -> None:
    request = price_request(1800.0)
    wanted = request.outputs.add(name=HOUSE_PRICE_OUTPUT)
    wanted.parameters["binary_data"].bool_param = False
    response = stub.ModelInfer(request)
    assert not response.raw_output_contents
    assert list(response.outputs[0].contents.fp32_contents) == OK([360.0], abs=1e-3)


def test_explicit_version(stub: Stub) -> None:
    response = stub.ModelInfer(price_request(1800.0, version="1"))
    assert response.model_version == "1"
    assert prices(response) == OK([360.0], abs=1e-3)


def test_stream_infer(stub: Stub) -> None:
    bad = price_request(1800.0, id="b")
    bad.inputs[0].shape[:] = [1, 2]
    requests = [price_request(1800.0, id="a"), bad, price_request(1000.0, 500.0, id="c")]
    requests.append(price_request(2500.0, id="d", typed=True))
    answers = list(stub.ModelStreamInfer(iter(requests), timeout=10))
    assert [a.infer_response.id for a in answers] == ["a", "b", "c", "d"]
    assert [bool(a.error_message) for a in answers] == [False, True, False, False]
    assert "[1, 2]" in answers[1].error_message
    assert answers[1].infer_response.model_name == SEED_MODEL
    assert prices(answers[0].infer_response) == OK([360.0], abs=1e-3)
    assert prices(answers[2].infer_response) == OK([200.0, 100.0], abs=1e-3)
    assert prices(answers[3].infer_response) == OK([500.0], abs=1e-3)


def test_model_statistics_count_inferences(stub: Stub) -> None:
    def stats() -> pb.ModelStatistics:
        answer = stub.ModelStatistics(pb.ModelStatisticsRequest(name=SEED_MODEL, version="1"))
        (entry,) = answer.model_stats
        assert (entry.name, entry.version) == (SEED_MODEL, "1")
        return entry

    stub.ModelInfer(price_request(1.0))  # makes sure an entry exists
    before = stats()
    stub.ModelInfer(price_request(1800.0))
    stub.ModelInfer(price_request(1.0, 2.0, 3.0))
    rpc_error(stub.ModelInfer, pb.ModelInferRequest(model_name=SEED_MODEL))  # no inputs
    after = stats()
    assert after.inference_count - before.inference_count == 4
    assert after.execution_count - before.execution_count == 2
    assert after.inference_stats.success.count - before.inference_stats.success.count == 2
    assert (
        after.inference_stats.compute_infer.count - before.inference_stats.compute_infer.count == 2
    )
    assert after.inference_stats.fail.count - before.inference_stats.fail.count == 1
    assert after.inference_stats.success.ns > before.inference_stats.success.ns
    assert after.last_inference >= before.last_inference > 0


def test_model_statistics_of_every_model(stub: Stub) -> None:
    stub.ModelInfer(price_request(1800.0))
    answer = stub.ModelStatistics(pb.ModelStatisticsRequest())
    assert [(s.name, s.version) for s in answer.model_stats] == [(SEED_MODEL, "1")]
    code, details = rpc_error(stub.ModelStatistics, pb.ModelStatisticsRequest(name="nope"))
    assert code is grpc.StatusCode.NOT_FOUND
    assert "'nope'" in details


# ---- the model repository over the wire ----


def test_unload_then_load(fresh: tuple[Path, Stub]) -> None:
    _, stub = fresh
    _assert_serves(stub)
    stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=SEED_MODEL))

    assert stub.ModelReady(pb.ModelReadyRequest(name=SEED_MODEL)).ready is False
    code, details = rpc_error(stub.ModelInfer, price_request(1800.0))
    assert code is grpc.StatusCode.UNAVAILABLE
    assert f"'{SEED_MODEL}'" in details
    assert "unloaded" in details
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest())
    assert [(m.name, m.state, m.reason) for m in index.models] == [
        (SEED_MODEL, "UNAVAILABLE", "unloaded")
    ]
    assert not stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True)).models

    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=SEED_MODEL))
    assert stub.ModelReady(pb.ModelReadyRequest(name=SEED_MODEL)).ready is True
    _assert_serves(stub)


def test_load_and_unload_of_unknown_models(fresh: tuple[Path, Stub]) -> None:
    _, stub = fresh
    code, details = rpc_error(
        stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="nope")
    )
    assert code is grpc.StatusCode.NOT_FOUND
    assert "'nope'" in details
    code, details = rpc_error(
        stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name="nope")
    )
    assert code is grpc.StatusCode.NOT_FOUND
    assert "'nope'" in details
    code, details = rpc_error(
        stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="../etc")
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid model name '../etc'" in details
    _assert_serves(stub)


def test_loading_a_new_version_serves_the_latest(fresh: tuple[Path, Stub]) -> None:
    repository, stub = fresh
    version = train_slope(repository, SEED_MODEL, 0.25)
    assert version == 2
    _assert_serves(stub, "1", 360.0)  # written is not loaded

    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=SEED_MODEL))
    _assert_serves(stub, "2", 450.0)
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name=SEED_MODEL))
    assert list(metadata.versions) == ["2"]
    assert stub.ModelReady(pb.ModelReadyRequest(name=SEED_MODEL, version="1")).ready is False
    assert stub.ModelReady(pb.ModelReadyRequest(name=SEED_MODEL, version="2")).ready is True
    assert prices(stub.ModelInfer(price_request(1800.0, version="2"))) == OK([450.0], abs=1e-3)
    code, details = rpc_error(stub.ModelInfer, price_request(1800.0, version="1"))
    assert code is grpc.StatusCode.NOT_FOUND
    assert "version 1" in details
    assert "serving: 2" in details


# ---- bad requests: each names what is wrong, and the service goes on ----


def _with_shape(shape: list[int]) -> pb.ModelInferRequest:
    request = price_request(*[1800.0] * int(np.prod(shape)))
    request.inputs[0].shape[:] = shape
    return request


def _raw_length_mismatch() -> pb.ModelInferRequest:
    request = price_request(1800.0)
    request.raw_input_contents[0] = b"\x00" * 3
    return request


def _wrong_datatype() -> pb.ModelInferRequest:
    request = price_request(1800.0)
    request.inputs[0].datatype = "FP64"
    request.raw_input_contents[0] = np.float64([1800.0]).tobytes()
    return request


def _typed_and_raw() -> pb.ModelInferRequest:
    request = price_request(1800.0)
    request.inputs[0].contents.fp32_contents.append(1800.0)
    return request


def _unknown_input() -> pb.ModelInferRequest:
    request = price_request(1800.0)
    request.inputs[0].name = "size"
    return request


def _unknown_output() -> pb.ModelInferRequest:
    request = price_request(1800.0)
    request.outputs.add(name="price")
    return request


def _no_inputs() -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name=SEED_MODEL)


def _with_datatype(datatype: str) -> pb.ModelInferRequest:
    request = price_request(1800.0)
    request.inputs[0].datatype = datatype
    return request


NOT_FOUND = grpc.StatusCode.NOT_FOUND
INVALID = grpc.StatusCode.INVALID_ARGUMENT

BAD_REQUESTS = [
    pytest.param(
        lambda: price_request(1800.0, model="nope"),
        NOT_FOUND,
        ["unknown model 'nope'"],
        id="unknown-model",
    ),
    pytest.param(
        lambda: price_request(1800.0, version="7"),
        NOT_FOUND,
        ["version 7", "serving: 1"],
        id="unknown-version",
    ),
    pytest.param(
        lambda: price_request(1800.0, version="latest"),
        NOT_FOUND,
        ["'latest'", "positive integers"],
        id="non-numeric-version",
    ),
    pytest.param(
        lambda: price_request(1800.0, version="\u00b2"),  # str.isdigit() says yes
        NOT_FOUND,
        ["positive integers"],
        id="superscript-version",
    ),
    pytest.param(
        _wrong_datatype, INVALID, ["'size_sqft'", "must be FP32, got FP64"], id="wrong-datatype"
    ),
    pytest.param(
        lambda: _with_datatype("FP8"), INVALID, ["unknown datatype 'FP8'"], id="unknown-datatype"
    ),
    pytest.param(
        lambda: _with_shape([1, 2]),
        INVALID,
        ["'size_sqft'", "shape [1, 2]", "[-1, 1]"],
        id="wrong-shape-2d",
    ),
    pytest.param(
        lambda: _with_shape([1]),
        INVALID,
        ["'size_sqft'", "shape [1]", "[-1, 1]"],
        id="wrong-shape-1d",
    ),
    pytest.param(
        _raw_length_mismatch,
        INVALID,
        ["'size_sqft'", "3 bytes", "needs 4"],
        id="raw-length-mismatch",
    ),
    pytest.param(
        _typed_and_raw, INVALID, ["'size_sqft'", "raw_input_contents"], id="typed-and-raw"
    ),
    pytest.param(
        _no_inputs, INVALID, ["no inputs", "size_sqft (FP32 [-1, 1])"], id="missing-input"
    ),
    pytest.param(_unknown_input, INVALID, ["no input 'size'", "size_sqft"], id="unknown-input"),
    pytest.param(_unknown_output, INVALID, ["no output 'price'", "price_k"], id="unknown-output"),
    pytest.param(pb.ModelInferRequest, INVALID, ["model name is empty"], id="empty-request"),
    pytest.param(
        lambda: price_request(1800.0, parameters={"binary_data_output": "no"}),
        INVALID,
        ["'binary_data_output'", "bool"],
        id="binary-flag-not-bool",
    ),
]


@pytest.mark.parametrize(("make", "code", "fragments"), BAD_REQUESTS)
def test_bad_request_is_refused_and_service_goes_on(
    stub: Stub,
    make: Callable[[], pb.ModelInferRequest],
    code: grpc.StatusCode,
    fragments: list[str],
) -> None:
    got, details = rpc_error(stub.ModelInfer, make())
    assert got is code, details
    for fragment in fragments:
        assert fragment in details
    assert "internal error" not in details
    _assert_serves(stub)


# ---- graceful shutdown ----


class _Gate(threading.Event):
    """Holds predict calls until set; `entered` tells that a call is being held."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.entered.set()
        return super().wait(timeout)


GRACE_S = 90.0


def test_graceful_shutdown_finishes_in_flight_calls(
    aio, seeded_repository: Callable[[], Path]
) -> None:
    gate = _Gate()
    gate.set()  # open while the service loads and warms the model up
    # inline_max_us=0: the gate blocks the calling thread, which must not be the event loop.
    service = aio.start_service(seeded_repository(), AffineBackend(gate=gate), inline_max_us=0)
    gate.clear()
    gate.entered.clear()
    address = f"127.0.0.1:{service.port}"
    stopping = None
    try:
        with grpc.insecure_channel(address) as channel:
            stub = Stub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            serving = health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
            assert serving.status == health_pb2.HealthCheckResponse.SERVING

            in_flight = stub.ModelInfer.future(price_request(1800.0, id="held"), timeout=10)
            assert gate.entered.wait(5), "the call never reached the model"
            # A grace far beyond the wait below: a stop that ran it out could not pass.
            stopping = aio.submit(service.stop(grace=GRACE_S))

            def refused() -> bool:
                try:
                    stub.ServerLive(pb.ServerLiveRequest(), timeout=1)
                except grpc.RpcError:
                    return True
                return False

            assert eventually(refused, timeout=3), "the draining server still takes calls"
            with grpc.insecure_channel(address) as other:
                code, _ = rpc_error(Stub(other).ModelInfer, price_request(1800.0), timeout=2)
            assert code is grpc.StatusCode.UNAVAILABLE
            assert not in_flight.done()
            assert not stopping.done()

            gate.set()
            response = in_flight.result(timeout=5)
            assert response.id == "held"
            assert prices(response) == OK([360.0], abs=1e-3)
            # Done when the held call was, not when the grace period ran out.
            stopping.result(timeout=GRACE_S / 3)
    finally:
        gate.set()
        if stopping is None:
            aio.run(service.stop(grace=0))

    with grpc.insecure_channel(address) as channel:
        code, _ = rpc_error(Stub(channel).ServerLive, pb.ServerLiveRequest(), timeout=2)
    assert code is grpc.StatusCode.UNAVAILABLE
