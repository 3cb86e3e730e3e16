"""A TFLite export served by the TFLite interpreter, in process.

One interpreter per loaded version, behind a lock: an interpreter owns its tensors' buffers
and is not safe to call from two threads at once. A batch-1 call takes a few microseconds,
so the lock is held only briefly.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from serving.errors import InvalidInput, ModelNotReady, RepositoryError

__all__ = ["TFLITE_FILE", "TFLiteModel"]

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
        """Loads `path` (a `model.tflite` that `tf_service.export.to_tflite` wrote).
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
            raise RepositoryError(f"cannot load the TFLite model {path}: {exc}") from exc
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
