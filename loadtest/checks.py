"""Answer checkers: called on every successful response during a run, so a fast wrong answer
counts as a failure instead of as a good latency.

A checker is any picklable callable `(response: bytes) -> str | None` (None: correct, else
what was wrong). Picklable because it travels to the client processes; module-level classes
like `OutputClose` are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from google.protobuf.message import DecodeError

from serving.errors import ServingError
from serving.pb import inference_pb2 as pb
from serving.protocol.codec import decode_inputs, decode_tensor, encode_tensor

__all__ = ["Checker", "OutputClose", "OutputsClose", "output_array", "output_arrays"]

Checker = Callable[[bytes], "str | None"]


def output_array(response: pb.ModelInferResponse, name: str) -> np.ndarray:
    """Output `name` of an FP32 response as an array, from raw or typed contents."""
    for index, output in enumerate(response.outputs):
        if output.name != name:
            continue
        shape = tuple(output.shape)
        if index < len(response.raw_output_contents):
            return np.frombuffer(response.raw_output_contents[index], np.float32).reshape(shape)
        return np.asarray(output.contents.fp32_contents, np.float32).reshape(shape)
    raise KeyError(name)


@dataclass(frozen=True)
class OutputClose:
    """Output `name` must have `expected`'s shape and match it within `atol`."""

    name: str
    expected: tuple[float, ...]
    shape: tuple[int, ...]
    atol: float

    @classmethod
    def of(cls, name: str, expected: np.ndarray, atol: float) -> OutputClose:
        values = np.asarray(expected, np.float32)
        return cls(name, tuple(values.ravel().tolist()), values.shape, atol)

    @cached_property
    def _expected(self) -> np.ndarray:  # built once per process, not per answer
        return np.asarray(self.expected, np.float32).reshape(self.shape)

    def __call__(self, response: bytes) -> str | None:
        try:
            answer = output_array(pb.ModelInferResponse.FromString(response), self.name)
        except KeyError:
            return f"no output '{self.name}'"
        except ValueError as exc:  # a malformed message or a shape that does not fit
            return f"unreadable answer: {exc}"
        if answer.shape != self.shape:
            return f"{self.name} has shape {list(answer.shape)}, expected {list(self.shape)}"
        diff = float(np.max(np.abs(answer - self._expected))) if answer.size else 0.0
        if not diff <= self.atol:  # NaN is wrong too
            first = float(answer.ravel()[0]) if answer.size else float("nan")
            return (
                f"{self.name} off by {diff:.4g} (first value {first:.4g}, "
                f"tolerance {self.atol:.3g})"
            )
        return None


# How far a float output may stray from the reference, relative to the reference's largest
# magnitude (at least 1). Runtimes agree within 1e-3 (checked at export); twice that leaves room
# for float32 reorderings on another device. Half precision rounds far coarser: FP16 has 11
# significant bits, BF16 8, so one reordered sum moves a value by several of their steps.
FLOAT_TOLERANCE = 2e-3
_HALF_TOLERANCE = {"FP16": 1e-2, "BF16": 5e-2}

# An output of a reference answer: name, datatype, shape, raw contents, tolerance.
_Expected = tuple[str, str, tuple[int, ...], bytes, float]


def output_arrays(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Every output by name, decoded by the codec from raw or typed contents (BF16 widened to
    float32, BYTES as an object array of bytes). ServingError for contents that do not fit."""
    raw = response.raw_output_contents
    arrays = {}
    for index, output in enumerate(response.outputs):
        if index < len(raw):
            arrays[output.name] = decode_tensor(
                output.name, output.datatype, output.shape, raw[index]
            )
            continue
        # Typed contents: an output tensor reads as an input tensor, whose decoder exists.
        request = pb.ModelInferRequest()
        request.inputs.add(
            name=output.name, datatype=output.datatype, shape=output.shape, contents=output.contents
        )
        arrays[output.name] = decode_inputs(request)[0].data
    return arrays


def _kind(array: np.ndarray) -> str:
    return "strings (BYTES)" if array.dtype.kind == "O" else "numbers"


def _difference(name: str, answer: np.ndarray, expected: np.ndarray, atol: float) -> str | None:
    """What differs between two arrays of one shape, or None."""
    if (answer.dtype.kind == "O") != (expected.dtype.kind == "O"):
        return f"{name} holds {_kind(answer)}, expected {_kind(expected)}"
    if expected.dtype.kind == "O" or atol == 0:  # strings, integers and booleans: exactly
        wrong = np.flatnonzero(answer.ravel() != expected.ravel())
        if not wrong.size:
            return None
        first = int(wrong[0])
        return (
            f"{name} differs in {wrong.size} of {expected.size} values (first at flat index "
            f"{first}: {answer.ravel()[first]!r}, expected {expected.ravel()[first]!r})"
        )
    got, want = answer.astype(np.float64), expected.astype(np.float64)
    close = np.isclose(got, want, rtol=0, atol=atol, equal_nan=True)
    if close.all():
        return None
    with np.errstate(invalid="ignore"):  # inf - inf
        diff = float(np.nanmax(np.where(close, 0.0, np.abs(got - want))))
    return (
        f"{name} off by {diff:.4g} in {int((~close).sum())} of {expected.size} values "
        f"(tolerance {atol:.3g})"
    )


@dataclass(frozen=True)
class OutputsClose:
    """Every output of a reference answer, of any datatype, must be in the answer with its
    shape: floats within a tolerance of the reference's magnitude, the rest exactly. The
    reference travels as its raw bytes (picklable, and small next to a run's answers)."""

    expected: tuple[_Expected, ...]

    @classmethod
    def of(cls, response: pb.ModelInferResponse) -> OutputsClose:
        """The checker of answers like `response`. ServingError if it cannot be decoded."""
        arrays = output_arrays(response)
        expected = []
        for output in response.outputs:
            array = arrays[output.name]
            # Encoded again, the same whether the reference came raw or typed.
            raw = encode_tensor(
                pb.ModelInferResponse.InferOutputTensor(), array, output.datatype, binary=True
            )
            assert raw is not None  # binary=True always answers bytes
            tolerance = _tolerance(output.datatype, array)
            expected.append((output.name, output.datatype, array.shape, raw, tolerance))
        return cls(tuple(expected))

    @cached_property
    def _arrays(self) -> dict[str, np.ndarray]:  # decoded once per process, not per answer
        return {
            name: decode_tensor(name, datatype, shape, raw)
            for name, datatype, shape, raw, _ in self.expected
        }

    def __call__(self, response: bytes) -> str | None:
        try:
            answer = output_arrays(pb.ModelInferResponse.FromString(response))
        except (DecodeError, ServingError, ValueError) as exc:
            return f"unreadable answer: {exc}"
        for name, _, shape, _, atol in self.expected:
            if name not in answer:
                return (
                    f"no output '{name}' (the answer has {', '.join(map(repr, answer)) or 'none'})"
                )
            if answer[name].shape != shape:
                return f"{name} has shape {list(answer[name].shape)}, expected {list(shape)}"
            problem = _difference(name, answer[name], self._arrays[name], atol)
            if problem is not None:
                return problem
        return None


def _tolerance(datatype: str, reference: np.ndarray) -> float:
    """0 (exact) for BYTES, BOOL and integers; else relative to the largest finite magnitude."""
    if reference.dtype.kind != "f":  # BF16 decodes to float32
        return 0.0
    finite = np.abs(reference[np.isfinite(reference)])
    scale = max(1.0, float(finite.max())) if finite.size else 1.0
    return _HALF_TOLERANCE.get(datatype, FLOAT_TOLERANCE) * scale
