"""The interface every framework implements, and the framework-free types it exchanges.

A backend is small on purpose (httpx's transport is the model): load a stored version, predict
on NumPy arrays, train. Everything else (protocol, validation, repository, errors) lives in the
shared core, so `tf_service/` and `torch_service/` hold only framework code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from serving.types import Signature

__all__ = ["Backend", "Model", "TrainResult", "TrainSpec"]


class Model(Protocol):
    """A loaded model version. `predict` is synchronous and may be called from several
    threads at once; the core runs it off the event loop."""

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class TrainSpec:
    """What to train: an architecture known to both frameworks and its data."""

    architecture: str
    x: np.ndarray
    y: np.ndarray
    input_name: str = "input"
    output_name: str = "output"
    epochs: int = 200
    batch_size: int = 32
    learning_rate: float = 0.05
    seed: int = 0
    validation_split: float = 0.2
    # Called after every epoch with (epoch, metrics); issue #3 streams these to clients.
    on_epoch: Callable[[int, Mapping[str, float]], None] | None = None


@dataclass(frozen=True, slots=True)
class TrainResult:
    signature: Signature
    metrics: dict[str, float] = field(default_factory=dict)


class Backend(Protocol):
    framework: str  # "tensorflow" or "pytorch": the value of the `framework` parameter
    platform: str  # the protocol's platform name reported in model metadata

    def load(self, version_dir: Path, architecture: str) -> Model:
        """Loads the files `train` wrote into `version_dir`."""
        ...

    def train(self, spec: TrainSpec, version_dir: Path) -> TrainResult:
        """Trains `spec` and writes the model's files into the (empty) `version_dir`."""
        ...
