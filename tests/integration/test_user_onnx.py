"""A user's ONNX file of every datatype ONNX Runtime serves, with no config.pbtxt, and a user's
file of the service's own platform (the fake's affine.json, named by default_model_filename),
served through the real gRPC path: auto-completed, raw and typed contents, batched."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from onnx import TensorProto, helper

from serving.backend.fake import AffineBackend
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.protocol.codec import decode_tensor, encode_tensor, param_to_pb
from serving.protocol.names import BINARY_OUTPUT_PARAM
from tests.integration.conftest import AioThread
from tests.integration.oip import rpc_error

Stub = pb_grpc.GRPCInferenceServiceStub
# The protocol's datatype -> ONNX's element type and a NumPy dtype for test values.
TYPES: dict[str, tuple[int, type]] = {
    "BOOL": (TensorProto.BOOL, np.bool_),
    "INT8": (TensorProto.INT8, np.int8),
    "INT16": (TensorProto.INT16, np.int16),
    "INT32": (TensorProto.INT32, np.int32),
    "INT64": (TensorProto.INT64, np.int64),
    "UINT8": (TensorProto.UINT8, np.uint8),
    "UINT16": (TensorProto.UINT16, np.uint16),
    "UINT32": (TensorProto.UINT32, np.uint32),
    "UINT64": (TensorProto.UINT64, np.uint64),
    "FP16": (TensorProto.FLOAT16, np.float16),
    "FP32": (TensorProto.FLOAT, np.float32),
    "FP64": (TensorProto.DOUBLE, np.float64),
    "BYTES": (TensorProto.STRING, np.object_),
}
TYPED = {"FP16"}  # travels raw only, as in Triton


def _identity_model(path: Path, datatypes: list[str]) -> None:
    """in_<TYPE> -> out_<TYPE> for each datatype, batch first and dynamic, then 2 values."""
    nodes, inputs, outputs = [], [], []
    for datatype in datatypes:
        element = TYPES[datatype][0]
        name = datatype.lower()
        nodes.append(helper.make_node("Identity", [f"in_{name}"], [f"out_{name}"]))
        inputs.append(helper.make_tensor_value_info(f"in_{name}", element, ["batch", 2]))
        outputs.append(helper.make_tensor_value_info(f"out_{name}", element, ["batch", 2]))
    graph = helper.make_graph(nodes, "identities", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True)
    path.write_bytes(model.SerializeToString())


# Triton's quick-start densenet_onnx, in miniature: an image format, reshapes on both sides
# (the graph takes [1, 3, 4, 4] and gives [1, 3, 1, 1]; clients send [3, 4, 4], get [3]) and
# a label file.
DENSENET_LIKE = """
name: "densenet_like"
platform: "onnxruntime_onnx"
max_batch_size : 0
input [
  {
    name: "data_0"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 4, 4 ]
    reshape { shape: [ 1, 3, 4, 4 ] }
  }
]
output [
  {
    name: "fc6_1"
    data_type: TYPE_FP32
    dims: [ 3 ]
    reshape { shape: [ 1, 3, 1, 1 ] }
    label_filename: "labels.txt"
  }
]
"""


def _image_model(directory: Path) -> None:
    node = helper.make_node("ReduceMean", ["data_0"], ["fc6_1"], axes=[2, 3], keepdims=1)
    graph = helper.make_graph(
        [node],
        "pool",
        [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("fc6_1", TensorProto.FLOAT, [1, 3, 1, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (directory / "1").mkdir(parents=True)
    (directory / "1" / "model.onnx").write_bytes(model.SerializeToString())
    (directory / "config.pbtxt").write_text(DENSENET_LIKE)
    (directory / "labels.txt").write_text("red\ngreen\nblue\n")


def _values(datatype: str, rows: int) -> np.ndarray:
    rng = np.random.default_rng(rows)
    dtype = TYPES[datatype][1]
    if datatype == "BYTES":
        return np.array([f"r{i}-\u00e9".encode() for i in range(rows * 2)], object).reshape(rows, 2)
    if datatype == "BOOL":
        return rng.integers(0, 2, (rows, 2)).astype(bool)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, (rows, 2), dtype=dtype, endpoint=True)
    return rng.normal(size=(rows, 2)).astype(dtype)


@pytest.fixture(scope="module")
def stub(aio: AioThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stub]:
    root = tmp_path_factory.mktemp("user-onnx")
    _identity_model(root / "identities" / "1" / "model.onnx", list(TYPES))
    # Typed contents have no FP16 field: a model of every other datatype, for those.
    _identity_model(root / "typed" / "1" / "model.onnx", [d for d in TYPES if d not in TYPED])
    affine = root / "affine" / "1"
    affine.mkdir(parents=True)
    (affine / "weights.json").write_text(
        '{"weights": [0.2, 1.0], "bias": 5.0, "input": "xy", "output": "z"}'
    )
    (root / "affine" / "config.pbtxt").write_text(
        'backend: "numpy"\ndefault_model_filename: "weights.json"\n'
    )
    _image_model(root / "densenet_like")
    _image_model(root / "no_labels")
    (root / "no_labels" / "labels.txt").unlink()
    (root / "no_labels" / "config.pbtxt").write_text(
        DENSENET_LIKE.replace('name: "densenet_like"', "")
    )
    with (
        aio.service(root, AffineBackend(), repository_poll_s=0) as service,
        grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel,
    ):
        yield Stub(channel)


def _request(arrays: dict[str, np.ndarray], *, typed: bool) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="typed" if typed else "identities")
    for datatype, array in arrays.items():
        tensor = request.inputs.add(
            name=f"in_{datatype.lower()}", datatype=datatype, shape=array.shape
        )
        scratch = pb.ModelInferResponse.InferOutputTensor()
        raw = encode_tensor(scratch, array, datatype, binary=not typed)
        if typed:
            tensor.contents.CopyFrom(scratch.contents)
        else:
            assert raw is not None
            request.raw_input_contents.append(raw)
    if typed:
        param_to_pb(False, request.parameters[BINARY_OUTPUT_PARAM])
    return request


def test_the_graph_declares_every_datatype_and_a_batch(stub: Stub) -> None:
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="identities"), timeout=10)
    config = stub.ModelConfig(pb.ModelConfigRequest(name="identities"), timeout=10).config
    assert metadata.platform == "onnxruntime_onnx"
    assert {(t.name, t.datatype, tuple(t.shape)) for t in metadata.inputs} == {
        (f"in_{d.lower()}", d, (-1, 2)) for d in TYPES
    }
    assert config.max_batch_size == 4  # Triton's default for a fully batched auto-completion
    assert config.HasField("dynamic_batching")


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("typed", [False, True], ids=["raw", "typed"])
def test_every_datatype_comes_back_as_it_went(stub: Stub, typed: bool, rows: int) -> None:
    arrays = {d: _values(d, rows) for d in TYPES if not (typed and d in TYPED)}
    response = stub.ModelInfer(_request(arrays, typed=typed), timeout=10)
    assert bool(response.raw_output_contents) is not typed
    if typed:
        answers = {out.name: _typed(out) for out in response.outputs}
    else:
        answers = {
            out.name: decode_tensor(out.name, out.datatype, out.shape, raw)
            for out, raw in zip(response.outputs, response.raw_output_contents, strict=True)
        }
    assert sorted(answers) == sorted(f"out_{d.lower()}" for d in arrays)
    for datatype, array in arrays.items():
        got = answers[f"out_{datatype.lower()}"]
        assert got.shape == array.shape, datatype
        assert got.tolist() == array.tolist(), datatype


_FIELDS = {
    "BOOL": "bool_contents",
    "INT64": "int64_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _typed(out: pb.ModelInferResponse.InferOutputTensor) -> np.ndarray:
    field = _FIELDS.get(out.datatype) or (
        "uint_contents" if out.datatype.startswith("UINT") else "int_contents"
    )
    values = list(getattr(out.contents, field))
    return np.array(values, dtype=TYPES[out.datatype][1]).reshape(out.shape)


def test_an_fp16_input_in_typed_contents_is_refused(stub: Stub) -> None:
    request = pb.ModelInferRequest(model_name="identities")
    request.inputs.add(name="in_fp16", datatype="FP16", shape=[1, 2])
    request.inputs[0].contents.fp32_contents.extend([1.0, 2.0])
    code, details = rpc_error(stub.ModelInfer, request, timeout=10)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "FP16 has no typed contents field" in details


def test_a_users_file_of_the_services_own_platform_is_served_by_its_backend(stub: Stub) -> None:
    config = stub.ModelConfig(pb.ModelConfigRequest(name="affine"), timeout=10).config
    request = pb.ModelInferRequest(model_name="affine")
    request.inputs.add(name="xy", datatype="FP32", shape=[2, 2])
    request.raw_input_contents.append(np.array([[1800, 1], [1000, 2]], np.float32).tobytes())
    response = stub.ModelInfer(request, timeout=10)
    (raw,) = response.raw_output_contents
    assert (config.platform, config.default_model_filename) == ("numpy_affine", "weights.json")
    assert np.frombuffer(raw, "<f4").tolist() == pytest.approx([366.0, 207.0])


def test_a_triton_quickstart_style_config_reshapes_both_ways(stub: Stub) -> None:
    image = np.arange(48, dtype=np.float32).reshape(3, 4, 4)
    request = pb.ModelInferRequest(model_name="densenet_like")
    request.inputs.add(name="data_0", datatype="FP32", shape=[3, 4, 4])
    request.raw_input_contents.append(image.tobytes())
    response = stub.ModelInfer(request, timeout=10)
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="densenet_like"), timeout=10)
    (out,) = response.outputs
    (raw,) = response.raw_output_contents
    assert [list(t.shape) for t in metadata.inputs] == [[3, 4, 4]]
    assert list(out.shape) == [3]
    assert np.frombuffer(raw, "<f4").tolist() == image.mean(axis=(1, 2)).tolist()


def test_a_label_file_that_is_not_there_fails_that_model_only(stub: Stub) -> None:
    code, details = rpc_error(
        stub.ModelMetadata, pb.ModelMetadataRequest(name="no_labels"), timeout=10
    )
    assert code is grpc.StatusCode.UNAVAILABLE
    assert "output 'fc6_1' label_filename 'labels.txt' is not a file in the model's" in details
    assert stub.ModelReady(pb.ModelReadyRequest(name="densenet_like"), timeout=10).ready
