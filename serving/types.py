"""Protocol-neutral data types passed between the gRPC layer, the core and the backends."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "EncodedInput",
    "InferRequest",
    "InferResponse",
    "InputTensor",
    "ParamValue",
    "RequestedOutput",
    "Signature",
    "TensorSpec",
]

ParamValue = bool | int | float | str


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A declared model input or output; -1 in `shape` matches any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def accepts_shape(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.shape) and all(
            want in (-1, got) for want, got in zip(self.shape, shape, strict=True)
        )


@dataclass(frozen=True, slots=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.inputs if spec.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.outputs if spec.name == name), None)


@dataclass(frozen=True, slots=True)
class InputTensor:
    name: str
    datatype: str
    data: np.ndarray


@dataclass(frozen=True, slots=True)
class EncodedInput:
    """An input whose header and size were checked against its contents, still in its wire
    form: the data plane checks the header against the model before paying for `decode`."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    # Elements `decode` handles one at a time (typed contents, BYTES); 0 for a zero-copy view.
    # Big ones are decoded off the event loop.
    work: int
    decode: Callable[[], np.ndarray]


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    binary: bool = True


@dataclass(slots=True)
class InferRequest:
    model_name: str
    model_version: str
    inputs: list[EncodedInput]
    id: str = ""
    parameters: dict[str, ParamValue] = field(default_factory=dict)
    # Empty means "every output the model declares".
    outputs: list[RequestedOutput] = field(default_factory=list)
    # Outputs not named in `outputs` are sent raw unless the request asks otherwise.
    binary_output: bool = True


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: dict[str, np.ndarray]
    # Output name -> datatype declared by the model.
    datatypes: dict[str, str]
    # Output name -> send as raw bytes (True) or typed contents (False).
    binary: dict[str, bool]
    parameters: dict[str, ParamValue] = field(default_factory=dict)
