"""A NumPy backend for testing the core without TensorFlow or PyTorch (as httpx ships
`MockTransport`). `linear` and `mlp` are both fitted as y = x W + b by least squares; the
epochs only report progress (optionally slowly, for cancel tests), and a learning rate above
1000 "diverges" (reports a NaN loss), as gradient descent would."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from serving.architectures import get, signature_for
from serving.backend import Model, TrainResult, TrainSpec
from serving.errors import InvalidInput, RepositoryError

__all__ = ["AffineBackend"]

_FILE = "affine.json"


class _AffineModel:
    def __init__(
        self,
        weights: np.ndarray,
        bias: float,
        input_name: str,
        output_name: str,
        gate: threading.Event | None,
    ) -> None:
        self.weights, self.bias = weights, bias
        self.input_name, self.output_name = input_name, output_name
        self.gate = gate

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.gate is not None:
            self.gate.wait()  # lets tests hold a call in flight
        x = inputs[self.input_name].astype(np.float64).reshape(len(inputs[self.input_name]), -1)
        return {self.output_name: (x @ self.weights + self.bias).astype(np.float32)}

    def close(self) -> None:
        pass


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    design = np.hstack([x.reshape(len(x), -1).astype(np.float64), np.ones((len(x), 1))])
    solution, *_ = np.linalg.lstsq(design, y.reshape(-1, 1).astype(np.float64), rcond=None)
    return solution[:-1], float(solution[-1, 0])


class AffineBackend:
    platform = "numpy_affine"

    def __init__(
        self,
        *,
        framework: str = "fake",
        gate: threading.Event | None = None,
        epoch_delay: float = 0.0,
    ) -> None:
        # `framework` lets one test stand up fake "tensorflow" and "pytorch" services.
        self.framework = framework
        self.gate = gate
        self.epoch_delay = epoch_delay

    def train(self, spec: TrainSpec, version_dir: Path) -> TrainResult:
        if spec.architecture not in ("linear", "mlp"):
            raise InvalidInput(
                f"the fake backend trains 'linear' and 'mlp', not '{spec.architecture}'"
            )
        weights, bias = _fit(spec.x, spec.y)
        for epoch in range(1, spec.epochs + 1):
            if self.epoch_delay:
                time.sleep(self.epoch_delay)
            loss = float("nan") if spec.learning_rate > 1000 else 1.0 / epoch
            metrics = {"loss": loss}
            if len(spec.x_val):
                predicted = spec.x_val.reshape(len(spec.x_val), -1) @ weights + bias
                rmse = float(np.sqrt(np.mean((predicted - spec.y_val) ** 2)))
                metrics |= {"val_loss": loss, "val_metric": rmse}
            if spec.on_epoch is not None:
                spec.on_epoch(epoch, metrics)
        (version_dir / _FILE).write_text(
            json.dumps(
                {
                    "weights": weights.reshape(-1).tolist(),
                    "bias": bias,
                    "input": spec.input_name,
                    "output": spec.output_name,
                }
            )
        )
        signature = signature_for(
            get(spec.architecture), spec.x, spec.input_name, spec.output_name, spec.num_classes
        )
        metrics_out = {"weight": float(weights.reshape(-1)[0]), "bias": bias}
        return TrainResult(signature, metrics_out)

    def load(self, version_dir: Path, architecture: str) -> Model:
        try:
            raw = json.loads((version_dir / _FILE).read_text())
            weights = np.asarray(raw["weights"], dtype=np.float64).reshape(-1, 1)
            return _AffineModel(weights, float(raw["bias"]), raw["input"], raw["output"], self.gate)
        except (OSError, ValueError, KeyError) as exc:
            raise RepositoryError(f"cannot load {version_dir}: {exc}") from exc
