"""The tensor codec: every datatype round-trips raw and typed; bad tensors are refused with a
message that names the problem, before anything is allocated."""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest

from serving.errors import InvalidInput
from serving.pb import inference_pb2 as pb
from serving.protocol.codec import (
    check_inputs,
    decode_inputs,
    decode_tensor,
    encode_tensor,
    numpy_to_datatype,
    serialize_bytes,
)
from serving.protocol.translate import request_from_pb, response_to_pb
from serving.types import InferResponse

InputTensor = pb.ModelInferRequest.InferInputTensor
OutputTensor = pb.ModelInferResponse.InferOutputTensor

# One array per datatype, with the extremes of its range. BF16 values are exactly
# representable in BF16 so they come back unchanged (as FP32, its decoded form).
SAMPLES: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([0, 1, 255], dtype=np.uint8),
    "UINT16": np.array([0, 1, 65535], dtype=np.uint16),
    "UINT32": np.array([0, 1, 2**32 - 1], dtype=np.uint32),
    "UINT64": np.array([0, 1, 2**64 - 1], dtype=np.uint64),
    "INT8": np.array([-128, 0, 127], dtype=np.int8),
    "INT16": np.array([-(2**15), 0, 2**15 - 1], dtype=np.int16),
    "INT32": np.array([[-(2**31)], [0], [2**31 - 1]], dtype=np.int32),
    "INT64": np.array([-(2**63), 0, 2**63 - 1], dtype=np.int64),
    "FP16": np.array([0.5, -1.5, 65504.0, 0.0], dtype=np.float16),
    "FP32": np.array([[1.5, -2.25], [3.4028235e38, 1e-45]], dtype=np.float32),
    "FP64": np.array([1e308, -5e-324, 0.1], dtype=np.float64),
    "BYTES": np.array([[b"", b"abc"], [b"\x00\xff", b""]], dtype=object),
    "BF16": np.array([1.0, -2.0, 0.5, 3.140625, 0.0], dtype=np.float32),
}
TYPED = sorted(set(SAMPLES) - {"FP16", "BF16"})


def _request(*tensors: InputTensor, raw: list[bytes] | None = None) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name="m", inputs=list(tensors), raw_input_contents=raw or [])


def _tensor(datatype: str, shape: list[int], name: str = "x", **contents: Any) -> InputTensor:
    tensor = InputTensor(name=name, datatype=datatype, shape=shape)
    if contents:
        tensor.contents.CopyFrom(pb.InferTensorContents(**contents))
    return tensor


def _assert_same(got: np.ndarray, want: np.ndarray, datatype: str) -> None:
    assert got.shape == want.shape
    if datatype == "BYTES":
        assert got.dtype == np.object_
        assert got.tolist() == want.tolist()
    else:
        expected_dtype = np.float32 if datatype == "BF16" else want.dtype
        assert got.dtype == expected_dtype
        np.testing.assert_array_equal(got, want)


# ---- round trips ----


@pytest.mark.parametrize("datatype", sorted(SAMPLES))
def test_raw_round_trip(datatype: str) -> None:
    array = SAMPLES[datatype]
    header = OutputTensor(name="x")
    raw = encode_tensor(header, array, datatype, binary=True)
    assert raw is not None
    assert header.datatype == datatype
    assert list(header.shape) == list(array.shape)
    assert not header.contents.ListFields()

    request = _request(_tensor(header.datatype, list(header.shape)), raw=[raw])
    (decoded,) = decode_inputs(request)
    assert decoded.name == "x"
    assert decoded.datatype == datatype
    _assert_same(decoded.data, array, datatype)


@pytest.mark.parametrize("datatype", TYPED)
def test_typed_round_trip(datatype: str) -> None:
    array = SAMPLES[datatype]
    header = OutputTensor(name="x")
    assert encode_tensor(header, array, datatype, binary=False) is None
    assert len(header.contents.ListFields()) == 1

    tensor = _tensor(header.datatype, list(header.shape))
    tensor.contents.CopyFrom(header.contents)
    (decoded,) = decode_inputs(_request(tensor))
    _assert_same(decoded.data, array, datatype)


def test_typed_bytes_output_accepts_str_elements() -> None:
    header = OutputTensor(name="x")
    encode_tensor(header, np.array(["héllo", ""], dtype=object), "BYTES", binary=False)
    assert list(header.contents.bytes_contents) == ["héllo".encode(), b""]


@pytest.mark.parametrize("shape", [[], [0], [0, 3]])
def test_scalar_and_empty_shapes_round_trip(shape: list[int]) -> None:
    array = np.full(shape, 7.5, dtype=np.float32)
    header = OutputTensor(name="x")
    raw = encode_tensor(header, array, "FP32", binary=True)
    assert raw is not None
    (decoded,) = decode_inputs(_request(_tensor("FP32", shape), raw=[raw]))
    _assert_same(decoded.data, array, "FP32")


def test_response_to_pb_then_request_from_pb_keeps_output_order() -> None:
    outputs = {
        "b": np.array([[1, 2]], dtype=np.int32),
        "a": np.array([b"x", b""], dtype=object),
        "c": np.array([0.25], dtype=np.float64),
    }
    datatypes = {"b": "INT32", "a": "BYTES", "c": "FP64"}
    message = response_to_pb(
        InferResponse(
            model_name="m",
            model_version="1",
            id="req-1",
            outputs=outputs,
            datatypes=datatypes,
            binary=dict.fromkeys(outputs, True),
            parameters={"framework": "fake", "n": 3, "ok": True},
        )
    )
    assert [o.name for o in message.outputs] == ["b", "a", "c"]
    assert len(message.raw_output_contents) == 3
    assert message.parameters["framework"].string_param == "fake"
    assert message.parameters["n"].int64_param == 3
    assert message.parameters["ok"].bool_param is True

    # Feed the response back in as a request: raw entries line up with inputs by position.
    request = pb.ModelInferRequest(model_name="m", raw_input_contents=message.raw_output_contents)
    for out in message.outputs:
        request.inputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
    decoded = request_from_pb(request)
    for tensor in decoded.inputs:
        _assert_same(tensor.decode(), outputs[tensor.name], datatypes[tensor.name])


def test_response_is_all_typed_when_every_output_asks_for_it() -> None:
    message = response_to_pb(
        InferResponse(
            model_name="m",
            model_version="1",
            id="",
            outputs={"y": np.array([[360.0]], dtype=np.float32)},
            datatypes={"y": "FP32"},
            binary={"y": False},
        )
    )
    assert list(message.outputs[0].contents.fp32_contents) == [360.0]
    assert not message.raw_output_contents


def test_response_falls_back_to_raw_for_outputs_without_a_typed_field() -> None:
    message = response_to_pb(
        InferResponse(
            model_name="m",
            model_version="1",
            id="",
            outputs={"y": np.array([1.5], dtype=np.float32), "h": np.array([0.5], np.float16)},
            datatypes={"y": "FP32", "h": "FP16"},
            binary={"y": False, "h": False},
        )
    )
    assert len(message.raw_output_contents) == 2
    assert not message.outputs[0].contents.ListFields()
    assert np.frombuffer(message.raw_output_contents[1], "<f2").tolist() == [0.5]


# ---- BYTES and BF16 encodings ----


def test_bytes_elements_carry_little_endian_length_prefixes() -> None:
    raw = serialize_bytes(np.array([b"", b"ab", "é", b""], dtype=object))
    assert raw == (
        b"\x00\x00\x00\x00" + b"\x02\x00\x00\x00ab" + b"\x02\x00\x00\x00\xc3\xa9" + b"\x00" * 4
    )
    decoded = decode_tensor("x", "BYTES", [2, 2], raw)
    assert decoded.tolist() == [[b"", b"ab"], ["é".encode(), b""]]


@pytest.mark.parametrize(
    ("value", "bits"),
    [
        (1.0, 0x3F80),
        (-2.0, 0xC000),
        (np.float32(np.pi), 0x4049),  # 0x40490FDB: the dropped half is below the midpoint
        (1.0 + 2**-8, 0x3F80),  # exactly halfway, ties to the even 0x3F80
        (1.0 + 3 * 2**-8, 0x3F82),  # exactly halfway, ties to the even 0x3F82
        (1.0 + 2**-8 + 2**-20, 0x3F81),  # just above halfway rounds up
        (float(np.finfo(np.float32).max), 0x7F80),  # rounds up to infinity
        (float("-inf"), 0xFF80),
    ],
)
def test_bf16_rounds_to_nearest_even(value: float, bits: int) -> None:
    raw = encode_tensor(OutputTensor(), np.array([value], np.float32), "BF16", binary=True)
    assert raw is not None
    assert np.frombuffer(raw, "<u2").tolist() == [bits]


@pytest.mark.parametrize("pattern", [0x7FC00000, 0x7FFFFFFF, 0xFFFFFFFF, 0x7F800001])
def test_bf16_keeps_nan_a_nan(pattern: int) -> None:
    value = np.array([pattern], dtype="<u4").view("<f4")
    raw = encode_tensor(OutputTensor(), value, "BF16", binary=True)
    assert raw is not None
    assert np.isnan(decode_tensor("x", "BF16", [1], raw)).all()


def test_bf16_decodes_to_fp32() -> None:
    raw = np.array([0x3F80, 0xC040, 0x3E80], dtype="<u2").tobytes()
    decoded = decode_tensor("x", "BF16", [3], raw)
    assert decoded.dtype == np.float32
    assert decoded.tolist() == [1.0, -3.0, 0.25]


def test_numpy_to_datatype() -> None:
    assert numpy_to_datatype(np.dtype(np.float32)) == "FP32"
    assert numpy_to_datatype(np.dtype(">i8")) == "INT64"
    assert numpy_to_datatype(np.dtype("U5")) == "BYTES"
    with pytest.raises(InvalidInput, match="complex64"):
        numpy_to_datatype(np.dtype(np.complex64))


# ---- refusals ----


def _refused(request: pb.ModelInferRequest, *fragments: str) -> str:
    with pytest.raises(InvalidInput) as info:
        decode_inputs(request)
    message = info.value.message
    for fragment in fragments:
        assert fragment in message
    return message


def test_unknown_datatype() -> None:
    message = _refused(_request(_tensor("FP8", [1]), raw=[b"\x00"]), "'x'", "'FP8'")
    assert "FP32" in message  # lists what is accepted


def test_unknown_datatype_typed() -> None:
    _refused(_request(_tensor("FLOAT", [1], fp32_contents=[1.0])), "unknown datatype 'FLOAT'")


def test_negative_dimension() -> None:
    _refused(_request(_tensor("FP32", [-1, 1]), raw=[b"\x00" * 4]), "[-1, 1]", "negative")


def test_raw_length_mismatch() -> None:
    _refused(_request(_tensor("FP32", [2, 1]), raw=[b"\x00" * 7]), "7 bytes", "[2, 1]", "needs 8")


def test_bytes_length_prefix_past_the_end() -> None:
    raw = b"\x0a\x00\x00\x00abc"
    _refused(_request(_tensor("BYTES", [1]), raw=[raw]), "element 0", "10 bytes", "3 remain")


def test_bytes_truncated_length_prefix() -> None:
    raw = b"\x05\x00\x00\x00abcde\x01\x00"
    _refused(_request(_tensor("BYTES", [2]), raw=[raw]), "1 of 2", "4-byte length")


def test_bytes_trailing_bytes() -> None:
    raw = b"\x01\x00\x00\x00a" + b"zz"
    _refused(_request(_tensor("BYTES", [1]), raw=[raw]), "2 trailing bytes")


def test_typed_count_mismatch() -> None:
    _refused(
        _request(_tensor("FP32", [3], fp32_contents=[1.0, 2.0])),
        "[3]",
        "needs 3 elements",
        "hold 2",
    )


def test_wrong_typed_field_for_datatype() -> None:
    _refused(_request(_tensor("FP32", [1], int_contents=[1])), "'fp32_contents'", "int_contents")


@pytest.mark.parametrize(
    ("datatype", "contents"),
    [
        ("INT8", {"int_contents": [1, 300]}),
        ("INT8", {"int_contents": [-129]}),
        ("INT16", {"int_contents": [40000]}),
        ("UINT8", {"uint_contents": [256]}),
        ("UINT16", {"uint_contents": [70000]}),
    ],
)
def test_typed_value_out_of_range(datatype: str, contents: dict[str, list[int]]) -> None:
    count = len(next(iter(contents.values())))
    _refused(_request(_tensor(datatype, [count], **contents)), "out of range", datatype)


def test_raw_and_typed_in_one_request() -> None:
    request = _request(
        _tensor("FP32", [1], fp32_contents=[1.0]), _tensor("FP32", [1], name="y"), raw=[b"\0" * 4]
    )
    _refused(request, "'x'", "raw_input_contents", "one or the other")


def test_raw_entries_do_not_match_inputs() -> None:
    request = _request(_tensor("FP32", [1]), _tensor("FP32", [1], name="y"), raw=[b"\0" * 4])
    _refused(request, "1 entries", "2 inputs")


def test_duplicate_input_names() -> None:
    request = _request(_tensor("FP32", [1]), _tensor("FP32", [1]), raw=[b"\0" * 4] * 2)
    _refused(request, "'x'", "more than once")


@pytest.mark.parametrize("datatype", ["FP16", "BF16"])
def test_half_floats_cannot_travel_typed(datatype: str) -> None:
    _refused(
        _request(_tensor(datatype, [1], fp32_contents=[1.0])),
        datatype,
        "no typed contents field",
        "raw_input_contents",
    )


def test_binary_data_output_must_be_bool() -> None:
    request = _request(_tensor("FP32", [1], fp32_contents=[1.0]))
    request.parameters["binary_data_output"].string_param = "false"
    with pytest.raises(InvalidInput, match="'binary_data_output' must be a bool"):
        request_from_pb(request)


@pytest.mark.parametrize(
    ("datatype", "shape", "raw", "fragment"),
    [
        ("FP32", [2**40, 2**40], b"\0" * 8, "[1099511627776, 1099511627776]"),
        ("INT64", [2**62, 2], b"\0" * 8, "[4611686018427387904, 2]"),
        ("BYTES", [2**40, 2**40], b"\0" * 8, "more than 9223372036854775807 BYTES elements"),
        # Small enough to allocate (128 MiB of object pointers) but far more elements
        # than the data can hold: refused before allocating.
        ("BYTES", [2**24], b"\x00\x00\x00\x00", "16777216 BYTES elements"),
    ],
)
def test_huge_shape_is_refused_without_allocating(
    datatype: str, shape: list[int], raw: bytes, fragment: str
) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInput) as info:
            decode_inputs(_request(_tensor(datatype, shape), raw=[raw]))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert fragment in info.value.message
    assert peak < 1 << 20


def test_huge_shape_typed_is_refused_without_allocating() -> None:
    tracemalloc.start()
    try:
        with pytest.raises(
            InvalidInput, match="needs more than 9223372036854775807 elements, contents hold 1"
        ):
            decode_inputs(_request(_tensor("FP32", [2**40, 2**40], fp32_contents=[1.0])))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_raw_bool_bytes_must_be_zero_or_one() -> None:
    _refused(_request(_tensor("BOOL", [3]), raw=[b"\x01\x00\x02"]), "'x'", "0 or 1")


@pytest.mark.parametrize(
    ("datatype", "itemsize"),
    [("BOOL", 1), ("INT8", 1), ("FP16", 2), ("BF16", 2), ("FP32", 4), ("INT64", 8)],
)
@pytest.mark.parametrize("extra_items", [1, 0])
def test_raw_contents_longer_than_the_shape_are_refused(
    datatype: str, itemsize: int, extra_items: int
) -> None:
    """Neither accepted nor cut to the shape (a whole extra element, or one stray byte)."""
    extra = itemsize * extra_items or 1
    raw = b"\0" * (2 * itemsize + extra)
    _refused(
        _request(_tensor(datatype, [2]), raw=[raw]),
        f"raw contents hold {len(raw)} bytes",
        f"needs {2 * itemsize}",
    )


def test_raw_bytes_elements_past_the_shape_are_refused() -> None:
    raw = b"\x01\x00\x00\x00a\x01\x00\x00\x00b"
    _refused(_request(_tensor("BYTES", [1]), raw=[raw]), "5 trailing bytes after 1 BYTES")


@pytest.mark.parametrize("rank", [65, 300, 30_000])
@pytest.mark.parametrize("typed", [False, True])
def test_too_many_dimensions_are_refused_at_once(rank: int, typed: bool) -> None:
    tensor = _tensor("FP32", [2**62] * rank, **({"fp32_contents": [1.0]} if typed else {}))
    request = _request(tensor) if typed else _request(tensor, raw=[b""])
    _refused(request, f"{rank} dimensions; at most 64")


def test_a_huge_shape_of_the_largest_rank_is_refused_for_its_contents() -> None:
    """64 dimensions of 2**62: the count stops growing once past any possible size, and the
    shape the contents do not fill is the client's mistake (not RESOURCE_EXHAUSTED)."""
    request = _request(_tensor("FP32", [2**62] * 64), raw=[b""])
    with pytest.raises(InvalidInput, match=r"raw contents hold 0 bytes.* needs more than"):
        decode_inputs(request, max_tensor_bytes=1024)


def test_checking_inputs_decodes_nothing() -> None:
    """check_inputs reads headers and sizes only: BYTES elements are not split out until
    `decode` (the data plane checks them against the model first)."""
    raw = b"\0" * (4 << 20)
    tracemalloc.start()
    try:
        (checked,) = check_inputs(_request(_tensor("BYTES", [1 << 20]), raw=[raw]))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (checked.shape, checked.work) == ((1 << 20,), 1 << 20)
    # The message's bytes are read out once (protobuf hands out a copy); no element slots
    # (8 MiB of pointers) nor element objects are made.
    assert peak < len(raw) + (1 << 16)
    assert checked.decode().shape == (1 << 20,)
