"""Turns a training order (architecture, dataset, hyper-parameters) into a validated plan.

Everything a client can get wrong is checked here, before a job exists, so a bad order is
refused with INVALID_ARGUMENT and nothing is written anywhere.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from serving import architectures
from serving.datasets import load_builtin, validation_split
from serving.errors import InvalidInput, NotFound
from serving.repository import check_model_name

__all__ = [
    "BuiltinData",
    "CsvData",
    "InlineData",
    "TrainOrder",
    "TrainPlan",
    "plan_training",
]

MAX_EPOCHS = 100_000
MAX_CSV_BYTES = 256 * 1024 * 1024
# NumPy's generators take no negative seed, and Keras reseeds NumPy's legacy one (< 2**32).
MAX_SEED = 2**32 - 1


@dataclass(frozen=True, slots=True)
class BuiltinData:
    name: str


@dataclass(frozen=True, slots=True)
class InlineData:
    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True, slots=True)
class CsvData:
    path: str
    feature_columns: tuple[str, ...] = ()
    target_column: str = ""


@dataclass(frozen=True, slots=True)
class TrainOrder:
    """A training request as the client sent it; None means "the default"."""

    model_name: str
    architecture: str
    dataset: BuiltinData | InlineData | CsvData | None
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    optimizer: str | None = None
    seed: int | None = None
    validation_split: float | None = None
    device: str = ""


@dataclass(frozen=True, slots=True)
class TrainPlan:
    """A validated order: everything a job needs, defaults filled in."""

    model_name: str
    architecture: architectures.Architecture
    dataset: str  # a description for metadata and listings
    x: np.ndarray
    y: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    input_name: str
    output_name: str
    num_classes: int
    epochs: int
    batch_size: int
    learning_rate: float
    optimizer: Literal["adam", "sgd"]
    seed: int
    validation_split: float
    device: str
    hyperparameters: dict[str, object] = field(default_factory=dict)


def _csv(order: CsvData, data_dir: Path) -> tuple[np.ndarray, np.ndarray, str]:
    if not order.path:
        raise InvalidInput("the CSV dataset names no path")
    relative = Path(order.path)
    root = data_dir.resolve()
    target = (root / relative).resolve()
    if relative.is_absolute() or not target.is_relative_to(root):
        raise InvalidInput(
            f"CSV path '{order.path}' is outside the data directory; give a path relative to it"
        )
    if not target.is_file():
        raise NotFound(f"no CSV file '{order.path}' in the data directory")
    if target.stat().st_size > MAX_CSV_BYTES:
        raise InvalidInput(f"CSV file '{order.path}' is larger than {MAX_CSV_BYTES} bytes")
    with target.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if len(rows) < 2:
        raise InvalidInput(f"CSV file '{order.path}' needs a header row and at least one row")
    header = [name.strip() for name in rows[0]]
    target_column = order.target_column or header[-1]
    features = list(order.feature_columns) or [c for c in header if c != target_column]
    missing = [c for c in [*features, target_column] if c not in header]
    if missing:
        raise InvalidInput(
            f"CSV file '{order.path}' has no column(s) {', '.join(missing)} "
            f"(columns: {', '.join(header)})"
        )
    if not features:
        raise InvalidInput(f"CSV file '{order.path}' has no feature columns")
    index = {name: i for i, name in enumerate(header)}
    wanted = [*features, target_column]
    table = np.empty((len(rows) - 1, len(wanted)), dtype=np.float64)
    for r, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise InvalidInput(
                f"CSV file '{order.path}' row {r} has {len(row)} fields, the header {len(header)}"
            )
        for c, name in enumerate(wanted):
            text = row[index[name]].strip()
            try:
                table[r - 2, c] = float(text)
            except ValueError:
                raise InvalidInput(
                    f"CSV file '{order.path}' row {r}, column '{name}': '{text}' is not a number"
                ) from None
    return table[:, :-1], table[:, -1:], f"csv:{order.path}"


def _targets(y: np.ndarray, task: str) -> tuple[np.ndarray, int]:
    # One target per row: [N] or [N, 1]. Reshaping anything wider would pair rows with
    # another row's targets.
    if y.ndim > 2 or (y.ndim == 2 and y.shape[1] != 1):
        wanted = "[N, 1]" if task == "regression" else "[N]"
        raise InvalidInput(f"targets must have shape {wanted}, got {list(y.shape)}")
    if task == "regression":
        return y.reshape(-1, 1).astype(np.float32), 0
    flat = y.reshape(-1)
    if not np.isfinite(flat).all() or (flat != np.round(flat)).any():
        raise InvalidInput("class labels must be whole numbers")
    labels = flat.astype(np.int64)
    return labels, int(labels.max()) + 1 if labels.size else 0


def _positive_int(name: str, value: int | None, default: int, limit: int) -> int:
    if value is None:
        return default
    if not 0 < value <= limit:
        raise InvalidInput(f"{name} must be between 1 and {limit}, got {value}")
    return value


@dataclass(frozen=True, slots=True)
class _Data:
    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    input_name: str
    output_name: str
    description: str
    num_classes: int


def _load(order: TrainOrder, arch: architectures.Architecture, data_dir: Path) -> _Data:
    if order.dataset is None:
        raise InvalidInput("the request names no dataset")
    if isinstance(order.dataset, BuiltinData):
        builtin = load_builtin(order.dataset.name)
        if builtin.task != arch.task:
            raise InvalidInput(
                f"dataset '{builtin.name}' is for {builtin.task}, architecture "
                f"'{arch.name}' does {arch.task}"
            )
        return _Data(
            builtin.x_train,
            builtin.y_train,
            builtin.x_test,
            builtin.y_test,
            builtin.input_name,
            builtin.output_name,
            builtin.name,
            builtin.num_classes,
        )
    if isinstance(order.dataset, InlineData):
        x, raw_y, description = order.dataset.x, order.dataset.y, "inline"
        if x.size == 0 or raw_y.size == 0:
            raise InvalidInput("inline data is empty")
    else:
        x, raw_y, description = _csv(order.dataset, data_dir)
    if not np.isfinite(raw_y).all():
        raise InvalidInput("targets contain NaN or infinite values")
    y, num_classes = _targets(raw_y, arch.task)
    output_name = "probabilities" if arch.task == "classification" else "output"
    return _Data(
        x.astype(np.float32), y, None, None, "input", output_name, description, num_classes
    )


def plan_training(order: TrainOrder, data_dir: Path) -> TrainPlan:
    check_model_name(order.model_name)
    arch = architectures.get(order.architecture)
    data = _load(order, arch, data_dir)
    architectures.check_data(arch, data.x, data.y, data.num_classes)

    epochs = _positive_int("epochs", order.epochs, arch.epochs, MAX_EPOCHS)
    batch_size = _positive_int("batch_size", order.batch_size, arch.batch_size, 1 << 20)
    learning_rate = arch.learning_rate if order.learning_rate is None else order.learning_rate
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise InvalidInput(f"learning_rate must be a finite positive number, got {learning_rate}")
    optimizer = order.optimizer or "adam"
    if optimizer not in ("adam", "sgd"):
        raise InvalidInput(f"unknown optimizer '{optimizer}' (use 'adam' or 'sgd')")
    fraction = 0.2 if order.validation_split is None else order.validation_split
    if not 0 <= fraction < 1:
        raise InvalidInput(f"validation_split must be in [0, 1), got {fraction}")
    seed = order.seed or 0
    if not 0 <= seed <= MAX_SEED:
        raise InvalidInput(f"seed must be between 0 and {MAX_SEED}, got {seed}")
    x_train, y_train, x_val, y_val = validation_split(data.x, data.y, fraction, seed)
    if len(x_train) < 1:
        raise InvalidInput("no training rows are left after the validation split")
    return TrainPlan(
        model_name=order.model_name,
        architecture=arch,
        dataset=data.description,
        x=x_train,
        y=y_train,
        x_val=x_val,
        y_val=y_val,
        x_test=data.x_test,
        y_test=data.y_test,
        input_name=data.input_name,
        output_name=data.output_name,
        num_classes=data.num_classes,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        optimizer="sgd" if optimizer == "sgd" else "adam",
        seed=seed,
        validation_split=fraction,
        device=order.device,
        hyperparameters={
            "epochs": epochs,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "optimizer": optimizer,
            "seed": seed,
            "validation_split": fraction,
        },
    )
