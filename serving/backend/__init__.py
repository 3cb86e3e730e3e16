"""The interface every framework implements, and the framework-free types it exchanges.

A backend is small on purpose (httpx's transport is the model): load a stored version, predict
on NumPy arrays, train. Everything else (protocol, validation, repository, errors) lives in the
shared core, so `tf_service/` and `torch_service/` hold only framework code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from serving.types import Signature

__all__ = ["EPOCH_METRICS", "Backend", "Model", "ModelFile", "TrainResult", "TrainSpec"]


class Model(Protocol):
    """A loaded model version. `predict` is synchronous and may be called from several
    threads at once; the core runs it off the event loop."""

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ModelFile:
    """A model the user brought in Triton's layout (`<model>/<version>/model.savedmodel`,
    `model.pt`, or `default_model_filename`), as the core resolved it from `config.pbtxt`
    or auto-completed it from the file (`Backend.describe`).

    `signature` is what the model is served by: names, datatypes and full shapes (-1 is any
    size; with Triton's `max_batch_size` > 0 the core has put the batch dimension, -1, first).
    The model's `predict` gets every input of the signature, by name, in the NumPy dtype
    `serving.protocol.codec` decodes its datatype to: BOOL `bool`, INTn/UINTn, FP16, FP32,
    FP64 as themselves, BF16 widened to float32 (cast it to bfloat16 inside), BYTES an object
    array of `bytes`. Arrays may be read-only views of the request. It returns at least every
    output of the signature, by name, in any dtype that converts to its datatype (BF16 as
    float32 or bfloat16, BYTES as bytes or str objects)."""

    path: Path  # the file or directory (a SavedModel) inside the version directory
    signature: Signature


@dataclass(frozen=True, slots=True)
class TrainSpec:
    """What to train: an architecture known to both frameworks (`serving.backend.architectures`),
    its data, and hyper-parameters. Built and validated by the core; backends trust it.

    `x` is float32 with the batch first; `y` is float32 [N, 1] for regression and int64 [N]
    class indices for classification. `x_val`/`y_val` are the validation rows (the core splits
    them off, so both frameworks validate on the same rows); they may have 0 rows.
    Normalisation statistics come from `x`/`y` only.
    """

    architecture: str
    x: np.ndarray
    y: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    input_name: str = "input"
    output_name: str = "output"
    task: Literal["regression", "classification"] = "regression"
    num_classes: int = 0  # classification only
    epochs: int = 200
    batch_size: int = 32
    learning_rate: float = 0.05
    optimizer: Literal["adam", "sgd"] = "adam"
    seed: int = 0
    device: str = ""  # "" is the backend's default device
    # Called after every epoch (numbered from 1) with the epoch's metrics (see EPOCH_METRICS).
    # It may raise to stop training (cancellation, a loss gone NaN): backends let it propagate.
    on_epoch: Callable[[int, Mapping[str, float]], None] | None = None


# What a backend reports after each epoch, the same in both frameworks:
#   loss      the training objective averaged over the epoch: MSE on the normalised target
#             (regression) or cross-entropy (classification)
#   val_loss  the same objective on the validation split
#   val_metric  RMSE in target units (regression) or accuracy in [0, 1] (classification)
# The val_ entries are absent when there are no validation rows.
EPOCH_METRICS = ("loss", "val_loss", "val_metric")


@dataclass(frozen=True, slots=True)
class TrainResult:
    signature: Signature
    metrics: dict[str, float] = field(default_factory=dict)


class Backend(Protocol):
    """What the core drives. Every member is required: the core reads none of them
    duck-typed, and the conformance suite (`tests/framework/conformance/`) runs every backend
    through the same checks."""

    framework: str  # e.g. "tensorflow": the value of the `framework` parameter
    # The runtimes this backend registers: name -> the protocol's platform name (model
    # metadata), "native" first; e.g. {"native": "tensorflow_savedmodel", "tflite":
    # "tensorflow_lite", "onnx": "onnxruntime_onnx"}. The core knows no other list: a runtime
    # a backend does not register is unknown to its service.
    runtimes: Mapping[str, str]
    # The `platform` and `backend` a Triton config.pbtxt gives for this service's models
    # (e.g. "tensorflow_savedmodel" and "tensorflow"); a config naming others is refused.
    triton_platform: str
    triton_backend: str
    # Where models run, as the service's setting spells it ("cpu", "cuda", "cuda:N"). The
    # core's ONNX runtime runs there too.
    device: str

    def device_stats(self) -> Mapping[str, float]:
        """The device's gauges for the metrics (`twinserve_device_*`, e.g.
        `memory_allocated_bytes`); empty where there is nothing to report (a CPU)."""
        ...

    def load(self, version_dir: Path, architecture: str, runtime: str = "native") -> Model:
        """Loads the files `train` (runtime "native") or `export` wrote into `version_dir`.
        Never called for "onnx": the core runs ONNX files itself (`serving.engine.onnx_model`)."""
        ...

    def describe(self, path: Path) -> Signature | None:
        """The signature a model file of `triton_platform` declares itself (a SavedModel's
        `serving_default`), for Triton's auto-completed configuration: names, datatypes, and
        shapes with -1 for every dimension the file leaves open; None for a format that
        declares none (TorchScript: its `config.pbtxt` must). RepositoryError when the file
        cannot be read. Never called for ONNX files: the core reads those itself."""
        ...

    def load_file(self, model: ModelFile) -> Model:
        """Loads a user's model file of `triton_platform` (see `ModelFile` for what its
        `predict` takes and returns); RepositoryError, with a reason a client may read, when
        the file cannot be read or does not fit the signature. Never called for ONNX files:
        the core runs those itself."""
        ...

    def train(self, spec: TrainSpec, version_dir: Path) -> TrainResult:
        """Trains `spec` and writes the model's native files into the (empty) `version_dir`."""
        ...

    def export(self, version_dir: Path, architecture: str, runtime: str) -> None:
        """Writes `runtime`'s files (for "onnx": `model.onnx`, with the signature's single
        input and output, batch dimension dynamic) into `version_dir`, from the native model
        stored there. The core checks the export against the native model afterwards."""
        ...
