"""Warm-up: every runtime is called before the version is offered, with a batch-1 request
built from the whole signature (each input in the array its datatype decodes to)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from serving.engine.loaded import LoadedVersion
from serving.engine.loading import warm_up, warm_up_inputs
from serving.engine.onnx_model import ONNX_FILE, OnnxModel
from serving.engine.repository import VersionMeta
from serving.types import Signature, TensorSpec

SIGNATURE = Signature(
    inputs=(
        TensorSpec("image", "FP32", (-1, 8, 8, 1)),
        TensorSpec("count", "INT64", (-1,)),
        TensorSpec("text", "BYTES", (-1, 2)),
        TensorSpec("half", "BF16", (-1, 3)),  # widened to FP32 by the codec, as in requests
        TensorSpec("mask", "BOOL", (4,)),  # a fixed first dimension stays as declared
    ),
    outputs=(TensorSpec("out", "FP32", (-1, 1)),),
)
META = VersionMeta(framework="fake", platform="numpy_affine", architecture="x", signature=SIGNATURE)


class _Recording:
    def __init__(self) -> None:
        self.calls: list[dict[str, np.ndarray]] = []

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append(dict(inputs))
        return {"out": np.zeros((1, 1), np.float32)}

    def close(self) -> None:
        pass


def test_inputs_follow_the_signature() -> None:
    inputs = warm_up_inputs(META)
    assert {name: (a.dtype, a.shape) for name, a in inputs.items()} == {
        "image": (np.dtype(np.float32), (1, 8, 8, 1)),
        "count": (np.dtype(np.int64), (1,)),
        "text": (np.dtype(object), (1, 2)),
        "half": (np.dtype(np.float32), (1, 3)),
        "mask": (np.dtype(np.bool_), (4,)),
    }
    assert all(not array.any() for name, array in inputs.items() if name != "text")
    assert inputs["text"].tolist() == [[b"", b""]]


def test_every_runtime_is_called_with_every_input_and_timed() -> None:
    models = {"native": _Recording(), "onnx": _Recording()}
    loaded = LoadedVersion("m", 1, META, dict(models), "native", ("native", "onnx"))
    warm_up(loaded)
    for runtime, model in models.items():
        assert len(model.calls) > 1  # one untimed call, then the timed ones
        assert all(set(call) == {spec.name for spec in SIGNATURE.inputs} for call in model.calls)
        assert loaded.call_ns[runtime] > 0


def test_a_model_refusing_the_warm_up_fails_it() -> None:
    class Refusing(_Recording):
        def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            raise ValueError("wrong dtype")

    loaded = LoadedVersion("m", 1, META, {"native": Refusing()}, "native", ("native",))
    with pytest.raises(ValueError, match="wrong dtype"):
        warm_up(loaded)


def test_an_onnx_model_takes_its_inputs_in_their_own_dtype(tmp_path: Path) -> None:
    """The core's ONNX runtime feeds each input as the graph declares it (an INT64 count
    here), so the signature's warm-up reaches it as a request would."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["count"], ["y"], to=TensorProto.FLOAT)],
        "count",
        [helper.make_tensor_value_info("count", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (tmp_path / ONNX_FILE).write_bytes(model.SerializeToString())
    signature = Signature(
        inputs=(TensorSpec("count", "INT64", (-1, 1)),),
        outputs=(TensorSpec("y", "FP32", (-1, 1)),),
    )
    meta = VersionMeta(framework="x", platform="p", architecture="a", signature=signature)
    onnx_model = OnnxModel(tmp_path / ONNX_FILE, ["count"], ["y"])
    assert onnx_model.predict(warm_up_inputs(meta))["y"].tolist() == [[0.0]]
    assert onnx_model.predict({"count": np.array([[7]], np.int64)})["y"].tolist() == [[7.0]]
    onnx_model.close()
