"""TFBackend: trains Keras models, saves them as SavedModels and serves their signatures,
natively or exported to TFLite (and to ONNX, which the core runs); it also serves the
SavedModels users bring in Triton's layout (`describe`, `load_file`: `tf_service.savedmodel`).

Requests go through the SavedModel's `serving_default` concrete function, never
`keras.Model.predict`: predict builds a dataset and an iterator on every call (tens of
milliseconds), the concrete function is one graph execution (a fraction of a millisecond).
The served model takes and returns raw units (regression) or returns softmax probabilities
(classification); see `tf_service.models`.

Device: the service's setting (`cpu`, `cuda`, `cuda:N`) places SavedModels (their variables at
load, their ops at each call); a GPU TensorFlow does not see refuses to start the backend.
TFLite runs on the CPU whatever the device (the Python interpreter has no GPU delegate); ONNX
follows the device in the core (`serving.engine.onnx_model`).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import keras
import tensorflow as tf

from serving.backend import Model, ModelFile, TrainResult, TrainSpec
from serving.backend.architectures import get, signature_for
from serving.engine.onnx_model import ONNX_FILE
from serving.errors import InvalidInput
from serving.types import Signature
from tf_service import savedmodel
from tf_service.export import TFLITE_FILE, TFLiteModel, to_onnx, to_tflite
from tf_service.models import ARCHITECTURES
from tf_service.savedmodel import SERVING_KEY, SavedModel, open_savedmodel, placement
from tf_service.training import device_for, train

__all__ = ["SAVEDMODEL_DIR", "TFBackend"]

logger = logging.getLogger(__name__)

SAVEDMODEL_DIR = "model.savedmodel"
# Names become signature keys, and SavedModel rewrites any other character of an input's key
# (`size-sqft` is served as `size_sqft`), so requests would no longer match.
_TENSOR_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,127}$")


class _Exported(tf.Module):  # type: ignore[misc]
    """What the SavedModel holds: the Keras model (its variables) and one serving function
    whose input and output keys are the names the protocol uses."""

    def __init__(
        self, model: keras.Model, input_shape: tuple[int, ...], input_name: str, output_name: str
    ) -> None:
        super().__init__()
        self.model = model

        def serve(x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {output_name: model(x, training=False)}

        # The TensorSpec's name, not the Python argument's, becomes the signature's input key.
        spec = tf.TensorSpec([None, *input_shape], tf.float32, name=input_name)
        self.serve = tf.function(serve, input_signature=[spec])


# What each runtime's export writes, and what converts the serving function to it.
_EXPORTS: dict[str, tuple[str, Callable[[Any], bytes]]] = {
    "tflite": (TFLITE_FILE, to_tflite),
    "onnx": (ONNX_FILE, to_onnx),
}


class TFBackend:
    framework = "tensorflow"
    triton_platform = "tensorflow_savedmodel"
    triton_backend = "tensorflow"
    runtimes: Mapping[str, str] = MappingProxyType(
        {"native": "tensorflow_savedmodel", "tflite": "tensorflow_lite", "onnx": "onnxruntime_onnx"}
    )

    def __init__(
        self, *, intra_op_threads: int = 0, inter_op_threads: int = 0, device: str = "cpu"
    ) -> None:
        """Thread counts of 0 keep TensorFlow's defaults (one per core). `intra_op_threads`
        also sizes each TFLite interpreter's pool. `device` is `cpu`, `cuda` or `cuda:N`
        (BackendUnavailable if TensorFlow sees no such GPU)."""
        if intra_op_threads < 0 or inter_op_threads < 0:
            raise ValueError("thread counts must be >= 0")
        self.device = device
        self._tf_device = device_for(device)
        self._tflite_threads = intra_op_threads
        try:
            if intra_op_threads:
                tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
            if inter_op_threads:
                tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
        except RuntimeError:
            # The pools are fixed once TF has run anything (e.g. a second backend instance).
            logger.warning(
                "TensorFlow is already initialised; keeping its thread pools "
                "(intra_op=%s, inter_op=%s)",
                tf.config.threading.get_intra_op_parallelism_threads(),
                tf.config.threading.get_inter_op_parallelism_threads(),
            )

    def device_stats(self) -> dict[str, float]:
        """The GPU memory TensorFlow's allocator holds, now and at its peak, for the metrics
        (`twinserve_device_*`); nothing on a CPU."""
        if self._tf_device.startswith("/CPU"):
            return {}
        info = tf.config.experimental.get_memory_info(self._tf_device.lstrip("/"))
        return {
            "memory_allocated_bytes": float(info["current"]),
            "memory_peak_bytes": float(info["peak"]),
        }

    def train(self, spec: TrainSpec, version_dir: Path) -> TrainResult:
        """Trains on `spec.device` ("" is the service's) and writes `version_dir/model.savedmodel`.

        Runs one training at a time per process (see `tf_service.training`). An exception
        raised by `spec.on_epoch` stops training and propagates unchanged."""
        _check_spec(spec)
        device = device_for(spec.device or self.device)
        started = time.perf_counter()
        model, metrics = train(spec, device)
        metrics["train_seconds"] = round(time.perf_counter() - started, 3)
        logger.info("trained %s on %s: %s", spec.architecture, device, metrics)

        exported = _Exported(model, spec.x.shape[1:], spec.input_name, spec.output_name)
        tf.saved_model.save(
            exported,
            str(version_dir / SAVEDMODEL_DIR),
            signatures={SERVING_KEY: exported.serve.get_concrete_function()},
        )
        signature = signature_for(
            get(spec.architecture), spec.x, spec.input_name, spec.output_name, spec.num_classes
        )
        return TrainResult(signature=signature, metrics=metrics)

    def load(self, version_dir: Path, architecture: str, runtime: str = "native") -> Model:
        """Loads the SavedModel ("native") or the TFLite export ("tflite"). `architecture` is
        not needed: both formats carry their own graph."""
        if runtime == "tflite":
            if not self._tf_device.startswith("/CPU"):
                logger.info("%s: TFLite runs on the CPU (device %s)", version_dir, self.device)
            return TFLiteModel(version_dir / TFLITE_FILE, threads=self._tflite_threads)
        if runtime != "native":
            raise InvalidInput(
                f"TFBackend loads the 'native' and 'tflite' runtimes, not '{runtime}'"
                + (" (the core runs ONNX exports itself)" if runtime == "onnx" else "")
            )
        with placement(self._tf_device):  # variables live where the ops will run
            loaded, function = open_savedmodel(version_dir / SAVEDMODEL_DIR)
        return SavedModel(loaded, function, self._tf_device)

    def describe(self, path: Path) -> Signature:
        """`path`'s `serving_default` signature (`tf_service.savedmodel.describe`)."""
        return savedmodel.describe(path)

    def load_file(self, model: ModelFile) -> Model:
        """A user's SavedModel, checked against `model.signature` and placed as `load`
        places ours (`tf_service.savedmodel.load_file`)."""
        return savedmodel.load_file(model, self._tf_device)

    def export(self, version_dir: Path, architecture: str, runtime: str) -> None:
        """Writes `model.tflite` ("tflite") or `model.onnx` ("onnx") into `version_dir`, both
        converted from the SavedModel's frozen serving function (`tf_service.export`)."""
        if runtime not in _EXPORTS:
            raise InvalidInput(
                f"TFBackend exports the runtimes {', '.join(_EXPORTS)}, not '{runtime}'"
            )
        filename, convert = _EXPORTS[runtime]
        started = time.perf_counter()
        loaded, function = open_savedmodel(version_dir / SAVEDMODEL_DIR)
        content = convert(function)
        del loaded  # kept alive until now: `function` holds its variables weakly
        (version_dir / filename).write_bytes(content)
        logger.info(
            "exported %s to %s (%d bytes) in %.2f s",
            version_dir,
            runtime,
            len(content),
            time.perf_counter() - started,
        )


def _check_spec(spec: TrainSpec) -> None:
    """What TensorFlow adds to the core's validation of the spec."""
    if spec.architecture not in ARCHITECTURES:
        raise InvalidInput(
            f"unknown architecture '{spec.architecture}' for TensorFlow; "
            f"supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    for name in (spec.input_name, spec.output_name):
        if not _TENSOR_NAME.match(name):
            raise InvalidInput(
                f"invalid tensor name '{name}' for TensorFlow: use letters, digits and '_', "
                "starting with a letter"
            )
