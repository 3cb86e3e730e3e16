"""The load test on models it does not know: requests generated from what a target says the
model takes (every datatype, where the batch goes, max_batch_size), the checker that compares
answers of any datatype, and what each endpoint is asked before the matrix runs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from loadtest.checks import OutputsClose
from loadtest.served import ServedModel
from serving.pb import inference_pb2 as pb
from serving.protocol.codec import DATATYPES, decode_inputs, encode_tensor, zeros
from serving.types import TensorSpec

EVERY = sorted(DATATYPES)


def _decoded(request: bytes) -> dict[str, np.ndarray]:
    """What a server decodes from the request (its codec, raw contents)."""
    message = pb.ModelInferRequest.FromString(request)
    assert len(message.raw_input_contents) == len(message.inputs)  # raw, as Triton's clients
    return {tensor.name: tensor.data for tensor in decode_inputs(message)}


def _model(*inputs: TensorSpec, max_batch_size: int = 8) -> ServedModel:
    return ServedModel("m", inputs, max_batch_size)


def test_every_datatype_gets_valid_values() -> None:
    inputs = [TensorSpec(f"in_{d.lower()}", d, (-1, 3)) for d in EVERY]
    model = _model(*inputs)
    message = pb.ModelInferRequest.FromString(model.request(4, None, ""))
    assert [(t.name, t.datatype, list(t.shape)) for t in message.inputs] == [
        (spec.name, spec.datatype, [4, 3]) for spec in inputs
    ]
    arrays = _decoded(model.request(4, None, ""))
    for spec in inputs:
        array = arrays[spec.name]
        if spec.datatype == "BYTES":
            assert all(isinstance(v, bytes) and 0 < len(v) <= 3 for v in array.ravel())
        elif spec.datatype == "BOOL":
            assert array.dtype == np.bool_
        elif spec.datatype.startswith(("INT", "UINT")):
            assert array.min() >= 0 and array.max() < 10  # in range of INT8 too: an index
        else:  # FP16, FP32, FP64, BF16 (widened to float32)
            assert array.dtype.kind == "f" and array.min() >= 0 and array.max() <= 1
    # Seeded: every target of the model sends the same values.
    assert model.request(4, None, "") == model.request(4, None, "")
    values = arrays["in_fp32"].ravel()
    assert len(set(values.tolist())) == values.size  # drawn, not a constant


def test_the_batch_goes_first_and_other_variable_dims_are_1() -> None:
    model = _model(TensorSpec("x", "FP32", (-1, -1, 3)), TensorSpec("n", "INT64", (-1, 1)))
    shapes = {name: a.shape for name, a in _decoded(model.request(5, None, "")).items()}
    assert shapes == {"x": (5, 1, 3), "n": (5, 1)}
    assert model.shapes(5) == (("FP32", (5, 1, 3)), ("INT64", (5, 1)))


def test_with_max_batch_size_the_first_dim_is_the_batch_even_if_not_given_as_minus_1() -> None:
    model = _model(TensorSpec("x", "FP32", (1, 3)))
    assert _decoded(model.request(4, None, ""))["x"].shape == (4, 3)


def test_a_batch_over_max_batch_size_is_not_available() -> None:
    model = _model(TensorSpec("x", "FP32", (-1, 3)), max_batch_size=8)
    assert model.unavailable(8) is None
    why = model.unavailable(16)
    assert why is not None and "max_batch_size 8" in why and "16" in why


def test_without_max_batch_size_a_leading_minus_1_takes_the_batch() -> None:
    model = _model(
        TensorSpec("x", "FP32", (-1, 2)), TensorSpec("k", "INT32", (2,)), max_batch_size=0
    )
    assert model.unavailable(32) is None
    shapes = {name: a.shape for name, a in _decoded(model.request(32, None, "")).items()}
    assert shapes == {"x": (32, 2), "k": (2,)}


def test_without_a_batch_dimension_only_batch_1_runs() -> None:
    model = _model(TensorSpec("x", "FP32", (3,)), max_batch_size=0)
    assert model.unavailable(1) is None
    assert _decoded(model.request(1, None, ""))["x"].shape == (3,)
    why = model.unavailable(4)
    assert why is not None and "no batch dimension" in why and "max_batch_size 0" in why


def test_the_framework_and_runtime_parameters() -> None:
    model = _model(TensorSpec("x", "FP32", (-1, 3)))
    message = pb.ModelInferRequest.FromString(model.request(1, "pytorch", "onnx"))
    assert message.model_name == "m"
    assert message.parameters["framework"].string_param == "pytorch"
    assert message.parameters["runtime"].string_param == "onnx"
    bare = pb.ModelInferRequest.FromString(model.request(1, None, ""))
    assert not bare.parameters


# --- the answer check ---------------------------------------------------------------------


def _answer(*outputs: tuple[str, str, np.ndarray], typed: bool = False) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name="m")
    for name, datatype, array in outputs:
        raw = encode_tensor(response.outputs.add(name=name), array, datatype, binary=not typed)
        if raw is not None:
            response.raw_output_contents.append(raw)
    return response


def _sample(datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([b"a", b"bc", b""], dtype=np.object_)
    if datatype == "BOOL":
        return np.array([True, False, True])
    return np.array([1, 2, 3]).astype(zeros(datatype, (0,)).dtype)  # BF16 as float32


@pytest.mark.parametrize("datatype", EVERY)
def test_an_equal_answer_of_every_datatype_passes(datatype: str) -> None:
    reference = _answer(("y", datatype, _sample(datatype)))
    checker = OutputsClose.of(reference)
    assert checker(reference.SerializeToString()) is None


@pytest.mark.parametrize("datatype", ["INT64", "UINT8", "BOOL", "BYTES"])
def test_integers_booleans_and_strings_must_be_exact(datatype: str) -> None:
    checker = OutputsClose.of(_answer(("y", datatype, _sample(datatype))))
    changed = _sample(datatype)
    changed[1] = b"x" if datatype == "BYTES" else not changed[1] if datatype == "BOOL" else 7
    verdict = checker(_answer(("y", datatype, changed)).SerializeToString())
    assert verdict is not None and "y differs in 1 of 3 values (first at flat index 1" in verdict


def test_floats_are_close_within_the_references_magnitude() -> None:
    reference = np.array([100.0, -200.0, 0.0], np.float32)
    checker = OutputsClose.of(_answer(("y", "FP32", reference)))
    near = reference + np.float32(0.3)  # within 2e-3 of 200
    assert checker(_answer(("y", "FP32", near)).SerializeToString()) is None
    far = reference + np.array([0, 0, 1.0], np.float32)
    verdict = checker(_answer(("y", "FP32", far)).SerializeToString())
    assert verdict == "y off by 1 in 1 of 3 values (tolerance 0.4)"
    # Half precision gets a tolerance of its coarser steps.
    half = OutputsClose.of(_answer(("h", "FP16", np.array([1, 2, 3], np.float16))))
    assert (
        half(_answer(("h", "FP16", np.array([1.01, 2, 3], np.float16))).SerializeToString()) is None
    )


def test_nan_matches_nan_and_typed_contents_are_read() -> None:
    values = np.array([1.0, math.nan, 3.0])
    checker = OutputsClose.of(_answer(("y", "FP64", values), typed=True))
    assert checker(_answer(("y", "FP64", values)).SerializeToString()) is None
    assert checker(_answer(("y", "FP64", values), typed=True).SerializeToString()) is None


def test_another_models_answer_says_what_differs() -> None:
    checker = OutputsClose.of(
        _answer(("y", "FP32", np.zeros((2, 3), np.float32)), ("k", "INT64", np.zeros(2, np.int64)))
    )
    renamed = _answer(("OUTPUT__0", "FP32", np.zeros((2, 3), np.float32)))
    assert checker(renamed.SerializeToString()) == "no output 'y' (the answer has 'OUTPUT__0')"
    reshaped = _answer(("y", "FP32", np.zeros((2, 4), np.float32)))
    assert checker(reshaped.SerializeToString()) == "y has shape [2, 4], expected [2, 3]"
    strings = _answer(
        ("y", "FP32", np.zeros((2, 3), np.float32)), ("k", "BYTES", np.array([b"a", b"b"], object))
    )
    assert checker(strings.SerializeToString()) == "k holds strings (BYTES), expected numbers"
    assert checker(b"\xff\xff").startswith("unreadable answer")


def test_the_checker_travels_to_client_processes() -> None:
    import pickle  # noqa: PLC0415

    checker = OutputsClose.of(_answer(("y", "BF16", np.array([0.5, 1.5], np.float32))))
    copy = pickle.loads(pickle.dumps(checker))
    assert (
        copy(_answer(("y", "BF16", np.array([0.5, 1.5], np.float32))).SerializeToString()) is None
    )
