"""A NumPy backend for testing the core without TensorFlow or PyTorch (as httpx ships
`MockTransport`). It fits y = w x + b by least squares, and stores w and b as JSON."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from serving.backend import Model, TrainResult, TrainSpec
from serving.errors import InvalidInput, RepositoryError
from serving.types import Signature, TensorSpec

__all__ = ["AffineBackend"]

_FILE = "affine.json"


class _AffineModel:
    def __init__(
        self,
        weight: float,
        bias: float,
        input_name: str,
        output_name: str,
        gate: threading.Event | None,
    ) -> None:
        self.weight, self.bias = weight, bias
        self.input_name, self.output_name = input_name, output_name
        self.gate = gate

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.gate is not None:
            self.gate.wait()  # lets tests hold a call in flight
        x = inputs[self.input_name].astype(np.float32)
        return {self.output_name: (x * self.weight + self.bias).astype(np.float32)}

    def close(self) -> None:
        pass


class AffineBackend:
    platform = "numpy_affine"

    def __init__(self, *, framework: str = "fake", gate: threading.Event | None = None) -> None:
        # `framework` lets one test stand up fake "tensorflow" and "pytorch" services.
        self.framework = framework
        self.gate = gate

    def train(self, spec: TrainSpec, version_dir: Path) -> TrainResult:
        if spec.architecture != "linear":
            raise InvalidInput(f"unknown architecture '{spec.architecture}' (supported: linear)")
        x = spec.x.reshape(-1).astype(np.float64)
        y = spec.y.reshape(-1).astype(np.float64)
        weight, bias = np.polyfit(x, y, 1)
        (version_dir / _FILE).write_text(
            json.dumps(
                {
                    "weight": float(weight),
                    "bias": float(bias),
                    "input": spec.input_name,
                    "output": spec.output_name,
                }
            )
        )
        signature = Signature(
            inputs=(TensorSpec(spec.input_name, "FP32", (-1, 1)),),
            outputs=(TensorSpec(spec.output_name, "FP32", (-1, 1)),),
        )
        return TrainResult(signature, {"weight": float(weight), "bias": float(bias)})

    def load(self, version_dir: Path, architecture: str) -> Model:
        try:
            raw = json.loads((version_dir / _FILE).read_text())
            return _AffineModel(
                float(raw["weight"]), float(raw["bias"]), raw["input"], raw["output"], self.gate
            )
        except (OSError, ValueError, KeyError) as exc:
            raise RepositoryError(f"cannot load {version_dir}: {exc}") from exc
