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
from functools import partial
from typing import Any, Final

import numpy as np

from serving.errors import InvalidInput, ResourceExhausted
from serving.pb import inference_pb2 as pb
from serving.types import EncodedInput, InputTensor, ParamValue

__all__ = [
    "DATATYPES",
    "MAX_RANK",
    "check_inputs",
    "check_rank",
    "decode_inputs",
    "decode_tensor",
    "encode_tensor",
    "numpy_to_datatype",
    "param_from_pb",
    "param_to_pb",
    "serialize_bytes",
    "zeros",
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
# NumPy's largest rank (numpy.ndarray's `ndim`, 64 since NumPy 2).
MAX_RANK: Final = 64


def numpy_to_datatype(dtype: np.dtype[Any]) -> str:
    if dtype.kind in "OSU":
        return "BYTES"
    try:
        return _FROM_NUMPY[dtype.newbyteorder("=")]
    except KeyError:
        raise InvalidInput(f"no protocol datatype for NumPy dtype {dtype}") from None


def check_rank(what: str, rank: int) -> None:
    """Refuses a shape of more dimensions than NumPy allows; `what` names the tensor."""
    if rank > MAX_RANK:
        raise InvalidInput(
            f"{what}: the shape has {rank} dimensions; at most {MAX_RANK} are allowed "
            "(NumPy's limit): send the tensor with fewer dimensions"
        )


def _check_shape(name: str, shape: Sequence[int], dtype: np.dtype[Any]) -> int:
    """Validates a declared shape and returns its element count. The rank is bounded before
    anything else and the product stops growing past any size a tensor can have: multiplying
    thousands of huge dimensions as Python integers froze the event loop for seconds."""
    check_rank(f"input '{name}'", len(shape))
    count, empty = 1, False
    for dim in shape:
        if dim < 0:
            raise InvalidInput(f"input '{name}': shape {list(shape)} has a negative dimension")
        if dim == 0:
            empty = True
        elif count <= _MAX_BYTES:
            count *= dim
    # NumPy refuses a shape whose nonzero dimensions overflow its byte count even when another
    # dimension is 0 ([0, 2**62]): refused here, or reshape's ValueError would be INTERNAL
    # (found by tests/integration/test_fuzz.py). A nonempty huge shape fails the checks of its
    # contents (INVALID_ARGUMENT: no message can fill it).
    if empty:
        if count * dtype.itemsize > _MAX_BYTES:
            raise InvalidInput(
                f"input '{name}': shape {list(shape)} is too large for any tensor, even empty"
            )
        return 0
    return count


def _amount(count: int) -> str:
    # `_check_shape` stops multiplying past _MAX_BYTES: past it, the count is a lower bound.
    return str(count) if count <= _MAX_BYTES else f"more than {_MAX_BYTES}"


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


def _check_raw(
    name: str, datatype: str, shape: tuple[int, ...], raw: bytes, limit: int | None
) -> EncodedInput:
    """Checks a raw tensor's shape against its bytes, then against `limit`: a shape that the
    bytes do not fill (or overfill) is the client's mistake (INVALID_ARGUMENT, as in Triton),
    never a size to refuse as RESOURCE_EXHAUSTED."""
    dtype = _check_datatype(name, datatype)
    count = _check_shape(name, shape, dtype)
    if datatype == "BYTES":
        # Every element has at least its 4-byte length.
        if count * _LENGTH.size > len(raw):
            raise InvalidInput(
                f"input '{name}': shape {list(shape)} holds {_amount(count)} BYTES elements, "
                f"which need at least {_amount(count * _LENGTH.size)} bytes of length "
                f"prefixes; the data holds "
                f"{len(raw)}"
            )
        # An object slot per element, and the element bytes copied out of the message.
        _check_footprint(name, shape, count * dtype.itemsize + len(raw), limit)
        return EncodedInput(
            name, datatype, shape, count, partial(_decode_raw_bytes, name, shape, raw, count)
        )
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            f"input '{name}': raw contents hold {len(raw)} bytes, but shape {list(shape)} "
            f"of {datatype} needs {_amount(expected)}; send exactly the bytes the shape declares"
        )
    # BF16 is widened to FP32.
    _check_footprint(name, shape, count * (4 if datatype == "BF16" else dtype.itemsize), limit)
    work = count if datatype in ("BF16", "BOOL") else 0
    return EncodedInput(
        name, datatype, shape, work, partial(_decode_raw_numbers, name, datatype, shape, raw)
    )


def _decode_raw_bytes(name: str, shape: tuple[int, ...], raw: bytes, count: int) -> np.ndarray:
    return deserialize_bytes(name, raw, count).reshape(shape)


def _decode_raw_numbers(name: str, datatype: str, shape: tuple[int, ...], raw: bytes) -> np.ndarray:
    dtype = _NUMPY[datatype]
    if datatype == "BOOL":
        # One byte per element, 0 or 1: anything else is not a bool the client meant.
        octets = np.frombuffer(raw, dtype=np.uint8)
        if octets.size and octets.max() > 1:
            raise InvalidInput(f"input '{name}': BOOL raw contents must be bytes 0 or 1")
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return _bf16_to_fp32(array) if datatype == "BF16" else array


def _check_typed(
    name: str,
    datatype: str,
    shape: tuple[int, ...],
    contents: pb.InferTensorContents,
    limit: int | None,
) -> EncodedInput:
    """Checks typed contents' field and count against the shape, then against `limit`."""
    dtype = _check_datatype(name, datatype)
    count = _check_shape(name, shape, dtype)
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
            f"input '{name}': shape {list(shape)} needs {_amount(count)} elements, "
            f"contents hold {len(values)}; send exactly the elements the shape declares"
        )
    # Integers are range-checked as 64-bit first; BYTES take an object slot each.
    _check_footprint(name, shape, count * (8 if dtype.kind in "iuO" else dtype.itemsize), limit)
    return EncodedInput(
        name, datatype, shape, count, partial(_decode_typed, name, datatype, shape, values)
    )


def _decode_typed(name: str, datatype: str, shape: tuple[int, ...], values: Any) -> np.ndarray:
    dtype = _NUMPY[datatype]
    if dtype.kind in "iu":
        wide = _copy_out(values, np.dtype(np.int64 if dtype.kind == "i" else np.uint64))
        info = np.iinfo(dtype)
        if wide.size and (wide.min() < info.min or wide.max() > info.max):
            raise InvalidInput(f"input '{name}': a value is out of range for {datatype}")
        return wide.astype(dtype, copy=False).reshape(shape)
    return _copy_out(values, dtype).reshape(shape)


# Elements copied between protobuf and NumPy in one C call (~1-2 ms): a call holds the GIL
# throughout, so a big tensor copied whole on a thread would still stall the event loop.
_CHUNK: Final = 2**14


def _copy_out(values: Any, dtype: np.dtype[Any]) -> np.ndarray:
    """Typed contents (a repeated field) as a NumPy array, copied a chunk at a time."""
    out = np.empty(len(values), dtype=dtype)
    if len(values) <= _CHUNK:
        out[:] = list(values) if dtype.kind == "O" else values
        return out
    for start in range(0, len(values), _CHUNK):
        out[start : start + _CHUNK] = values[start : start + _CHUNK]
    return out


def decode_tensor(name: str, datatype: str, shape: Sequence[int], raw: bytes) -> np.ndarray:
    """Decodes one raw tensor (also used by clients and tests)."""
    return _check_raw(name, datatype, tuple(shape), raw, None).decode()


def zeros(datatype: str, shape: Sequence[int]) -> np.ndarray:
    """What a tensor of all-zero raw contents (empty strings for BYTES) decodes to: the
    array a model sees for `datatype` (FP32 for BF16), e.g. to warm a model up with."""
    width = _LENGTH.size if datatype == "BYTES" else _check_datatype("zeros", datatype).itemsize
    return decode_tensor("zeros", datatype, shape, bytes(math.prod(shape) * width))


def check_inputs(
    request: pb.ModelInferRequest, *, max_tensor_bytes: int | None = None
) -> list[EncodedInput]:
    """The request's inputs, each checked for a known datatype, a shape its contents fill
    exactly, and (with `max_tensor_bytes`) a decoded size within the limit (RESOURCE_EXHAUSTED
    past it); nothing is decoded or allocated yet."""
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
    checked: list[EncodedInput] = []
    for index, tensor in enumerate(inputs):
        if tensor.name in seen:
            raise InvalidInput(f"input '{tensor.name}' appears more than once")
        seen.add(tensor.name)
        check_rank(f"input '{tensor.name}'", len(tensor.shape))  # before the shape is copied
        shape = tuple(tensor.shape)
        if raw:
            item = _check_raw(tensor.name, tensor.datatype, shape, raw[index], max_tensor_bytes)
        else:
            item = _check_typed(
                tensor.name, tensor.datatype, shape, tensor.contents, max_tensor_bytes
            )
        checked.append(item)
    return checked


def decode_inputs(
    request: pb.ModelInferRequest, *, max_tensor_bytes: int | None = None
) -> list[InputTensor]:
    """The request's inputs as arrays, after `check_inputs`."""
    return [
        InputTensor(item.name, item.datatype, item.decode())
        for item in check_inputs(request, max_tensor_bytes=max_tensor_bytes)
    ]


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
    contents = getattr(tensor.contents, _CONTENTS_FIELD[datatype])
    flat = data.ravel()
    # A chunk at a time, as `_copy_out`, to let the event loop run while a thread encodes.
    for start in range(0, flat.size, _CHUNK):
        chunk = flat[start : start + _CHUNK]
        contents.extend([_as_bytes(v) for v in chunk] if datatype == "BYTES" else chunk.tolist())
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
