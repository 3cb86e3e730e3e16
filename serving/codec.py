"""Tensor codec: Open Inference Protocol tensors <-> NumPy arrays.

Inputs arrive either as typed `contents` or as `raw_input_contents` (little-endian bytes, one
entry per input; BYTES elements each prefixed by a 4-byte little-endian length). Outputs go out
as `raw_output_contents` by default, as Triton answers, since the Triton client reads only raw
outputs; typed contents when the request asks for them.

Every check happens before a byte is copied: a declared shape is validated against the data it
comes with, so a hostile shape cannot make the server allocate.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any, Final

import numpy as np

from serving.errors import InvalidInput, ResourceExhausted
from serving.pb import inference_pb2 as pb
from serving.types import InputTensor, ParamValue

__all__ = [
    "DATATYPES",
    "decode_inputs",
    "decode_tensor",
    "encode_tensor",
    "numpy_to_datatype",
    "param_from_pb",
    "param_to_pb",
    "serialize_bytes",
]

# BF16 has no NumPy dtype: it travels as its 16-bit pattern and is widened to FP32 here.
_NUMPY: Final[dict[str, np.dtype[Any]]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),
    "BYTES": np.dtype(np.object_),
}
DATATYPES: Final = frozenset(_NUMPY)

# Typed `contents` field per datatype; FP16 and BF16 travel raw only (as in Triton).
_CONTENTS_FIELD: Final[dict[str, str]] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

_FROM_NUMPY: Final[dict[np.dtype[Any], str]] = {
    dtype.newbyteorder("="): name for name, dtype in _NUMPY.items() if name not in ("BF16", "BYTES")
}

_LENGTH = struct.Struct("<I")
_MAX_BYTES: Final = 2**63 - 1


def numpy_to_datatype(dtype: np.dtype[Any]) -> str:
    if dtype.kind in "OSU":
        return "BYTES"
    try:
        return _FROM_NUMPY[dtype.newbyteorder("=")]
    except KeyError:
        raise InvalidInput(f"no protocol datatype for NumPy dtype {dtype}") from None


def _check_shape(name: str, shape: Sequence[int], dtype: np.dtype[Any]) -> int:
    """Validates a declared shape and returns its element count."""
    if any(dim < 0 for dim in shape):
        raise InvalidInput(f"input '{name}': shape {list(shape)} has a negative dimension")
    count = math.prod(shape)
    # NumPy refuses a shape whose nonzero dimensions overflow its byte count even when another
    # dimension is 0 ([0, 2**62]): refused here, or reshape's ValueError would be INTERNAL
    # (found by tests/integration/test_fuzz.py). A nonempty huge shape fails the length checks.
    if count == 0 and math.prod(dim for dim in shape if dim) * dtype.itemsize > _MAX_BYTES:
        raise InvalidInput(f"input '{name}': shape {list(shape)} is too large")
    return count


def _check_datatype(name: str, datatype: str) -> np.dtype[Any]:
    try:
        return _NUMPY[datatype]
    except KeyError:
        known = ", ".join(sorted(DATATYPES))
        raise InvalidInput(
            f"input '{name}': unknown datatype '{datatype}' (expected one of {known})"
        ) from None


def _check_footprint(name: str, shape: Sequence[int], size: int, limit: int | None) -> None:
    """Refuses a tensor whose decoding would allocate more than `limit` bytes (`size`: the
    widest arrays decoding makes). Called before anything is allocated."""
    if limit is not None and size > limit:
        raise ResourceExhausted(
            f"input '{name}': shape {list(shape)} decodes to {size} bytes, over this "
            f"server's limit of {limit} bytes per tensor (max_tensor_bytes)"
        )


def _bf16_to_fp32(bits: np.ndarray) -> np.ndarray:
    widened: np.ndarray = bits.astype("<u4") << 16
    return widened.view("<f4")


def _fp32_to_bf16(values: np.ndarray) -> np.ndarray:
    # Round to nearest even on the dropped 16 bits.
    floats = np.ascontiguousarray(values, dtype="<f4")
    bits = floats.view("<u4")
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    rounded: np.ndarray = (bits + rounding) >> 16
    # Rounding a NaN's mantissa can carry into the exponent (NaN -> inf, -0.0 or 0.0):
    # keep its sign and make it a quiet NaN instead.
    rounded = np.where(np.isnan(floats), (bits >> 16) | np.uint32(0x0040), rounded)
    return rounded.astype("<u2")


def deserialize_bytes(name: str, raw: bytes, count: int) -> np.ndarray:
    # Every element has at least its 4-byte length: checked before allocating `count` slots.
    if count * _LENGTH.size > len(raw):
        raise InvalidInput(
            f"input '{name}': {count} BYTES elements need at least {count * _LENGTH.size} "
            f"bytes of length prefixes, the data holds {len(raw)}"
        )
    out = np.empty(count, dtype=np.object_)
    offset, end = 0, len(raw)
    for i in range(count):
        if offset + 4 > end:
            raise InvalidInput(
                f"input '{name}': BYTES data ends after {i} of {count} elements "
                "(each element needs a 4-byte length prefix)"
            )
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > end:
            raise InvalidInput(
                f"input '{name}': BYTES element {i} declares {length} bytes, "
                f"only {end - offset} remain"
            )
        out[i] = raw[offset : offset + length]
        offset += length
    if offset != end:
        raise InvalidInput(
            f"input '{name}': {end - offset} trailing bytes after {count} BYTES elements"
        )
    return out


def _as_bytes(item: Any) -> bytes:
    return item.encode() if isinstance(item, str) else bytes(item)


def serialize_bytes(values: np.ndarray) -> bytes:
    parts: list[bytes] = []
    for item in values.ravel():
        data = _as_bytes(item)
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def _decode_raw(
    name: str, datatype: str, shape: tuple[int, ...], raw: bytes, limit: int | None = None
) -> np.ndarray:
    dtype = _check_datatype(name, datatype)
    count = _check_shape(name, shape, dtype)
    if datatype == "BYTES":
        # An object slot per element, and the element bytes copied out of the message.
        _check_footprint(name, shape, count * dtype.itemsize + len(raw), limit)
        return deserialize_bytes(name, raw, count).reshape(shape)
    # BF16 is widened to FP32.
    _check_footprint(name, shape, count * (4 if datatype == "BF16" else dtype.itemsize), limit)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            f"input '{name}': raw contents hold {len(raw)} bytes, but shape {list(shape)} "
            f"of {datatype} needs {expected}"
        )
    if datatype == "BOOL":
        # One byte per element, 0 or 1: anything else is not a bool the client meant.
        octets = np.frombuffer(raw, dtype=np.uint8)
        if octets.size and octets.max() > 1:
            raise InvalidInput(f"input '{name}': BOOL raw contents must be bytes 0 or 1")
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return _bf16_to_fp32(array) if datatype == "BF16" else array


def _decode_typed(
    name: str,
    datatype: str,
    shape: tuple[int, ...],
    contents: pb.InferTensorContents,
    limit: int | None = None,
) -> np.ndarray:
    dtype = _check_datatype(name, datatype)
    count = _check_shape(name, shape, dtype)
    # Integers are range-checked as 64-bit first; BYTES take an object slot each.
    _check_footprint(name, shape, count * (8 if dtype.kind in "iuO" else dtype.itemsize), limit)
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(
            f"input '{name}': {datatype} has no typed contents field; send it in raw_input_contents"
        )
    used = [desc.name for desc, _ in contents.ListFields()]
    if any(other != field for other in used):
        raise InvalidInput(
            f"input '{name}': datatype {datatype} reads '{field}', but the request filled "
            f"{', '.join(used)}"
        )
    values = getattr(contents, field)
    if len(values) != count:
        raise InvalidInput(
            f"input '{name}': shape {list(shape)} needs {count} elements, "
            f"contents hold {len(values)}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=np.object_)
        array[:] = list(values)
        return array.reshape(shape)
    if dtype.kind in "iu":
        wide = np.asarray(values, dtype=np.int64 if dtype.kind == "i" else np.uint64)
        info = np.iinfo(dtype)
        if wide.size and (wide.min() < info.min or wide.max() > info.max):
            raise InvalidInput(f"input '{name}': a value is out of range for {datatype}")
        return wide.astype(dtype).reshape(shape)
    return np.asarray(values, dtype=dtype).reshape(shape)


def decode_tensor(name: str, datatype: str, shape: Sequence[int], raw: bytes) -> np.ndarray:
    """Decodes one raw tensor (also used by clients and tests)."""
    return _decode_raw(name, datatype, tuple(shape), raw)


def decode_inputs(
    request: pb.ModelInferRequest, *, max_tensor_bytes: int | None = None
) -> list[InputTensor]:
    """The request's inputs as arrays; with `max_tensor_bytes`, an input whose declared shape
    would decode to more is refused (RESOURCE_EXHAUSTED) before allocation."""
    inputs = request.inputs
    raw = request.raw_input_contents
    typed = [i.name for i in inputs if i.HasField("contents") and i.contents.ListFields()]
    if raw and typed:
        raise InvalidInput(
            f"input '{typed[0]}' has typed contents while the request also carries "
            "raw_input_contents; use one or the other for every input"
        )
    if raw and len(raw) != len(inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(inputs)} inputs; "
            "send one entry per input, in input order"
        )
    seen: set[str] = set()
    decoded: list[InputTensor] = []
    for index, tensor in enumerate(inputs):
        if tensor.name in seen:
            raise InvalidInput(f"input '{tensor.name}' appears more than once")
        seen.add(tensor.name)
        shape = tuple(tensor.shape)
        if raw:
            array = _decode_raw(tensor.name, tensor.datatype, shape, raw[index], max_tensor_bytes)
        else:
            array = _decode_typed(
                tensor.name, tensor.datatype, shape, tensor.contents, max_tensor_bytes
            )
        decoded.append(InputTensor(tensor.name, tensor.datatype, array))
    return decoded


def _as_datatype(array: np.ndarray, datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return array
    if datatype == "BF16":
        return _fp32_to_bf16(array)
    return np.ascontiguousarray(array, dtype=_NUMPY[datatype])


def encode_tensor(
    tensor: pb.ModelInferResponse.InferOutputTensor,
    array: np.ndarray,
    datatype: str,
    *,
    binary: bool,
) -> bytes | None:
    """Fills `tensor`'s header, and its typed contents unless `binary`; returns the raw bytes
    to append to raw_output_contents when `binary`."""
    tensor.datatype = datatype
    tensor.shape.extend(array.shape)
    data = _as_datatype(array, datatype)
    if binary:
        return serialize_bytes(data) if datatype == "BYTES" else data.tobytes()
    field = _CONTENTS_FIELD[datatype]
    flat = data.ravel()
    values = [_as_bytes(v) for v in flat] if datatype == "BYTES" else flat.tolist()
    getattr(tensor.contents, field).extend(values)
    return None


def typed_allowed(datatype: str) -> bool:
    return datatype in _CONTENTS_FIELD


def param_from_pb(param: pb.InferParameter) -> ParamValue:
    kind = param.WhichOneof("parameter_choice")
    if kind is None:
        raise InvalidInput("a request parameter has no value set")
    value: ParamValue = getattr(param, kind)
    return value


def param_to_pb(value: ParamValue, param: pb.InferParameter) -> None:
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    else:
        param.string_param = value
