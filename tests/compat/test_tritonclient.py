"""Unmodified `tritonclient.grpc.InferenceServerClient` against each framework service and the
gateway: health, metadata, configuration, repository, statistics, inference and streaming."""

from __future__ import annotations

import queue

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from .endpoints import Endpoint, raw_infer
from .house_price import (
    INPUT,
    MODEL,
    OUTPUT,
    TOLERANCE,
    expected_prices,
    raw_request,
    triton_input,
    typed_request,
)

pytestmark = pytest.mark.framework

Client = grpcclient.InferenceServerClient

BATCH = [650.0, 1200.0, 1800.0, 3400.0]


def _framework_of(result: grpcclient.InferResult) -> str:
    framework: str = result.get_response().parameters["framework"].string_param
    return framework


def _server_name(endpoint: Endpoint) -> str:
    return "twinserve-gateway" if endpoint.via_gateway else f"twinserve-{endpoint.framework}"


# ---- health ----


def test_server_is_live_and_ready(client: Client, endpoint: Endpoint) -> None:
    assert client.is_server_live(headers=endpoint.headers)
    assert client.is_server_ready(headers=endpoint.headers)


def test_model_readiness(client: Client, endpoint: Endpoint) -> None:
    assert client.is_model_ready(MODEL, headers=endpoint.headers)
    assert client.is_model_ready(MODEL, "1", headers=endpoint.headers)
    assert not client.is_model_ready(MODEL, "7", headers=endpoint.headers)
    assert not client.is_model_ready("no_such_model", headers=endpoint.headers)


# ---- metadata, configuration, repository ----


def test_server_metadata(client: Client, endpoint: Endpoint) -> None:
    metadata = client.get_server_metadata(headers=endpoint.headers)
    assert metadata.name == _server_name(endpoint)
    assert metadata.version
    assert {"binary_tensor_data", "model_repository", "statistics"} <= set(metadata.extensions)

    as_json = client.get_server_metadata(headers=endpoint.headers, as_json=True)
    assert as_json["name"] == metadata.name
    assert as_json["extensions"] == list(metadata.extensions)


def test_model_metadata(client: Client, endpoint: Endpoint) -> None:
    metadata = client.get_model_metadata(MODEL, headers=endpoint.headers)
    assert metadata.name == MODEL
    assert "1" in metadata.versions
    # The gateway routes metadata calls too: the platform tells which service answered.
    assert metadata.platform.startswith(endpoint.framework)
    [tensor_in] = metadata.inputs
    assert (tensor_in.name, tensor_in.datatype, list(tensor_in.shape)) == (INPUT, "FP32", [-1, 1])
    [tensor_out] = metadata.outputs
    assert (tensor_out.name, tensor_out.datatype, list(tensor_out.shape)) == (
        OUTPUT,
        "FP32",
        [-1, 1],
    )

    as_json = client.get_model_metadata(MODEL, "1", headers=endpoint.headers, as_json=True)
    assert as_json["name"] == MODEL
    # MessageToJson writes int64 values as strings.
    assert [
        (t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in as_json["inputs"]
    ] == [(INPUT, "FP32", [-1, 1])]
    assert [t["name"] for t in as_json["outputs"]] == [OUTPUT]


def test_model_config(client: Client, endpoint: Endpoint) -> None:
    config = client.get_model_config(MODEL, headers=endpoint.headers).config
    assert config.name == MODEL
    assert config.parameters["framework"].string_value == endpoint.framework
    [tensor_in] = config.input
    assert (tensor_in.name, tensor_in.data_type, list(tensor_in.dims)) == (
        INPUT,
        model_config_pb2.TYPE_FP32,
        [-1, 1],
    )
    [tensor_out] = config.output
    assert (tensor_out.name, tensor_out.data_type) == (OUTPUT, model_config_pb2.TYPE_FP32)

    as_json = client.get_model_config(MODEL, headers=endpoint.headers, as_json=True)["config"]
    assert as_json["name"] == MODEL
    assert as_json["input"][0]["data_type"] == "TYPE_FP32"
    assert [int(d) for d in as_json["input"][0]["dims"]] == [-1, 1]


def test_model_repository_index(client: Client, endpoint: Endpoint) -> None:
    index = client.get_model_repository_index(headers=endpoint.headers)
    assert (MODEL, "1", "READY") in {(m.name, m.version, m.state) for m in index.models}
    as_json = client.get_model_repository_index(headers=endpoint.headers, as_json=True)
    assert MODEL in {m["name"] for m in as_json["models"]}


def test_load_model_reloads_in_place(client: Client, endpoint: Endpoint) -> None:
    client.load_model(MODEL, headers=endpoint.headers)
    assert client.is_model_ready(MODEL, headers=endpoint.headers)
    result = client.infer(MODEL, [triton_input([1800.0])], headers=endpoint.headers)
    assert result.as_numpy(OUTPUT)[0, 0] == pytest.approx(360.0, abs=1.0)


def test_inference_statistics(client: Client, endpoint: Endpoint) -> None:
    client.infer(MODEL, [triton_input([1800.0])], headers=endpoint.headers)
    stats = client.get_inference_statistics(MODEL, headers=endpoint.headers)
    [model_stats] = stats.model_stats
    assert (model_stats.name, model_stats.version) == (MODEL, "1")
    assert model_stats.inference_count >= 1
    assert model_stats.inference_stats.success.count >= 1
    assert model_stats.inference_stats.success.ns > 0

    everything = client.get_inference_statistics(headers=endpoint.headers, as_json=True)
    assert MODEL in {m["name"] for m in everything["model_stats"]}


# ---- inference ----


@pytest.mark.parametrize("sizes", [[1800.0], BATCH], ids=["one", "batch-of-4"])
def test_infer(client: Client, endpoint: Endpoint, sizes: list[float]) -> None:
    result = client.infer(MODEL, [triton_input(sizes)], headers=endpoint.headers)
    prices = result.as_numpy(OUTPUT)
    assert prices.dtype == np.float32
    assert prices.shape == (len(sizes), 1)
    np.testing.assert_allclose(prices, expected_prices(sizes), atol=TOLERANCE)
    assert _framework_of(result) == endpoint.framework


def test_infer_1800_sqft_costs_360k(client: Client, endpoint: Endpoint) -> None:
    result = client.infer(MODEL, [triton_input([1800.0])], headers=endpoint.headers)
    assert result.as_numpy(OUTPUT)[0, 0] == pytest.approx(360.0, abs=1.0)


def test_infer_with_requested_output_id_and_version(client: Client, endpoint: Endpoint) -> None:
    result = client.infer(
        MODEL,
        [triton_input(BATCH)],
        model_version="1",
        outputs=[grpcclient.InferRequestedOutput(OUTPUT)],
        request_id=f"compat-{endpoint.id}",
        headers=endpoint.headers,
        client_timeout=10.0,
    )
    response = result.get_response()
    assert response.id == f"compat-{endpoint.id}"
    assert (response.model_name, response.model_version) == (MODEL, "1")
    assert [o.name for o in response.outputs] == [OUTPUT]
    assert response.parameters["framework"].string_param == endpoint.framework
    np.testing.assert_allclose(result.as_numpy(OUTPUT), expected_prices(BATCH), atol=TOLERANCE)
    assert result.get_output(OUTPUT).datatype == "FP32"
    assert result.get_response(as_json=True)["id"] == f"compat-{endpoint.id}"


def test_infer_with_triton_request_options(client: Client, endpoint: Endpoint) -> None:
    """priority (a uint64 parameter), timeout and gzip compression are accepted."""
    result = client.infer(
        MODEL,
        [triton_input([1800.0])],
        priority=1,
        timeout=1_000_000,
        headers=endpoint.headers,
        compression_algorithm="gzip",
    )
    assert result.as_numpy(OUTPUT)[0, 0] == pytest.approx(360.0, abs=1.0)


def test_async_infer(client: Client, endpoint: Endpoint) -> None:
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    client.async_infer(
        MODEL,
        [triton_input([1800.0])],
        callback=lambda result, error: answers.put((result, error)),
        request_id="async-1",
        headers=endpoint.headers,
    )
    result, error = answers.get(timeout=10)
    assert error is None
    assert isinstance(result, grpcclient.InferResult)
    assert result.get_response().id == "async-1"
    assert result.as_numpy(OUTPUT)[0, 0] == pytest.approx(360.0, abs=1.0)


def test_typed_input_contents(endpoint: Endpoint) -> None:
    """tritonclient's gRPC InferInput always sends raw bytes; typed `fp32_contents` (what
    other Open Inference Protocol clients send) are read too, and answered raw."""
    response = raw_infer(endpoint, typed_request(BATCH, id="typed-in"))
    assert response.id == "typed-in"
    assert len(response.raw_output_contents) == 1
    # tritonclient's own result reader decodes the answer.
    prices = grpcclient.InferResult(response).as_numpy(OUTPUT)
    np.testing.assert_allclose(prices, expected_prices(BATCH), atol=TOLERANCE)


def test_typed_output_contents(endpoint: Endpoint) -> None:
    """`binary_data_output=false` (a parameter tritonclient reserves, so sent raw here) asks
    for typed outputs."""
    request = raw_request(BATCH)
    request.parameters["binary_data_output"].bool_param = False
    response = raw_infer(endpoint, request)
    assert not response.raw_output_contents
    [output] = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == (OUTPUT, "FP32", [4, 1])
    prices = np.asarray(output.contents.fp32_contents, np.float32).reshape(4, 1)
    np.testing.assert_allclose(prices, expected_prices(BATCH), atol=TOLERANCE)


def test_typed_output_per_requested_output(endpoint: Endpoint) -> None:
    request = typed_request([1800.0])
    request.outputs.add(name=OUTPUT).parameters["binary_data"].bool_param = False
    response = raw_infer(endpoint, request)
    assert not response.raw_output_contents
    assert response.outputs[0].contents.fp32_contents[0] == pytest.approx(360.0, abs=1.0)


# ---- streaming ----


def test_stream_infer(client: Client, endpoint: Endpoint) -> None:
    answers: queue.Queue[tuple[grpcclient.InferResult | None, InferenceServerException | None]]
    answers = queue.Queue()
    sizes = {f"stream-{i}": [500.0 * (i + 1)] * (i + 1) for i in range(5)}
    client.start_stream(
        callback=lambda result, error: answers.put((result, error)), headers=endpoint.headers
    )
    try:
        for request_id, batch in sizes.items():
            client.async_stream_infer(MODEL, [triton_input(batch)], request_id=request_id)
        received = [answers.get(timeout=10) for _ in sizes]
    finally:
        client.stop_stream()
    assert [error for _, error in received] == [None] * len(sizes)
    results = {result.get_response().id: result for result, _ in received if result is not None}
    assert set(results) == set(sizes)
    for request_id, result in results.items():
        np.testing.assert_allclose(
            result.as_numpy(OUTPUT), expected_prices(sizes[request_id]), atol=TOLERANCE
        )
        assert _framework_of(result) == endpoint.framework


# ---- the gateway's choice of framework ----


def test_gateway_serves_default_framework_without_a_choice(gateway_client: Client) -> None:
    result = gateway_client.infer(MODEL, [triton_input([1800.0])])
    assert _framework_of(result) == "tensorflow"
    assert result.as_numpy(OUTPUT)[0, 0] == pytest.approx(360.0, abs=1.0)


@pytest.mark.parametrize("framework", ["tensorflow", "pytorch"])
def test_gateway_routes_by_request_parameter(gateway_client: Client, framework: str) -> None:
    result = gateway_client.infer(
        MODEL, [triton_input([1800.0])], parameters={"framework": framework}
    )
    assert _framework_of(result) == framework
    assert result.as_numpy(OUTPUT)[0, 0] == pytest.approx(360.0, abs=1.0)


@pytest.mark.parametrize("framework", ["tensorflow", "pytorch"])
def test_gateway_routes_by_metadata(gateway_client: Client, framework: str) -> None:
    result = gateway_client.infer(
        MODEL, [triton_input([1800.0])], headers={"x-framework": framework}
    )
    assert _framework_of(result) == framework


def test_gateway_routes_a_stream_by_request_parameter(gateway_client: Client) -> None:
    answers: queue.Queue[tuple[grpcclient.InferResult | None, object]] = queue.Queue()
    gateway_client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for framework in ("pytorch", "tensorflow", "pytorch"):
            gateway_client.async_stream_infer(
                MODEL,
                [triton_input([1800.0])],
                request_id=framework,
                parameters={"framework": framework},
            )
        received = [answers.get(timeout=10) for _ in range(3)]
    finally:
        gateway_client.stop_stream()
    for result, error in received:
        assert error is None
        assert result is not None
        assert _framework_of(result) == result.get_response().id


def test_gateway_repository_index_names_each_models_frameworks(gateway_client: Client) -> None:
    # One entry per (model, version, framework), the framework at the start of the reason.
    index = gateway_client.get_model_repository_index()
    serving = {
        m.reason.split("; ")[0] for m in index.models if (m.name, m.state) == (MODEL, "READY")
    }
    assert serving == {"framework=tensorflow", "framework=pytorch", "framework=onnx"}
    as_json = gateway_client.get_model_repository_index(as_json=True)
    assert {m["reason"] for m in as_json["models"] if m["name"] == MODEL} >= serving


def test_gateway_rejects_conflicting_choices(gateway_client: Client) -> None:
    with pytest.raises(InferenceServerException) as caught:
        gateway_client.infer(
            MODEL,
            [triton_input([1800.0])],
            headers={"x-framework": "tensorflow"},
            parameters={"framework": "pytorch"},
        )
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "x-framework" in caught.value.message()


def test_gateway_rejects_unknown_framework(gateway_client: Client) -> None:
    with pytest.raises(InferenceServerException) as caught:
        gateway_client.infer(MODEL, [triton_input([1800.0])], parameters={"framework": "jax"})
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "jax" in caught.value.message()
