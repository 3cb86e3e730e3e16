"""A user's Triton model repository (tests/framework/user_repository.py: models twinserve's
training did not write) served by the TensorFlow, PyTorch and ONNX services at once, through
the gateway: each model answers exactly what its framework computes in process, for raw and
typed contents, alone and batched; auto-completed configurations are reported as Triton
reports them; every refused configuration fails its own load with its reason while the other
models serve."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from onnx_service.backend import OnnxBackend
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.protocol.codec import decode_tensor, encode_tensor, param_to_pb
from serving.protocol.names import BINARY_OUTPUT_PARAM, FRAMEWORK_PARAM
from tests.framework.user_repository import BAD, GOOD, UserRepository, build
from tests.integration.conftest import AioThread
from tests.integration.oip import rpc_error
from tf_service.backend import TFBackend
from torch_service.backend import TorchBackend

pytestmark = pytest.mark.framework

Stub = pb_grpc.GRPCInferenceServiceStub
Code = grpc.StatusCode
Arrays = dict[str, np.ndarray]
_TYPED = {"FP32": "fp32_contents", "INT32": "int_contents", "BYTES": "bytes_contents"}


@dataclass
class Stack:
    repository: UserRepository
    gateway: Stub
    direct: dict[str, Stub]


@pytest.fixture(scope="module")
def stack(aio: AioThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    repository = build(tmp_path_factory.mktemp("user-models"))
    backends = {"tensorflow": TFBackend(), "pytorch": TorchBackend(), "onnx": OnnxBackend()}
    with ExitStack() as stack:
        addresses, direct = {}, {}
        for name, backend in backends.items():
            service = stack.enter_context(
                aio.service(repository.root, backend, trains=False, repository_poll_s=0)
            )
            addresses[name] = f"127.0.0.1:{service.port}"
            channel = stack.enter_context(grpc.insecure_channel(addresses[name]))
            direct[name] = Stub(channel)
        gateway = stack.enter_context(aio.gateway(frameworks=addresses))
        channel = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{gateway.port}"))
        yield Stack(repository, Stub(channel), direct)


def _inputs(model: str, rows: int) -> Arrays:
    rng = np.random.default_rng(rows)
    if model in ("keras_pair", "torch_pair"):
        return {
            "ids": rng.integers(0, 10, (rows, 4), dtype=np.int64),
            "features": rng.normal(size=(rows, 3)).astype(np.float32),
        }
    if model == "onnx_auto":
        return {
            "x": rng.normal(size=(rows, 3)).astype(np.float32),
            "n": rng.integers(-5, 5, (rows, 1), dtype=np.int64),
        }
    words = [b"", b"twin", "s\u00e9rve".encode(), b"\x00binary\xff", b"MiXeD case"]
    return {"text": np.array([words[i % len(words)] for i in range(rows)], dtype=object)}


_DATATYPE = {np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32"}


def _request(
    model: str, arrays: Arrays, *, typed: bool, outputs: tuple[str, ...] = ()
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    for name, array in arrays.items():
        datatype = "BYTES" if array.dtype == object else _DATATYPE[array.dtype]
        tensor = request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        scratch = pb.ModelInferResponse.InferOutputTensor()
        raw = encode_tensor(scratch, array, datatype, binary=not typed)
        if typed:
            tensor.contents.CopyFrom(scratch.contents)
        else:
            assert raw is not None
            request.raw_input_contents.append(raw)
    if typed:
        param_to_pb(False, request.parameters[BINARY_OUTPUT_PARAM])
    for name in outputs:
        request.outputs.add(name=name)
    return request


def _outputs(response: pb.ModelInferResponse) -> Arrays:
    if response.raw_output_contents:
        return {
            out.name: decode_tensor(out.name, out.datatype, out.shape, raw)
            for out, raw in zip(response.outputs, response.raw_output_contents, strict=True)
        }
    decoded = {}
    for out in response.outputs:
        values = list(getattr(out.contents, _TYPED[out.datatype]))
        dtype = object if out.datatype == "BYTES" else None
        decoded[out.name] = np.array(values, dtype=dtype).reshape(tuple(out.shape))
    return decoded


def _assert_same(answer: Arrays, expected: Arrays) -> None:
    assert sorted(answer) == sorted(expected)
    for name, want in expected.items():
        got = answer[name]
        assert got.shape == want.shape, name
        if want.dtype.kind in "fc":
            # The same graph on the same inputs; only float reorderings may differ.
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=name)
        else:
            assert got.tolist() == want.tolist(), name


@pytest.mark.parametrize("typed", [False, True], ids=["raw", "typed"])
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("model", list(GOOD))
def test_each_model_answers_what_its_framework_computes(
    stack: Stack, model: str, rows: int, typed: bool
) -> None:
    arrays = _inputs(model, rows)
    response = stack.gateway.ModelInfer(_request(model, arrays, typed=typed), timeout=30)
    assert response.parameters[FRAMEWORK_PARAM].string_param == GOOD[model][0]
    assert bool(response.raw_output_contents) is not typed
    _assert_same(_outputs(response), stack.repository.compute[model](arrays))


@pytest.mark.parametrize("framework", GOOD["onnx_auto"])
def test_an_onnx_model_answers_the_same_on_every_service(stack: Stack, framework: str) -> None:
    arrays = _inputs("onnx_auto", 4)
    request = _request("onnx_auto", arrays, typed=False)
    request.parameters[FRAMEWORK_PARAM].string_param = framework
    response = stack.gateway.ModelInfer(request, timeout=30)
    assert response.parameters[FRAMEWORK_PARAM].string_param == framework
    _assert_same(_outputs(response), stack.repository.compute["onnx_auto"](arrays))


@pytest.mark.parametrize("model", ["keras_pair", "onnx_auto", "tf_text"])
def test_concurrent_requests_to_a_batched_model_each_get_their_own_rows(
    stack: Stack, model: str
) -> None:
    requests = [_inputs(model, 1 + i % 3) for i in range(24)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda arrays: stack.gateway.ModelInfer(
                    _request(model, arrays, typed=False), timeout=30
                ),
                requests,
            )
        )
    for arrays, response in zip(requests, answers, strict=True):
        _assert_same(_outputs(response), stack.repository.compute[model](arrays))
    stats = stack.direct[GOOD[model][0]].ModelStatistics(
        pb.ModelStatisticsRequest(name=model), timeout=10
    )
    rows = sum(len(next(iter(arrays.values()))) for arrays in requests)
    assert stats.model_stats[0].inference_count >= rows


def test_requested_outputs_are_the_only_ones_answered(stack: Stack) -> None:
    arrays = _inputs("keras_pair", 2)
    response = stack.gateway.ModelInfer(
        _request("keras_pair", arrays, typed=False, outputs=("probs",)), timeout=30
    )
    expected = stack.repository.compute["keras_pair"](arrays)
    _assert_same(_outputs(response), {"probs": expected["probs"]})


def _config(stub: Stub, model: str) -> pb.ModelConfig:
    return stub.ModelConfig(pb.ModelConfigRequest(name=model), timeout=10).config


def _tensors(tensors: object) -> list[tuple[str, str, list[int]]]:
    return sorted(
        (t.name, pb.DataType.Name(t.data_type), list(t.dims))
        for t in tensors  # type: ignore[attr-defined]
    )


def test_auto_completed_configurations_are_reported_as_triton_reports_them(stack: Stack) -> None:
    onnx = _config(stack.gateway, "onnx_auto")
    keras = _config(stack.gateway, "keras_pair")
    text = _config(stack.gateway, "tf_text")
    torch = _config(stack.gateway, "torch_pair")
    # No config.pbtxt: every tensor batched, so Triton's default max_batch_size and a batcher.
    assert (onnx.platform, onnx.backend, onnx.max_batch_size) == (
        "onnxruntime_onnx",
        "onnxruntime",
        4,
    )
    assert onnx.HasField("dynamic_batching")
    assert _tensors(onnx.input) == [("n", "TYPE_INT64", [1]), ("x", "TYPE_FP32", [3])]
    assert _tensors(onnx.output) == [("y", "TYPE_FP32", [3])]
    assert onnx.default_model_filename == "model.onnx"
    # config.pbtxt's max_batch_size and batcher; the tensors from the SavedModel's signature.
    assert (keras.platform, keras.max_batch_size) == ("tensorflow_savedmodel", 8)
    assert _tensors(keras.input) == [("features", "TYPE_FP32", [3]), ("ids", "TYPE_INT64", [4])]
    assert _tensors(keras.output) == [("probs", "TYPE_FP32", [3]), ("score", "TYPE_FP32", [1])]
    assert _tensors(text.input) == [("text", "TYPE_STRING", [])]
    assert _tensors(text.output) == [("length", "TYPE_INT32", []), ("upper", "TYPE_STRING", [])]
    # TorchScript: exactly what its config.pbtxt declares (unbatched: the dims are whole).
    assert (torch.platform, torch.max_batch_size) == ("pytorch_libtorch", 0)
    assert _tensors(torch.input) == [
        ("features", "TYPE_FP32", [-1, 3]),
        ("ids", "TYPE_INT64", [-1, 4]),
    ]
    metadata = stack.gateway.ModelMetadata(pb.ModelMetadataRequest(name="torch_pair"), timeout=10)
    assert metadata.platform == "pytorch_libtorch"
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("ids", "INT64", [-1, 4]),
        ("features", "FP32", [-1, 3]),
    ]


@pytest.mark.parametrize(
    ("model", "arrays", "fragment"),
    [
        ("onnx_auto", _inputs("onnx_auto", 5), "takes at most 4 per request (max_batch_size)"),
        ("tf_text", {"text": np.zeros((2,), np.float32)}, "must be BYTES, got FP32"),
        ("keras_pair", {"ids": np.zeros((1, 4), np.int64)}, "missing input 'features'"),
        ("torch_pair", _inputs("keras_pair", 9) | {"ids": np.zeros((9, 5), np.int64)}, "shape"),
    ],
    ids=["rows", "datatype", "missing", "dims"],
)
def test_bad_requests_are_invalid_argument_and_every_model_keeps_serving(
    stack: Stack, model: str, arrays: Arrays, fragment: str
) -> None:
    code, details = rpc_error(
        stack.gateway.ModelInfer, _request(model, arrays, typed=False), timeout=30
    )
    assert code is Code.INVALID_ARGUMENT
    assert fragment in details
    for name in GOOD:
        assert stack.gateway.ModelReady(pb.ModelReadyRequest(name=name), timeout=10).ready


def test_an_id_outside_the_embedding_is_invalid_argument(stack: Stack) -> None:
    arrays = _inputs("keras_pair", 1) | {"ids": np.full((1, 4), 99, np.int64)}
    request = _request("keras_pair", arrays, typed=False)
    request.parameters[FRAMEWORK_PARAM].string_param = "tensorflow"
    code, _ = rpc_error(stack.gateway.ModelInfer, request, timeout=30)
    # Keras' Embedding on the CPU raises for an index out of its table: the client's input.
    assert code is Code.INVALID_ARGUMENT


@pytest.mark.parametrize("model", list(BAD))
def test_a_refused_configuration_fails_its_own_load_with_the_reason(
    stack: Stack, model: str
) -> None:
    framework, fragment = BAD[model]
    stub = stack.direct[framework]
    code, details = rpc_error(stub.ModelMetadata, pb.ModelMetadataRequest(name=model), timeout=10)
    assert code is Code.UNAVAILABLE
    assert fragment in details
    rows = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10).models
    assert any(r.name == model and r.state == "UNAVAILABLE" and fragment in r.reason for r in rows)


def test_each_service_lists_what_it_serves_and_skips_the_rest(stack: Stack) -> None:
    for framework, stub in stack.direct.items():
        rows = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), timeout=10).models
        assert sorted(r.name for r in rows) == sorted(
            m for m, serving in GOOD.items() if framework in serving
        )
    # A model of another service's platform is unknown here, and the reason says whose it is.
    code, details = rpc_error(
        stack.direct["tensorflow"].ModelMetadata,
        pb.ModelMetadataRequest(name="torch_pair"),
        timeout=10,
    )
    assert code is Code.NOT_FOUND
    assert "is a pytorch_libtorch model; this tensorflow service serves" in details


def test_the_gateway_index_names_each_models_frameworks(stack: Stack) -> None:
    rows = stack.gateway.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), timeout=10).models
    found: dict[str, set[str]] = {}
    for row in rows:
        framework = row.reason.partition("framework=")[2].partition(";")[0]
        found.setdefault(row.name, set()).add(framework)
    assert found == {model: set(serving) for model, serving in GOOD.items()}


def test_nothing_of_ours_was_added_to_the_repository(stack: Stack) -> None:
    written = {p.name for p in Path(stack.repository.root).rglob("*") if p.is_file()}
    assert not written & {"model.json", "config.json", "torch_config.json", "weights.pt"}
