"""TensorFlow's runtimes besides the SavedModel: the serving function converted to TFLite and
ONNX, and a TFLite file served by the TFLite interpreter (the core runs ONNX files itself).

Both conversions start from the same frozen graph: the serving function with its variables
folded into constants. Converting the SavedModel itself (`TFLiteConverter.from_saved_model`)
keeps the variables as READ_VARIABLE ops, and TF 2.21's TFLite runtime then reads garbage
(341 thousand, or 1e31, for every house size); a frozen graph has nothing left to read.

One interpreter per loaded TFLite version, behind a lock: an interpreter owns its tensors'
buffers and is not safe to call from two threads at once. A batch-1 call takes a few
microseconds, so the lock is held only briefly.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tf2onnx
from tensorflow.python.framework.convert_to_constants import (
    convert_variables_to_constants_v2,
)
from tensorflow.python.util import deprecation

from serving.errors import InvalidInput, ModelNotReady, RepositoryError

__all__ = ["ONNX_OPSET", "TFLITE_FILE", "TFLiteModel", "to_onnx", "to_tflite"]

ONNX_OPSET = 17


@dataclass(frozen=True, slots=True)
class _Frozen:
    """The serving function without variables, and the protocol's names for its tensors."""

    function: Any  # a ConcreteFunction taking one tensor and returning a list of one
    input_name: str
    input_spec: tf.TensorSpec
    output_name: str


def _freeze(function: Any) -> _Frozen:
    """`function` is a SavedModel's serving signature; the caller keeps the loaded SavedModel
    alive while this runs (the function holds its variables weakly)."""
    _, inputs = function.structured_input_signature
    outputs = function.structured_outputs
    if len(inputs) != 1 or len(outputs) != 1:
        raise RepositoryError(
            f"the serving signature has {len(inputs)} inputs and {len(outputs)} outputs; "
            "exports take exactly one of each"
        )
    ((input_name, input_spec),) = inputs.items()
    (output_name,) = outputs
    return _Frozen(convert_variables_to_constants_v2(function), input_name, input_spec, output_name)


def to_tflite(function: Any) -> bytes:
    """A TFLite flatbuffer whose `serving_default` signature has the same input and output
    names as `function`, with a dynamic batch dimension."""
    frozen = _freeze(function)

    def serve(x: tf.Tensor) -> dict[str, tf.Tensor]:
        # The frozen function answers a list; a dict makes the output name the TFLite
        # signature's output key (otherwise it is `output_0`).
        return {frozen.output_name: frozen.function(x)[0]}

    module = tf.Module()
    spec = tf.TensorSpec(frozen.input_spec.shape, frozen.input_spec.dtype, name=frozen.input_name)
    module.serve = tf.function(serve, input_signature=[spec])
    # Passing the module (`trackable_obj`) takes the converter's current path, which keeps the
    # signature; without it TF logs that the path it falls back to is deprecated.
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.serve.get_concrete_function()], module
    )
    content: bytes = converter.convert()
    return content


def to_onnx(function: Any) -> bytes:
    """A serialised ONNX model (opset ONNX_OPSET) with one input and one output named as in
    `function`'s signature, batch dimension dynamic."""
    frozen = _freeze(function)
    graph = frozen.function.graph
    (input_tensor,) = frozen.function.inputs
    (output_tensor,) = frozen.function.outputs
    # tf2onnx calls TF1 graph utilities (convert_variables_to_constants, extract_sub_graph)
    # that log a deprecation notice through TensorFlow's logger on first use: nothing the
    # operator can act on. `silence` only turns those notices off, for this call.
    with deprecation.silence():
        model, _ = tf2onnx.convert.from_graph_def(
            graph.as_graph_def(),
            input_names=[input_tensor.name],
            output_names=[output_tensor.name],
            opset=ONNX_OPSET,
            # `size_sqft:0` and `Identity:0` become the protocol's names; the core matches
            # by position anyway, but other ONNX consumers see the signature's names.
            tensors_to_rename={
                input_tensor.name: frozen.input_name,
                output_tensor.name: frozen.output_name,
            },
        )
    serialised: bytes = model.SerializeToString()
    return serialised


TFLITE_FILE = "model.tflite"
_SERVING_KEY = "serving_default"


def _interpreter(content: bytes, threads: int) -> tf.lite.Interpreter:
    with warnings.catch_warnings():
        # TF 2.21 warns on every construction that tf.lite.Interpreter will move to the
        # `ai_edge_litert` package; the interpreter bundled with TF still works. Only that
        # warning is ignored, and only here. (catch_warnings swaps the process-wide filters
        # for the duration: a load is rare and brief, so that is an acceptable window.)
        warnings.filterwarnings(
            "ignore",
            message=r"\s*Warning: tf\.lite\.Interpreter is deprecated",
            category=UserWarning,
        )
        return tf.lite.Interpreter(model_content=content, num_threads=threads or None)


def _signature(interpreter: tf.lite.Interpreter) -> tuple[dict[str, Any], dict[str, Any]]:
    """The serving signature's input and output details by name. The runner must be gone
    before the interpreter (re)allocates tensors, which refuses while anything else holds it."""
    runner = interpreter.get_signature_runner(_SERVING_KEY)
    return runner.get_input_details(), runner.get_output_details()


class TFLiteModel:
    def __init__(self, path: Path, *, threads: int = 0) -> None:
        """Loads `path` (a `model.tflite` that `to_tflite` wrote).
        `threads` of 0 keeps TFLite's default."""
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            raise RepositoryError(f"{path} does not exist: export the tflite runtime") from None
        except OSError as exc:
            raise RepositoryError(f"cannot read {path}: {exc.strerror}") from exc
        try:
            interpreter = _interpreter(content, threads)
            inputs, outputs = _signature(interpreter)
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:  # not a flatbuffer, no such signature...
            # The interpreter's words are for the log (the chained cause), not for clients.
            raise RepositoryError(
                f"cannot load the TFLite model {path.name}: the interpreter could not read it"
            ) from exc
        if len(inputs) != 1:
            raise RepositoryError(f"{path} has {len(inputs)} inputs; TFLiteModel takes one")
        ((self._input_name, detail),) = inputs.items()
        self._input_index: int = detail["index"]
        self._input_shape = tuple(int(d) for d in detail["shape_signature"])  # -1: any size
        self._shape = tuple(int(d) for d in detail["shape"])  # what is allocated now
        self._outputs: dict[str, int] = {name: d["index"] for name, d in outputs.items()}
        self._expected = (
            f"{self._input_name} float32 "
            f"[{', '.join('None' if d < 0 else str(d) for d in self._input_shape)}]"
        )
        self._lock = threading.Lock()
        self._interpreter: tf.lite.Interpreter | None = interpreter

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._input_name not in inputs:
            raise InvalidInput(f"missing model input(s): {self._input_name}")
        x = np.ascontiguousarray(inputs[self._input_name], dtype=np.float32)
        if len(x.shape) != len(self._input_shape) or any(
            want >= 0 and got != want for got, want in zip(x.shape, self._input_shape, strict=True)
        ):
            raise InvalidInput(f"the model expects {self._expected}, got {list(x.shape)}")
        with self._lock:
            interpreter = self._interpreter
            if interpreter is None:
                raise ModelNotReady("the model version was unloaded")
            if x.shape != self._shape:
                # The batch dimension is dynamic; buffers are re-planned only when it changes.
                interpreter.resize_tensor_input(self._input_index, x.shape, strict=True)
                interpreter.allocate_tensors()
                self._shape = x.shape
            interpreter.set_tensor(self._input_index, x)
            interpreter.invoke()
            # get_tensor copies, so the answer outlives the next call's buffers.
            return {name: interpreter.get_tensor(index) for name, index in self._outputs.items()}

    def close(self) -> None:
        with self._lock:  # waits for a call in flight
            self._interpreter = None
