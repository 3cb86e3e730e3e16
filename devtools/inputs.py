"""The `twinserve` client's inputs for any model, checked against the model's metadata.

An input is given as `NAME=VALUE`: inline JSON (`ids=[[1,2,3]]`), `@file.npy` (a NumPy array,
which must already have the input's dtype) or `@file` (JSON). JSON is converted to the input's
datatype: integers must be whole and in range, BOOL takes true/false (or 0/1), BYTES takes
strings (sent as UTF-8). With no inputs at all, `generate` makes valid ones from the metadata.
A value that does not fit is an `InputError`, whose message names the input, what the model
takes and what was given. The request carries raw contents, as tritonclient sends them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from serving.errors import InvalidInput
from serving.pb import inference_pb2 as pb
from serving.protocol.codec import encode_tensor, numpy_to_datatype, zeros
from serving.types import TensorSpec

__all__ = [
    "InputError",
    "generate",
    "given",
    "infer_request",
    "model_and_values",
    "parse_value",
    "specs",
]

# Generated integers stay small: an integer input is often an index (a token id, a class)
# into a table whose size the metadata does not say.
_MAX_GENERATED_INT = 10


class InputError(ValueError):
    """An input that does not fit the model, or a flag that cannot be read: the client prints
    the message and exits 2, as for a usage error."""


def specs(metadata: pb.ModelMetadataResponse) -> list[TensorSpec]:
    return [TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in metadata.inputs]


def _takes(spec: TensorSpec) -> str:
    return f"input '{spec.name}' takes {spec.datatype} {list(spec.shape)}"


def _dtype(datatype: str) -> np.dtype[Any]:
    """The array a model sees for `datatype` (the codec's table; float32 for BF16)."""
    return zeros(datatype, (0,)).dtype


def _check_shape(spec: TensorSpec, array: np.ndarray, source: str) -> np.ndarray:
    if not spec.accepts_shape(tuple(array.shape)):
        raise InputError(f"{_takes(spec)} (-1: any size); {source} has shape {list(array.shape)}")
    return array


def _json_array(spec: TensorSpec, value: Any, source: str) -> np.ndarray:
    """A JSON value converted to the input's datatype, refusing what would change a value."""
    try:
        data = np.asarray(value)
    except ValueError:  # ragged lists
        raise InputError(f"{_takes(spec)}; {source} is not a rectangular array") from None
    kind, datatype = data.dtype.kind, spec.datatype
    if datatype == "BYTES":
        if data.size and kind != "U":
            raise InputError(f"{_takes(spec)}: give JSON strings; {source} holds {data.dtype}")
        encoded = [str(item).encode() for item in data.ravel()]
        return np.array(encoded, dtype=np.object_).reshape(data.shape)
    if data.size and kind not in "biuf":  # strings, nulls, numbers too big for 64 bits
        raise InputError(f"{_takes(spec)}; {source} holds {_kind_name(data)}")
    dtype = _dtype(datatype)
    if dtype.kind == "b":
        if data.size and not np.isin(data, (0, 1)).all():
            raise InputError(f"{_takes(spec)}: give true/false (or 0/1); {source} has others")
        return data.astype(dtype)
    if dtype.kind in "iu":
        if kind == "b" or (kind == "f" and not np.all(np.mod(data, 1) == 0)):
            raise InputError(f"{_takes(spec)}: give whole numbers; {source} has others")
        info = np.iinfo(dtype)
        if data.size and (data.min() < info.min or data.max() > info.max):
            raise InputError(
                f"{_takes(spec)}: values from {info.min} to {info.max}; {source} has "
                f"{data.min()}..{data.max()}"
            )
        return data.astype(dtype)
    if kind == "b":
        raise InputError(f"{_takes(spec)}: give numbers; {source} holds true/false")
    with np.errstate(over="ignore"):
        converted = data.astype(dtype)
    if not np.array_equal(np.isfinite(converted), np.isfinite(data.astype(np.float64))):
        raise InputError(f"{_takes(spec)}; {source} has values too large for {datatype}")
    return converted


def _kind_name(data: np.ndarray) -> str:
    return "strings" if data.dtype.kind == "U" else "values that are not numbers"


def _npy_array(spec: TensorSpec, path: Path) -> np.ndarray:
    """A .npy array, which must hold the input's dtype already: converting a saved array
    silently (float64 to float32, say) would hide a mistake in how it was made."""
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError:
        # A pickled (object) array: never unpickled, since that can run code.
        raise InputError(
            f"{_takes(spec)}; {path} holds Python objects; save strings as a 'U' or 'S' array"
        ) from None
    if not isinstance(array, np.ndarray):
        raise InputError(f"{_takes(spec)}; {path} is not a single .npy array")
    try:
        given_type = numpy_to_datatype(array.dtype)
    except InvalidInput:
        given_type = str(array.dtype)
    wanted = "FP32" if spec.datatype == "BF16" else spec.datatype  # BF16 goes as float32
    if given_type != wanted:
        dtype = "str or bytes" if wanted == "BYTES" else str(_dtype(spec.datatype))
        raise InputError(
            f"{_takes(spec)} (a .npy file of {dtype}); {path} holds {array.dtype} "
            f"{list(array.shape)}"
        )
    if wanted == "BYTES":
        items = [item.encode() if isinstance(item, str) else item for item in array.ravel()]
        array = np.array(items, dtype=np.object_).reshape(array.shape)
    return _check_shape(spec, array, str(path))


def parse_value(spec: TensorSpec, text: str) -> np.ndarray:
    """One `--input` value: `@file.npy`, `@file` (JSON) or inline JSON."""
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            if path.suffix == ".npy":
                return _npy_array(spec, path)
            source, raw = str(path), path.read_text()
        except OSError as exc:
            raise InputError(f"input '{spec.name}': cannot read {path}: {exc.strerror}") from None
    else:
        source, raw = "the JSON given", text
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise InputError(f"input '{spec.name}': {source} is not JSON ({exc})") from None
    return _check_shape(spec, _json_array(spec, value, source), source)


def given(inputs: Sequence[TensorSpec], assignments: Sequence[str]) -> dict[str, np.ndarray]:
    """The arrays of `NAME=VALUE` assignments, one for each of the model's inputs."""
    by_name = {spec.name: spec for spec in inputs}
    names = ", ".join(f"'{spec.name}' ({spec.datatype} {list(spec.shape)})" for spec in inputs)
    arrays: dict[str, np.ndarray] = {}
    for assignment in assignments:
        name, equals, text = assignment.partition("=")
        if not equals:
            raise InputError(f"--input {assignment!r}: write NAME=VALUE (the model takes {names})")
        if name not in by_name:
            raise InputError(f"unknown input '{name}': the model takes {names}")
        if name in arrays:
            raise InputError(f"input '{name}' is given twice")
        arrays[name] = parse_value(by_name[name], text)
    missing = [spec.name for spec in inputs if spec.name not in arrays]
    if missing:
        raise InputError(
            f"missing input(s) {', '.join(map(repr, missing))}: give every one of {names}, "
            "or none to have them generated"
        )
    return arrays


def generated_shape(spec: TensorSpec, batch: int) -> tuple[int, ...]:
    """`batch` for a variable first dimension, 1 for any other variable one."""
    return tuple((batch if i == 0 else 1) if dim < 0 else dim for i, dim in enumerate(spec.shape))


def generate(
    inputs: Sequence[TensorSpec], *, batch: int = 1, seed: int = 0, zero: bool = False
) -> dict[str, np.ndarray]:
    """Valid inputs for the model: zeros (empty strings for BYTES), or values drawn from
    `seed`, so that a run repeats: floats in [0, 1), integers in [0, 10), booleans."""
    if batch < 1:
        raise InputError(f"--batch must be at least 1, not {batch}")
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for spec in inputs:
        shape = generated_shape(spec, batch)
        if zero:
            arrays[spec.name] = zeros(spec.datatype, shape)
            continue
        dtype = _dtype(spec.datatype)
        if dtype.kind == "O":
            words = [str(n).encode() for n in rng.integers(0, 1000, size=int(np.prod(shape)))]
            arrays[spec.name] = np.array(words, dtype=np.object_).reshape(shape)
        elif dtype.kind in "biu":
            top = 2 if dtype.kind == "b" else _MAX_GENERATED_INT
            arrays[spec.name] = rng.integers(0, top, size=shape).astype(dtype)
        else:
            arrays[spec.name] = rng.random(size=shape).astype(dtype)
    return arrays


def model_and_values(
    words: Sequence[str], flag: str | None, default: str
) -> tuple[str, list[float]]:
    """`[MODEL] [VALUE...]` (and `--model`): a first word that is not a number names the
    model; the rest are the house-price shorthand's values."""
    words = list(words)
    model = flag or default
    if words and not _is_number(words[0]):
        if flag and flag != words[0]:
            raise InputError(f"model '{words[0]}' and --model '{flag}' disagree")
        model = words.pop(0)
    bad = [word for word in words if not _is_number(word)]
    if bad:
        raise InputError(f"input values must be numbers, not {', '.join(map(repr, bad))}")
    return model, [float(word) for word in words]


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def infer_request(
    model: str, inputs: Sequence[TensorSpec], arrays: Mapping[str, np.ndarray]
) -> pb.ModelInferRequest:
    """A request with raw contents, in the metadata's input order, encoded by the codec."""
    request = pb.ModelInferRequest(model_name=model)
    for spec in inputs:
        array = arrays[spec.name]
        request.inputs.add(name=spec.name, datatype=spec.datatype, shape=array.shape)
        # encode_tensor writes a response tensor's header too: only its bytes are kept.
        scratch = pb.ModelInferResponse.InferOutputTensor()
        raw = encode_tensor(scratch, array, spec.datatype, binary=True)
        assert raw is not None  # binary=True always answers bytes
        request.raw_input_contents.append(raw)
    return request
