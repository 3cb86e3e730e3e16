"""What the runtime-parity tests of both frameworks share (test_tf_runtimes.py,
test_torch_runtimes.py): a version trained once per module with its exports, and the held-out
data to check each export against the native model on."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.backend import Backend, Model, TrainSpec
from serving.backend.architectures import get
from serving.engine.onnx_model import ONNX_FILE, OnnxModel
from serving.training.datasets import Dataset, load_builtin, validation_split

__all__ = ["ARCHITECTURES", "Exported", "dataset", "train_and_export"]

ARCHITECTURES = ["linear", "mlp", "cnn"]
DATASETS = {"linear": "house_price", "mlp": "house_features", "cnn": "digits"}


@functools.cache
def dataset(architecture: str) -> Dataset:
    return load_builtin(DATASETS[architecture])


@dataclass
class Exported:
    """A trained version directory with its exports, and how long each export took."""

    spec: TrainSpec
    path: Path
    export_seconds: dict[str, float]

    def load(self, backend: Backend, runtime: str) -> Model:
        if runtime == "onnx":  # what the core does (serving.engine.runtimes.load_runtime)
            return OnnxModel(self.path / ONNX_FILE, [self.spec.input_name], [self.spec.output_name])
        return backend.load(self.path, self.spec.architecture, runtime)

    def predict(self, model: Model, x: np.ndarray) -> np.ndarray:
        return model.predict({self.spec.input_name: x})[self.spec.output_name]


def train_and_export(
    backend: Backend,
    path: Path,
    architecture: str,
    runtimes: Sequence[str],
    *,
    epochs: int | None = None,
) -> Exported:
    """Trains `architecture` on its dataset (the architecture's epochs unless given) into
    `path`, then exports each of `runtimes`, timing them."""
    data, defaults = dataset(architecture), get(architecture)
    x, y, x_val, y_val = validation_split(data.x_train, data.y_train, 0.2, seed=0)
    spec = TrainSpec(
        architecture,
        x,
        y,
        x_val,
        y_val,
        input_name=data.input_name,
        output_name=data.output_name,
        task=data.task,
        num_classes=data.num_classes,
        epochs=defaults.epochs if epochs is None else epochs,
        batch_size=defaults.batch_size,
        learning_rate=defaults.learning_rate,
    )
    backend.train(spec, path)
    seconds = {}
    for runtime in runtimes:
        started = time.perf_counter()
        backend.export(path, architecture, runtime)
        seconds[runtime] = time.perf_counter() - started
    return Exported(spec, path, seconds)
