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

from serving.pb import inference_pb2 as pb

__all__ = ["Checker", "OutputClose", "output_array"]

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
