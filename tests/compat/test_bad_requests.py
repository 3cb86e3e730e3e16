"""Bad requests get Triton's status codes and a useful message, directly and through the
gateway (which passes the upstream's code and message through unchanged), and the server
keeps answering good requests afterwards.

Cases that tritonclient can produce go through tritonclient; the rest are raw messages built
with tritonclient's generated protobuf code.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from .endpoints import Endpoint, Stack, raw_infer
from .house_price import INPUT, MODEL, OUTPUT, raw_request, triton_input, typed_request

pytestmark = pytest.mark.framework

Client = grpcclient.InferenceServerClient


@dataclass(frozen=True)
class BadCase:
    id: str
    send: Callable[[Endpoint], object]  # raises InferenceServerException or grpc.RpcError
    code: str  # grpc.StatusCode name
    says: str  # a fragment the message must contain


def _with_client(
    call: Callable[[Client, dict[str, str] | None], object],
) -> Callable[[Endpoint], object]:
    def send(endpoint: Endpoint) -> object:
        with grpcclient.InferenceServerClient(endpoint.address) as client:
            return call(client, endpoint.headers)

    return send


def _raw(build: Callable[[], service_pb2.ModelInferRequest]) -> Callable[[Endpoint], object]:
    return lambda endpoint: raw_infer(endpoint, build())


def _fp64_input() -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(INPUT, [1, 1], "FP64")
    return tensor.set_data_from_numpy(np.array([[1800.0]], np.float64))


def _wide_input() -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(INPUT, [1, 2], "FP32")
    return tensor.set_data_from_numpy(np.array([[1800.0, 3.0]], np.float32))


def _short_input() -> grpcclient.InferInput:
    """Data for shape [2, 1], then the shape changed to [3, 1]: 8 bytes where 12 are due."""
    return triton_input([1800.0, 900.0]).set_shape([3, 1])


def _renamed_input() -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("rooms", [1, 1], "FP32")
    return tensor.set_data_from_numpy(np.array([[3.0]], np.float32))


def _shared_memory_input() -> grpcclient.InferInput:
    return grpcclient.InferInput(INPUT, [1, 1], "FP32").set_shared_memory("region", 4)


def _shared_memory_output() -> grpcclient.InferRequestedOutput:
    output = grpcclient.InferRequestedOutput(OUTPUT)
    output.set_shared_memory("region", 4)
    return output


def _typed_and_raw() -> service_pb2.ModelInferRequest:
    request = raw_request([1800.0])
    request.inputs[0].contents.fp32_contents.append(1800.0)
    return request


def _typed_count_mismatch() -> service_pb2.ModelInferRequest:
    request = typed_request([1800.0, 900.0])
    request.inputs[0].contents.fp32_contents.append(1.0)
    return request


def _extra_raw_entry() -> service_pb2.ModelInferRequest:
    request = raw_request([1800.0])
    request.raw_input_contents.append(b"\0\0\0\0")
    return request


def _unknown_datatype() -> service_pb2.ModelInferRequest:
    request = raw_request([1800.0])
    request.inputs[0].datatype = "FLOAT"
    return request


def _negative_dim() -> service_pb2.ModelInferRequest:
    request = raw_request([1800.0])
    request.inputs[0].shape[0] = -1
    return request


def _empty_request() -> service_pb2.ModelInferRequest:
    return service_pb2.ModelInferRequest()


CASES = [
    BadCase(
        "unknown-model",
        _with_client(lambda c, h: c.infer("no_such_model", [triton_input([1.0])], headers=h)),
        "NOT_FOUND",
        "no_such_model",
    ),
    BadCase(
        "unknown-version",
        _with_client(
            lambda c, h: c.infer(MODEL, [triton_input([1.0])], model_version="7", headers=h)
        ),
        "NOT_FOUND",
        "version 7",
    ),
    BadCase(
        "metadata-of-unknown-model",
        _with_client(lambda c, h: c.get_model_metadata("no_such_model", headers=h)),
        "NOT_FOUND",
        "no_such_model",
    ),
    BadCase(
        "config-of-unknown-model",
        _with_client(lambda c, h: c.get_model_config("no_such_model", headers=h)),
        "NOT_FOUND",
        "no_such_model",
    ),
    BadCase(
        "fp64-input",
        _with_client(lambda c, h: c.infer(MODEL, [_fp64_input()], headers=h)),
        "INVALID_ARGUMENT",
        "FP64",
    ),
    BadCase(
        "shape-1x2",
        _with_client(lambda c, h: c.infer(MODEL, [_wide_input()], headers=h)),
        "INVALID_ARGUMENT",
        "[1, 2]",
    ),
    BadCase(
        "raw-length-mismatch",
        _with_client(lambda c, h: c.infer(MODEL, [_short_input()], headers=h)),
        "INVALID_ARGUMENT",
        "8 bytes",
    ),
    BadCase(
        "no-inputs",
        _with_client(lambda c, h: c.infer(MODEL, [], headers=h)),
        "INVALID_ARGUMENT",
        INPUT,
    ),
    BadCase(
        "unknown-input",
        _with_client(lambda c, h: c.infer(MODEL, [_renamed_input()], headers=h)),
        "INVALID_ARGUMENT",
        "rooms",
    ),
    BadCase(
        "unknown-output",
        _with_client(
            lambda c, h: c.infer(
                MODEL,
                [triton_input([1.0])],
                outputs=[grpcclient.InferRequestedOutput("no_such_output")],
                headers=h,
            )
        ),
        "INVALID_ARGUMENT",
        "no_such_output",
    ),
    BadCase(
        "statistics-of-unknown-model",
        _with_client(lambda c, h: c.get_inference_statistics("no_such_model", headers=h)),
        "NOT_FOUND",
        "no_such_model",
    ),
    BadCase(
        "load-unknown-model",
        _with_client(lambda c, h: c.load_model("no_such_model", headers=h)),
        "NOT_FOUND",
        "no_such_model",
    ),
    # Triton features this server does not implement are refused, not silently ignored.
    BadCase(
        "load-with-config",
        _with_client(lambda c, h: c.load_model(MODEL, headers=h, config='{"max_batch_size": 8}')),
        "UNIMPLEMENTED",
        "config",
    ),
    BadCase(
        "classification-output",
        _with_client(
            lambda c, h: c.infer(
                MODEL,
                [triton_input([1.0])],
                outputs=[grpcclient.InferRequestedOutput(OUTPUT, class_count=1)],
                headers=h,
            )
        ),
        "UNIMPLEMENTED",
        "classification",
    ),
    BadCase(
        "shared-memory-input",
        _with_client(lambda c, h: c.infer(MODEL, [_shared_memory_input()], headers=h)),
        "UNIMPLEMENTED",
        "shared memory",
    ),
    BadCase(
        "shared-memory-output",
        _with_client(
            lambda c, h: c.infer(
                MODEL, [triton_input([1.0])], outputs=[_shared_memory_output()], headers=h
            )
        ),
        "UNIMPLEMENTED",
        "shared memory",
    ),
    BadCase("typed-and-raw", _raw(_typed_and_raw), "INVALID_ARGUMENT", "raw_input_contents"),
    BadCase("typed-count", _raw(_typed_count_mismatch), "INVALID_ARGUMENT", "hold 3"),
    BadCase("extra-raw-entry", _raw(_extra_raw_entry), "INVALID_ARGUMENT", "raw_input_contents"),
    BadCase("unknown-datatype", _raw(_unknown_datatype), "INVALID_ARGUMENT", "FLOAT"),
    BadCase("negative-dimension", _raw(_negative_dim), "INVALID_ARGUMENT", "negative"),
    BadCase("empty-request", _raw(_empty_request), "INVALID_ARGUMENT", "no model"),
]


def _error_of(case: BadCase, endpoint: Endpoint) -> tuple[str, str]:
    """(status code name, message) of the call `case` makes, which must fail."""
    try:
        case.send(endpoint)
    except InferenceServerException as exc:
        return str(exc.status()).removeprefix("StatusCode."), str(exc.message())
    except grpc.RpcError as exc:
        return exc.code().name, exc.details() or ""  # type: ignore[attr-defined]
    pytest.fail(f"{case.id} succeeded at {endpoint.id}")


def _assert_still_serves(endpoint: Endpoint) -> None:
    with grpcclient.InferenceServerClient(endpoint.address) as client:
        result = client.infer(MODEL, [triton_input([1800.0])], headers=endpoint.headers)
    assert result.as_numpy(OUTPUT)[0, 0] == pytest.approx(360.0, abs=1.0)
    assert result.get_response().parameters["framework"].string_param == endpoint.framework


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_request(case: BadCase, endpoint: Endpoint) -> None:
    code, message = _error_of(case, endpoint)
    assert code == case.code, message
    assert case.says in message
    _assert_still_serves(endpoint)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
@pytest.mark.parametrize("direct", ["tensorflow", "pytorch"])
def test_gateway_passes_errors_through(case: BadCase, direct: str, stack: Stack) -> None:
    via_gateway = {"tensorflow": "gateway-tf", "pytorch": "gateway-torch"}[direct]
    assert _error_of(case, stack.endpoint(via_gateway)) == _error_of(case, stack.endpoint(direct))


def test_tritonclient_reports_the_status(endpoint: Endpoint) -> None:
    """What a tritonclient user sees: status() as 'StatusCode.X' and the server's message."""
    with (
        grpcclient.InferenceServerClient(endpoint.address) as client,
        pytest.raises(InferenceServerException) as caught,
    ):
        client.infer("no_such_model", [triton_input([1.0])], headers=endpoint.headers)
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    assert "unknown model 'no_such_model'" in caught.value.message()
    assert "no_such_model" in str(caught.value)


def test_bad_request_in_a_stream_does_not_end_it(client: Client, endpoint: Endpoint) -> None:
    """As in Triton: the bad request is answered with an error, the stream goes on."""
    answers: queue.Queue[tuple[grpcclient.InferResult | None, InferenceServerException | None]]
    answers = queue.Queue()
    client.start_stream(
        callback=lambda result, error: answers.put((result, error)), headers=endpoint.headers
    )
    try:
        client.async_stream_infer(MODEL, [triton_input([1800.0])], request_id="before")
        client.async_stream_infer("no_such_model", [triton_input([1.0])], request_id="bad")
        client.async_stream_infer(MODEL, [_fp64_input()], request_id="fp64")
        client.async_stream_infer(MODEL, [triton_input([1800.0])], request_id="after")
        received = [answers.get(timeout=10) for _ in range(4)]
    finally:
        client.stop_stream()
    (first, no_error), (none, unknown), (_, fp64), (last, no_error_2) = received
    assert no_error is None
    assert no_error_2 is None
    assert none is None
    assert unknown is not None
    assert "no_such_model" in unknown.message()
    assert fp64 is not None
    assert "FP64" in fp64.message()
    assert first is not None
    assert last is not None
    assert [first.get_response().id, last.get_response().id] == ["before", "after"]
    assert last.as_numpy(OUTPUT)[0, 0] == pytest.approx(360.0, abs=1.0)
