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

__all__ = ["ONNX_FILE", "OnnxModel", "onnx_providers"]

ONNX_FILE = "model.onnx"
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
}


def _dtype(element_type: str) -> np.dtype[Any]:
    try:
        return np.dtype(_ELEMENT_TYPES[element_type])
    except KeyError:
        raise RepositoryError(f"the ONNX model takes {element_type}, which is not served") from None


class OnnxModel:
    def __init__(
        self,
        path: Path,
        input_names: Sequence[str],
        output_names: Sequence[str],
        *,
        threads: int = 0,
        device: str = "cpu",
    ) -> None:
        providers = onnx_providers(device)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only
        try:
            self._session: ort.InferenceSession | None = ort.InferenceSession(
                str(path), sess_options=options, providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            # Its words are for the log (the chained cause), not for clients.
            raise RepositoryError(
                f"cannot load ONNX model {path.name}: ONNX Runtime could not read it"
            ) from exc
        if device != "cpu" and self._session.get_providers()[0] != _CUDA:
            raise BackendUnavailable(
                f"ONNX Runtime could not start {_CUDA} on '{device}' for {path} "
                "(it would have run on the CPU)"
            )
        graph_inputs = [i.name for i in self._session.get_inputs()]
        # Each input is fed in its graph's element type (float32 for exports of float
        # models; an integer or boolean input keeps its own), as the signature declares it.
        self._dtypes = {i.name: _dtype(i.type) for i in self._session.get_inputs()}
        graph_outputs = [o.name for o in self._session.get_outputs()]
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
            graph: np.ascontiguousarray(inputs[name], dtype=self._dtypes[graph])
            for name, graph in self._inputs.items()
        }
        results = session.run(self._output_order, feed)
        return {
            self._outputs[name]: value
            for name, value in zip(self._output_order, results, strict=True)
        }

    def close(self) -> None:
        self._session = None
