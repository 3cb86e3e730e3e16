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

__all__ = ["EPOCH_METRICS", "Backend", "Model", "TrainResult", "TrainSpec"]


class Model(Protocol):
    """A loaded model version. `predict` is synchronous and may be called from several
    threads at once; the core runs it off the event loop."""

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


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

    def train(self, spec: TrainSpec, version_dir: Path) -> TrainResult:
        """Trains `spec` and writes the model's native files into the (empty) `version_dir`."""
        ...

    def export(self, version_dir: Path, architecture: str, runtime: str) -> None:
        """Writes `runtime`'s files (for "onnx": `model.onnx`, with the signature's single
        input and output, batch dimension dynamic) into `version_dir`, from the native model
        stored there. The core checks the export against the native model afterwards."""
        ...
