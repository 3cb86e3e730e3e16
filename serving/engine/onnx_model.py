"""ONNX Runtime as a runtime for any framework's export: framework-free, so it lives here.

Backends write `model.onnx`; the core loads and runs it. Inputs and outputs are matched to
the version's signature by position (exporters rename tensors, e.g. `size_sqft:0`).

The device is the service's (`cpu`, `cuda`, `cuda:N`): a GPU device needs ONNX Runtime's
CUDAExecutionProvider (the `onnxruntime-gpu` build). ONNX Runtime would quietly fall back to
the CPU when the provider is missing or fails to initialise; that is refused instead, so a
model said to run on a GPU does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from serving.errors import BackendUnavailable, InvalidInput, ModelNotReady, RepositoryError
from serving.types import Signature, TensorSpec

__all__ = ["ONNX_FILE", "OnnxModel", "describe_onnx", "onnx_providers"]

ONNX_FILE = "model.onnx"
# What ONNX Runtime raises for inputs it refuses (its other errors are the model's or ours).
_ORT_INVALID: type[Exception] = getattr(
    getattr(ort.capi, "onnxruntime_pybind11_state", None), "InvalidArgument", ValueError
)
_CUDA = "CUDAExecutionProvider"
_DEVICE = re.compile(r"cpu|cuda(?::(\d+))?")


def onnx_providers(device: str) -> list[Any]:
    """ONNX Runtime's providers for `device`; BackendUnavailable (with the reason) when this
    ONNX Runtime cannot use the GPU asked for."""
    match = _DEVICE.fullmatch(device)
    if match is None:
        raise InvalidInput(f"unsupported device '{device}': use 'cpu', 'cuda' or 'cuda:N'")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    if _CUDA not in available:
        raise BackendUnavailable(
            f"device '{device}' requested but ONNX Runtime {ort.__version__} has no "
            f"{_CUDA} (it offers {', '.join(available)}; the GPU build is onnxruntime-gpu)"
        )
    return [(_CUDA, {"device_id": int(match.group(1) or 0)}), "CPUExecutionProvider"]


# ONNX Runtime's names of tensor element types (`NodeArg.type`) and their NumPy dtypes.
_ELEMENT_TYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
    "tensor(string)": np.str_,
}
# The protocol's datatype of each element type.
_DATATYPES = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(float16)": "FP16",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}


def _dtype(element_type: str, name: str = "") -> np.dtype[Any]:
    try:
        return np.dtype(_ELEMENT_TYPES[element_type])
    except KeyError:
        what = f"tensor '{name}' is" if name else "the ONNX model takes"
        raise RepositoryError(f"{what} {element_type}, which is not served") from None


def _session(path: Path, options: ort.SessionOptions, providers: list[Any]) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        # Its words are for the log (the chained cause), not for clients.
        raise RepositoryError(
            f"cannot load ONNX model {path.name}: ONNX Runtime could not read it"
        ) from exc


def _spec(arg: Any) -> TensorSpec:
    datatype = _DATATYPES.get(arg.type)
    if datatype is None:
        raise RepositoryError(f"tensor '{arg.name}' is {arg.type}, which is not served")
    # Named (symbolic) and unknown dimensions are dynamic.
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in arg.shape)
    return TensorSpec(arg.name, datatype, shape)


def describe_onnx(path: Path) -> Signature:
    """The inputs and outputs an ONNX file's graph declares (Triton's auto-completion):
    names, datatypes, and -1 for every dimension the graph leaves open."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = _session(path, options, ["CPUExecutionProvider"])
    return Signature(
        inputs=tuple(_spec(arg) for arg in session.get_inputs()),
        outputs=tuple(_spec(arg) for arg in session.get_outputs()),
    )


class OnnxModel:
    """An ONNX file in an ONNX Runtime session. Our exports' tensors are matched to the
    signature by position (exporters rename tensors, e.g. `size_sqft:0`); a user's file
    (`by_name`) is served by its graph's own names, as Triton serves it, and may declare a
    subset of its outputs, each of the datatype the graph gives it."""

    def __init__(
        self,
        path: Path,
        input_names: Sequence[str],
        output_names: Sequence[str],
        *,
        threads: int = 0,
        device: str = "cpu",
        signature: Signature | None = None,
    ) -> None:
        providers = onnx_providers(device)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only
        self._session: ort.InferenceSession | None = _session(path, options, providers)
        if device != "cpu" and self._session.get_providers()[0] != _CUDA:
            raise BackendUnavailable(
                f"ONNX Runtime could not start {_CUDA} on '{device}' for {path} "
                "(it would have run on the CPU)"
            )
        graph_inputs = [i.name for i in self._session.get_inputs()]
        # Each input is fed in its graph's element type (float32 for exports of float
        # models; an integer or boolean input keeps its own), as the signature declares it.
        self._dtypes = {i.name: _dtype(i.type, i.name) for i in self._session.get_inputs()}
        graph_outputs = [o.name for o in self._session.get_outputs()]
        if signature is not None:
            _check_declared(self._session, signature)
            self._inputs = {name: name for name in input_names}
            self._outputs = {name: name for name in output_names}
            self._output_order = list(output_names)
            return
        if len(graph_inputs) != len(input_names) or len(graph_outputs) != len(output_names):
            raise RepositoryError(
                f"{path} has {len(graph_inputs)} inputs and {len(graph_outputs)} outputs; "
                f"the signature declares {len(input_names)} and {len(output_names)}"
            )
        self._inputs = dict(zip(input_names, graph_inputs, strict=True))
        self._outputs = dict(zip(graph_outputs, output_names, strict=True))
        self._output_order = graph_outputs

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._session  # one read: a concurrent close() cannot pull it away mid-call
        if session is None:
            raise ModelNotReady("model has been unloaded")
        feed = {
            graph: _feed(inputs[name], self._dtypes[graph]) for name, graph in self._inputs.items()
        }
        try:
            results = session.run(self._output_order, feed)
        except _ORT_INVALID as exc:
            # The values, not the headers (checked before): an index out of a Gather's
            # range, say. The client's to fix; ONNX Runtime's first line says what.
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise InvalidInput(f"ONNX Runtime refused the inputs: {first[:300]}") from exc
        return {
            self._outputs[name]: value
            for name, value in zip(self._output_order, results, strict=True)
        }

    def close(self) -> None:
        self._session = None


def _feed(array: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    if dtype.kind == "U":
        # BYTES arrive as bytes objects; ONNX Runtime's string tensors take str.
        return np.vectorize(_text, otypes=[object])(array) if array.size else array
    return np.ascontiguousarray(array, dtype=dtype)


def _text(item: Any) -> str:
    return item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)


def _check_declared(session: ort.InferenceSession, signature: Signature) -> None:
    """RepositoryError unless every declared tensor is the graph's, of its datatype and a
    shape the graph allows (a declaration may fix a dimension the graph leaves open)."""
    for kind, graph, declared in (
        ("input", session.get_inputs(), signature.inputs),
        ("output", session.get_outputs(), signature.outputs),
    ):
        found = {arg.name: _spec(arg) for arg in graph}
        if kind == "input" and sorted(found) != sorted(s.name for s in declared):
            raise RepositoryError(
                f"the declared inputs {sorted(s.name for s in declared)} are not the ONNX "
                f"graph's {sorted(found)}"
            )
        for spec in declared:
            actual = found.get(spec.name)
            if actual is None:
                raise RepositoryError(
                    f"the ONNX graph has no {kind} '{spec.name}' (its {kind}s: "
                    f"{', '.join(sorted(found))})"
                )
            if actual.datatype != spec.datatype:
                raise RepositoryError(
                    f"{kind} '{spec.name}' is declared {spec.datatype}, but the ONNX graph "
                    f"takes {actual.datatype}"
                )
            if len(actual.shape) != len(spec.shape) or any(
                got not in (-1, want) for got, want in zip(actual.shape, spec.shape, strict=True)
            ):
                raise RepositoryError(
                    f"{kind} '{spec.name}' is declared with shape {list(spec.shape)}, but the "
                    f"ONNX graph has {list(actual.shape)} (-1 is any size)"
                )
